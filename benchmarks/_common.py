"""Shared helpers for the benchmarks: timing, environment description, result tables."""

from __future__ import annotations

import atexit
import json
import os
import re
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=140)


def time_call(fn: Callable[[], Any], *, min_time: float = 0.2, repeats: int = 7) -> float:
    """Median seconds per call: calls are batched so each sample lasts ~min_time/repeats."""
    fn()  # warm-up
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt > min_time / repeats:
            break
        n *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def median_per_call(fn: Callable[[], Any], calls: int = 3000) -> float:
    """Median seconds of single calls, each timed alone: the statistic a timer inside the call
    reports (the Rust crate's ``inferenceTimeUs`` is a per-call median).  On a shared machine a batch
    of calls timed together also carries the time the process spent descheduled; one call of tens
    of µs rarely does."""
    for _ in range(min(calls // 10, 200)):
        fn()  # warm-up
    clock = time.perf_counter
    samples = [0.0] * calls
    for i in range(calls):
        t0 = clock()
        fn()
        samples[i] = clock() - t0
    return statistics.median(samples)


def train_router(embedder: str, out: Path) -> str:
    """A strong/weak router trained as the packaged one is (tools/build_default_router.py: RouteLLM's MMLU +
    GSM8K training splits, GPT-4 as strong, Mixtral as weak, strong share 0.3) on ``embedder``; its id."""
    import numpy as np

    from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
    from tinydancer.llm.embeddings import make_embedder
    from tinydancer.llm.tables import load_routellm_gsm8k, load_routellm_mmlu, shared_data_dir, split_routellm

    data = shared_data_dir()
    if data is None:
        sys.exit("--embedder needs RouteLLM's tables: set TINY_DANCER_DATA to the shared data folder")
    parts = [split_routellm(load(data))[0] for load in (load_routellm_mmlu, load_routellm_gsm8k)]
    table = RoutingTable(sum((p.queries for p in parts), []), ["strong", "weak"], np.concatenate([p.scores for p in parts]),
                         np.concatenate([p.costs for p in parts]))
    started = time.perf_counter()
    emb = make_embedder(embedder)
    router = QueryRouter.fit(table, QueryRouterConfig(memory=False, seed=0), embedder=emb)
    router.calibrate(0.3)
    router.save(out)
    console.print(f"router trained on {embedder} ({emb.id}), {len(table):,} prompts, in {time.perf_counter() - started:.1f} s")
    return emb.id


def environment() -> str:
    import numpy as np

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cores, {cpu}"
    )


#: tables recorded for benchmarks/check_results.py: key -> {"columns": [...], "rows": [[...], ...]}
RECORDED: dict[str, dict[str, Any]] = {}


@atexit.register
def _write_recorded() -> None:
    """With TD_RESULTS_JSON set, leave the recorded tables there (check_results.py reads them)."""
    target = os.environ.get("TD_RESULTS_JSON")
    if target and RECORDED:
        Path(target).write_text(json.dumps(RECORDED, indent=1), encoding="utf-8")


def table(title: str, columns: list[str], rows: list[list[Any]], key: str | None = None) -> Table:
    """A rich table; with ``key`` its cells are also recorded under that name (see RECORDED)."""
    if key is not None:
        RECORDED[key] = {"columns": list(columns), "rows": [[str(c) for c in row] for row in rows]}
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(str(c) for c in row))
    return t


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (benchmarks serve on loopback only)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, attempts: int = 300) -> None:
    """Poll ``url``/health/ready until it answers 200 (up to ~30 s for a server just started)."""
    import httpx

    for _ in range(attempts):
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    out = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        out[f"p{pct}_ms"] = ms(re.search(rf"\s{pct}(?:\.000)?%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    total = re.search(r"(\d+) requests in", text)
    out["requests"] = float(total.group(1)) if total else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["failed"] = float(non2xx.group(1)) if non2xx else 0.0
    out["socket_errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    return out


def litellm_proxy(tmp: Path, config: str, env: dict[str, str]) -> Any:
    """LiteLLM's proxy process (one worker, offline cost map) on ``config`` in ``tmp``, as a context
    manager yielding its port once it is live; its output goes to ``tmp/proxy.log``."""
    import contextlib
    import subprocess

    @contextlib.contextmanager
    def run() -> Any:
        import httpx

        from tinydancer.gateway.standin import free_port

        (tmp / "config.yaml").write_text(config)
        port = free_port()
        with open(tmp / "proxy.log", "wb") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "litellm"), "--config", str(tmp / "config.yaml"),
                                     "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"], cwd=tmp,
                                    env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **env},
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 120
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code == 200:
                            break
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the proxy did not start:\n" + (tmp / "proxy.log").read_text()[-3000:])
                    time.sleep(0.5)
                yield port
            finally:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)
                if proc.poll() is None:
                    proc.kill()

    return run()
