"""``tinydancer serve`` as a user starts it: a process, a port, readiness."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from test_gateway import router_dir  # noqa: F401 (fixture)
from tinydancer.gateway.standin import free_port


def wait_ready(base: str, proc: subprocess.Popen, seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            r = httpx.get(f"{base}/health/ready")
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return httpx.get(f"{base}/health/ready")


def test_a_query_router_only_service_is_ready_without_a_candidate_model(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinydancer", "serve", "--query-router", str(router_dir),
                             "--database-path", str(tmp_path / "q.db"), "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        r = wait_ready(base, proc)
        assert r.status_code == 200, r.text  # was 503: "no model file at models/default.safetensors"
        routed = httpx.post(f"{base}/v1/route/query", json={"query": "question 1 about cohomology"})
        assert routed.status_code == 200 and routed.json()["model"] in ("strong", "weak")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "starting without a model" not in err
