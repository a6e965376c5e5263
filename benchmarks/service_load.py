"""HTTP throughput and latency of POST /v1/route (10 candidates of 384-d), one uvicorn worker.

The server (``tinydancer serve``, one worker, decisions logged to SQLite) and the load generator
(``wrk``, from Debian: ``apt-get install wrk``) are separate processes on loopback, sharing this
machine's 2 cores.  Two runs: plain, and while a third process asks the server to reload its
model every second (POST /admin/reload).  Every non-2xx answer is counted.

One worker serves one request at a time, so with a closed-loop generator the latency is mostly
queueing: at c connections a request waits behind up to c - 1 others.  The 384-d case therefore
runs at several connection counts (``--sweep``), and the table says which meet the target.

    .venv/bin/python benchmarks/service_load.py [--duration 10] [--sweep 2,4,8,16] [--connections 8]

``--backends`` runs the storage comparison instead (issue 18): the same 384-d load on one replica
logging to SQLite, one logging to PostgreSQL (``--database-url``, default the local server, a
schema of its own dropped afterwards), and two replicas sharing that PostgreSQL, each under its
own wrk at the same connection count, in one run.  After each run the servers stop (flushing
their logs) and the decision rows are counted: a request wrk saw answered but not logged is lost.

    .venv/bin/python benchmarks/service_load.py --backends [--database-url postgresql://…]
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
    parser.add_argument("--backends", action="store_true", help="compare SQLite, PostgreSQL and two PostgreSQL replicas")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    if args.backends:
        backends(args)
        return
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


def backends(args: argparse.Namespace) -> None:
    import psycopg

    console.print(environment())
    tmp = Path(tempfile.mkdtemp(prefix="td-backends-"))
    rng = np.random.default_rng(0)
    body = {"query_embedding": rng.normal(size=384).round(5).tolist(),
            "candidates": [{"id": f"c{i}", "embedding": rng.normal(size=384).round(5).tolist(), "access_count": 10,
                            "success_rate": 0.9, "created_at": time.time() - 600, "metadata": {}} for i in range(10)]}
    (tmp / "body.json").write_text(json.dumps(body))
    script = tmp / "post.lua"
    script.write_text(LUA % (tmp / "body.json"))
    schema = f"td_bench_{os.getpid()}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    pg_url = f"{args.database_url}{'&' if '?' in args.database_url else '?'}options=-csearch_path%3D{schema}"

    def serve(name: str, database: list[str]) -> tuple[subprocess.Popen[bytes], str]:
        model = tmp / name / "model.safetensors"
        train_default_router_model(model)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "tinydancer", "serve", "--model-path", str(model), "--port",
                                   str(port), "--watch-interval", "0", *database], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_ready(f"http://127.0.0.1:{port}")
        return server, f"http://127.0.0.1:{port}/v1/route"

    def load(urls: list[str], duration: int) -> list[dict[str, float]]:
        cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{duration}s", "--latency", "-s", str(script)]
        procs = [subprocess.Popen(cmd + [u], stdout=subprocess.PIPE, text=True) for u in urls]
        return [parse_wrk(p.communicate()[0]) for p in procs]

    def scrape(route_url: str) -> dict[str, float]:
        text = httpx.get(route_url.replace("/v1/route", "/metrics"), timeout=10).text
        values = {}
        for line in text.splitlines():
            for key, name in (("pending", "tiny_dancer_decision_log_pending_rows "),
                              ("dropped", "tiny_dancer_decision_log_dropped_rows_total ")):
                if line.startswith(name):
                    values[key] = float(line.split()[-1])
        return values

    def decisions(database: list[str]) -> int:
        if database[0] == "--database-path":
            import sqlite3

            with sqlite3.connect(database[1]) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
        with psycopg.connect(pg_url) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    setups = [("1 replica, SQLite", [["--database-path", str(tmp / "load.db")]]),
              ("1 replica, PostgreSQL", [["--database-url", pg_url]]),
              ("2 replicas, one PostgreSQL", [["--database-url", pg_url]] * 2)]
    rows, rates, losses = [], {}, {}
    try:
        for label, databases in setups:
            servers = [serve(f"{label[:1]}{k}{databases[k][0][2:4]}", db) for k, db in enumerate(databases)]
            before = decisions(databases[0])  # the replicas made the tables; 2 replicas: after the 1-replica run
            try:
                warm = load([u for _, u in servers], 3)
                stats = load([u for _, u in servers], args.duration)
                gauges = [scrape(u) for _, u in servers]  # what waits to be written, and what was dropped
            finally:
                for server, _ in servers:
                    server.terminate()  # a clean stop flushes the group commit
                    server.wait(30)
            logged = decisions(databases[0]) - before
            answered = sum(s["requests"] - s["failed"] for s in stats + warm)
            failed = sum(s["failed"] + s["socket_errors"] for s in stats)
            rps = sum(s["rps"] for s in stats)
            rates[label] = rps
            lost = max(0, int(answered - logged))
            losses[label] = lost + sum(int(g["dropped"]) for g in gauges)
            rows.append([label, f"{rps:,.0f}", " / ".join(f"{s['p50_ms']:.2f}" for s in stats) + " ms",
                         " / ".join(f"{s['p99_ms']:.2f}" for s in stats) + " ms", f"{answered:,.0f}",
                         f"{failed:.0f}", f"{logged:,}", f"{lost:,}",
                         " / ".join(f"{g['pending']:,.0f}" for g in gauges),
                         " / ".join(f"{g['dropped']:,.0f}" for g in gauges)])
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(table(f"POST /v1/route 10 × 384-d, wrk -t1 -c{args.connections} -d{args.duration}s per replica, loopback",
                        ["setup", "requests/s (sum)", "p50", "p99", "answered (with warm-up)", "failed",
                         "decisions logged", "answered, not logged", "rows waiting at the end", "rows dropped"], rows))
    ratio = rates["1 replica, PostgreSQL"] / rates["1 replica, SQLite"]
    console.print(f"1 replica: PostgreSQL / SQLite requests/s = {ratio:.2f} (target >= 0.85: "
                  f"{'met' if ratio >= 0.85 else 'missed'}); two replicas: "
                  f"{'no request lost' if rows[-1][5] == '0' and losses[label] == 0 else 'requests lost'}")


if __name__ == "__main__":
    main()
