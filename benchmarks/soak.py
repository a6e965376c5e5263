"""Mixed-load soak: route + feedback from several clients, with the WAL size and RSS over time.

``tinydancer serve`` (one worker, SQLite) in a subprocess on loopback; ``--clients`` threads each
send POST /v1/route (10 × 384-d) and then POST /v1/feedback for it, for ``--duration`` seconds.
Every half second the WAL file's size and the server's RSS are sampled.  At the end the server
is killed with SIGKILL and every acknowledged outcome is looked up in the database.  Traffic goes
to 127.0.0.1 only and stops by itself.

    .venv/bin/python benchmarks/soak.py --duration 40 --clients 8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import console, environment, free_port, table, wait_ready

from tinydancer.demo import train_default_router_model


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    console.print(environment())
    tmp = Path(tempfile.mkdtemp(prefix="td-soak-"))
    model = tmp / "model.safetensors"
    train_default_router_model(model)
    db = tmp / "soak.db"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tinydancer", "serve", "--model-path", str(model), "--database-path",
                               str(db), "--port", str(port), "--watch-interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(0)
    body = json.dumps({"query_embedding": rng.normal(size=384).round(5).tolist(),
                       "candidates": [{"id": f"c{i}", "embedding": rng.normal(size=384).round(5).tolist(),
                                       "access_count": 10, "success_rate": 0.9, "created_at": time.time() - 600}
                                      for i in range(10)]})
    acked: list[str] = []
    failures: list[int] = []
    stop = threading.Event()
    samples: list[tuple[float, float, float]] = []
    try:
        wait_ready(url)

        def client(k: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/v1/route", content=body, headers={"Content-Type": "application/json"})
                    if r.status_code != 200:
                        failures.append(r.status_code)
                        continue
                    f = c.post("/v1/feedback", json={"request_id": r.json()["request_id"], "success": bool(k % 2)})
                    if f.status_code == 200:
                        acked.append(r.json()["request_id"])
                    else:
                        failures.append(f.status_code)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        while time.perf_counter() - start < args.duration:
            time.sleep(0.5)
            wal = db.with_name(db.name + "-wal")
            samples.append((time.perf_counter() - start, (wal.stat().st_size if wal.exists() else 0) / 2**20, rss_mb(server.pid)))
        stop.set()
        for t in threads:
            t.join()
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
    conn = sqlite3.connect(db)
    stored = {row[0] for row in conn.execute("SELECT request_id FROM outcomes")}
    conn.close()
    lost = len(set(acked) - stored)
    rows = [[f"{t:.0f} s", f"{w:.1f} MB", f"{r:.0f} MB"] for t, w, r in samples[:: max(1, len(samples) // 10)]]
    console.print(table(f"soak: {args.clients} clients, route + feedback, {args.duration:g} s", ["time", "WAL", "server RSS"], rows))
    peak_wal = max(w for _t, w, _r in samples)
    console.print(f"{len(acked):,} outcomes acknowledged ({len(acked) / args.duration:,.0f}/s), {len(failures)} failed "
                  f"requests, {lost} acknowledged outcomes lost after SIGKILL; peak WAL {peak_wal:.1f} MB, "
                  f"peak RSS {max(r for *_x, r in samples):.0f} MB")


if __name__ == "__main__":
    main()
