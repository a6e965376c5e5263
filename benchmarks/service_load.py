"""HTTP throughput and latency of POST /v1/route (10 candidates of 384-d), one uvicorn worker.

The server (``tinydancer serve``, one worker, decisions logged to SQLite) and the load generator
(``wrk``, from Debian: ``apt-get install wrk``) are separate processes on loopback, sharing this
machine's 2 cores.  Two runs: plain, and while a third process asks the server to reload its
model every second (POST /admin/reload).  Every non-2xx answer is counted.

One worker serves one request at a time, so with a closed-loop generator the latency is mostly
queueing: at c connections a request waits behind up to c - 1 others.  The 384-d case therefore
runs at several connection counts (``--sweep``), and the table says which meet the target.

    .venv/bin/python benchmarks/service_load.py [--duration 10] [--sweep 2,4,8,16] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import console, environment, free_port, parse_wrk, table, wait_ready

from tinydancer.demo import train_default_router_model

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("%s"):read("*a")
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--sweep", default="2,4,8,16", help="connection counts for the plain 384-d run")
    parser.add_argument("--connections", type=int, default=8, help="for the other runs (reloads also at 4)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    console.print(environment())
    tmp = Path(tempfile.mkdtemp(prefix="td-load-"))
    model = tmp / "model.safetensors"
    train_default_router_model(model)
    rng = np.random.default_rng(0)

    def write_body(name: str, dim: int) -> Path:
        body = {
            "query_embedding": rng.normal(size=dim).round(5).tolist(),
            "candidates": [{"id": f"c{i}", "embedding": rng.normal(size=dim).round(5).tolist(), "access_count": 10,
                            "success_rate": 0.9, "created_at": time.time() - 600, "metadata": {}} for i in range(10)],
        }
        (tmp / f"{name}.json").write_text(json.dumps(body))
        (tmp / f"{name}.lua").write_text(LUA % (tmp / f"{name}.json"))
        return tmp / f"{name}.lua"

    post384 = write_body("d384", 384)
    post64 = write_body("d64", 64)
    port = free_port()
    env = {**os.environ, "TINY_DANCER_AUTH_TOKEN": "bench"}
    server = subprocess.Popen([sys.executable, "-m", "tinydancer", "serve", "--model-path", str(model), "--database-path",
                               str(tmp / "load.db"), "--port", str(port), "--watch-interval", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        def wrk(script: Path | None, path: str, connections: int, duration: int) -> list[str]:
            cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
            return cmd + (["-s", str(script)] if script else []) + [url + path]

        subprocess.run(wrk(post384, "/v1/route", 8, 3), capture_output=True)  # warm-up
        c = args.connections
        runs = [(f"POST /v1/route, 10 × 384-d, {k} conn.", post384, "/v1/route", False, k)
                for k in map(int, args.sweep.split(","))]
        runs += [(f"  … model reloaded every second, {k} conn.", post384, "/v1/route", True, k) for k in sorted({4, c})]
        runs += [
            (f"POST /v1/route, 10 × 64-d (smaller body), {c} conn.", post64, "/v1/route", False, c),
            (f"GET /health (the framework's ceiling here), {c} conn.", None, "/health", False, c),
        ]
        rows = []
        for label, script, path, reload, connections in runs:
            stop = threading.Event()
            reloads: list[int] = []

            def reloader() -> None:
                with httpx.Client(base_url=url, headers={"Authorization": "Bearer bench"}, timeout=10) as c:
                    while not stop.wait(1.0):
                        reloads.append(c.post("/admin/reload", json={}).status_code)  # admin posts are JSON

            thread = threading.Thread(target=reloader) if reload else None
            if thread:
                thread.start()
            result = subprocess.run(wrk(script, path, connections, args.duration), capture_output=True, text=True)
            stop.set()
            if thread:
                thread.join()
            stats = parse_wrk(result.stdout)
            meets = stats["rps"] >= 1500 and stats["p99_ms"] <= 10 and stats["failed"] + stats["socket_errors"] == 0
            rows.append([label, f"{stats['rps']:,.0f}", f"{stats['p50_ms']:.2f} ms", f"{stats['p99_ms']:.2f} ms",
                         f"{stats['requests']:,.0f}", f"{stats['failed']:.0f} + {stats['socket_errors']:.0f} socket",
                         f"{len(reloads)} ({reloads.count(200)} ok)" if thread else "—",
                         ("yes" if meets else "no") if path == "/v1/route" and script is post384 else ""])
        console.print(table(f"1 uvicorn worker, decisions logged to SQLite; wrk -t1 -d{args.duration}s on loopback",
                            ["run", "requests/s", "p50", "p99", "requests", "failed", "reloads", "target"], rows))
        console.print("target (issue 5): >= 1,500 requests/s with p99 <= 10 ms; 0 failed requests while reloading")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
