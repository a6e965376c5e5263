"""The dashboard on a log of 1,000,000 calls: each query, the page, its weight, against the 1 s target.

    .venv/bin/python benchmarks/dashboard.py                 # SQLite, 1,000,000 calls (seeding ~2-4 min)
    .venv/bin/python benchmarks/dashboard.py --postgres      # PostgreSQL too (a schema of its own, dropped after)
    .venv/bin/python benchmarks/dashboard.py --calls 100000  # smaller

The log: ``--calls`` gateway calls spread evenly over 7 days before now, through the storage's own
write path (``insert_log``, so the rollup triggers run as they do in a gateway): 5 % fall back
from the strong upstream to the weak one (two attempts), 2 % fail, the rest are served; every call
has its decision row (16-float inputs); 20 % get an outcome; the calls cycle through four client
key names and no name (the page's spend per key, from the rollup's key name column).  For each window the table gives the
time of each part of the report (median of 5 runs after a warm-up), the whole report, the HTML
render, and ``GET /dashboard`` through a real server (``tinydancer serve``'s app on uvicorn; the
gateway mounts the same route), with the page's weight and the ratio of the page's time to the
1 s target.  The peer, measured in the same run: the totals computed straight from the calls
table (one GROUP BY upstream, status, key name over the window's rows), what the page would cost
without the rollups.
A last table: what the rollup triggers cost the log's writes (20,000 call rows inserted into a
fresh log with and without them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import console, environment, table

from tinydancer.server import report as rpt
from tinydancer.server.dashboard import render_dashboard
from tinydancer.server.storage import SQLiteStorage

PRICES = [rpt.Price("strong", "strong", 10.0, 30.0), rpt.Price("weak", "weak", 0.5, 1.5)]
SPAN_S = 7 * 86400.0
#: the client key names the seeded calls cycle through (None: calls without one, the "(no key)" row)
KEY_NAMES = ("support-bot", "search", "batch-eval", "support-bot", "internal", None)
TARGET_S = 1.0


def seed(storage: Any, n: int, now: float, batch: int = 20000) -> float:
    """``n`` calls over the 7 days before ``now``; returns the seconds it took."""
    rng = np.random.default_rng(0)
    inputs = np.zeros(16, np.float32).tobytes()
    confs = [np.array([c], np.float32).tobytes() for c in np.linspace(0.3, 0.95, 32)]
    pair_conf = np.array([0.6, 0.9], np.float32).tobytes()
    light1, light2 = np.ones(1, np.uint8).tobytes(), np.array([1, 0], np.uint8).tobytes()
    started = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        u = rng.random(hi - lo)
        strong = rng.random(hi - lo) < 0.3
        tokens = rng.integers(20, 2000, (hi - lo, 2))
        lat = rng.lognormal(6, 0.6, hi - lo)
        decisions, calls, outcomes = [], [], []
        for k, i in enumerate(range(lo, hi)):
            at = now - SPAN_S * (1 - (i + 0.5) / n)
            rid = f"{int(at * 1000):013x}{i:019x}"
            pt, ct = int(tokens[k, 0]), int(tokens[k, 1])
            key = KEY_NAMES[i % len(KEY_NAMES)]
            model = "strong" if strong[k] else "weak"
            p = PRICES[0] if strong[k] else PRICES[1]
            if u[k] < 0.02:
                calls.append((rid, 0, model, model, "http_5xx", 500, 0, None, None, None, None, 40.0, at, key))
                targets, conf, light = f'["{model}"]', confs[k % 32], light1
            elif u[k] < 0.07:
                calls.append((rid, 0, "strong", "strong", "timeout", None, 0, None, None, None, None, 5000.0, at - 1, key))
                calls.append((rid, 1, "weak", "weak", "ok", 200, 1, pt, ct, PRICES[1].cost(pt, ct), lat[k] / 5, lat[k], at, key))
                targets, conf, light = '["weak", "strong"]', pair_conf, light2
            else:
                calls.append((rid, 0, model, model, "ok", 200, int(k % 2), pt, ct, p.cost(pt, ct), lat[k] / 5, lat[k], at, key))
                targets, conf, light = f'["{model}"]', confs[k % 32], light1
            nt = 2 if targets.startswith('["weak", ') else 1
            decisions.append((rid, "query", "v20261201", targets, nt, inputs * nt, conf, None, light, 1, 0.5, None, 900.0,
                              at - 0.001, None, None, None))
            if u[k] > 0.8:
                outcomes.append((rid, model if nt == 1 else "weak", 0, int(u[k] > 0.83), float(u[k]), None, at + 5))
        storage.insert_log(decisions, calls, outcomes)
    return time.perf_counter() - started


def median_s(fn: Callable[[], Any], runs: int = 5) -> float:
    fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def raw_totals(storage: Any, since: float | None) -> Any:
    cut, args = (" WHERE created_at >= ?", (since,)) if since is not None else ("", ())
    return storage.query("SELECT upstream, status, COUNT(*), SUM(attempt = 0), SUM(prompt_tokens), SUM(completion_tokens), "
                         f"SUM(cost) FROM calls{cut} GROUP BY upstream, status, key_name", args)


def raw_totals_pg(storage: Any, since: float | None) -> Any:
    cut, args = (" WHERE created_at >= ?", (since,)) if since is not None else ("", ())
    return storage.query("SELECT upstream, status, COUNT(*), COUNT(*) FILTER (WHERE attempt = 0), SUM(prompt_tokens), "
                         f"SUM(completion_tokens), SUM(cost) FROM calls{cut} GROUP BY upstream, status, key_name", args)


def measure(storage: Any, name: str, now: float, page_url: str | None) -> list[list[Any]]:
    import httpx

    rows = []
    log = rpt._Log(storage)
    raw = raw_totals if isinstance(storage, SQLiteStorage) else raw_totals_pg
    for window in ("hour", "day", "week", "all"):
        seconds = rpt.WINDOWS[window]
        since = None if seconds is None else now - seconds
        t_calls = median_s(lambda: rpt._call_rows(log, since, now, seconds))
        calls = rpt._totals(rpt._call_rows(log, since, now, seconds)[0])[0]["calls"]
        t_quality = median_s(lambda: rpt._quality(log, since, calls))
        t_recent = median_s(lambda: rpt._recent(log, 20))
        report = rpt.build_report(storage, window=window, prices=PRICES, reference="weak", now=now)
        t_report = median_s(lambda: rpt.build_report(storage, window=window, prices=PRICES, reference="weak", now=now))
        t_render = median_s(lambda: render_dashboard(report, references=["strong", "weak"]))
        kb = len(render_dashboard(report, references=["strong", "weak"]).encode()) / 1024
        t_page, page_kb = float("nan"), float("nan")
        if page_url is not None:
            with httpx.Client(timeout=60) as client:
                t_page = median_s(lambda: client.get(f"{page_url}/dashboard?window={window}").raise_for_status())
                page_kb = len(client.get(f"{page_url}/dashboard?window={window}").content) / 1024
        t_peer = median_s(lambda: raw(storage, since), runs=3)
        worst = t_page if page_url is not None else t_report + t_render
        rows.append([f"{name}, {window}", f"{calls:,}", f"{t_calls * 1e3:.1f}", f"{t_quality * 1e3:.1f}", f"{t_recent * 1e3:.1f}",
                     f"{t_report * 1e3:.1f}", f"{t_render * 1e3:.1f}", f"{t_page * 1e3:.1f}", f"{page_kb if page_url else kb:.1f}",
                     f"{worst / TARGET_S:.3f}", f"{t_peer * 1e3:.1f}", f"{t_peer / t_calls:.1f}x"])
    return rows


def trigger_cost(tmp: Path, n: int = 20000) -> list[list[Any]]:
    """Insert ``n`` call rows into a fresh log with and without the rollup triggers."""
    rows = [(f"t{i:08d}", 0, "weak", "weak", "ok", 200, 0, 100, 200, 0.0003, 30.0, 150.0 + i % 97, 1.7e9 + i, "search")
            for i in range(n)]
    out = []
    for label, keep in (("with the rollup triggers", True), ("without them", False)):
        storage = SQLiteStorage(tmp / f"trig-{keep}.db")
        if not keep:
            with storage._tx() as conn:
                conn.execute("DROP TRIGGER calls_rollup_insert")
        samples = []
        for rep in range(3):
            batch = [(f"{r[0]}-{rep}", *r[1:]) for r in rows]
            t0 = time.perf_counter()
            for lo in range(0, n, 500):  # group commits of 500 rows, as a busy gateway's
                storage.insert_log([], batch[lo:lo + 500], [])
            samples.append(time.perf_counter() - t0)
        storage.close()
        out.append([label, f"{statistics.median(samples) / n * 1e6:.1f}"])
    out[0].append(f"{float(out[0][1]) / float(out[1][1]):.2f}")
    out[1].append("1.00")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="also measure PostgreSQL (TINY_DANCER_TEST_PG or localhost)")
    parser.add_argument("--database", type=Path, help="keep the SQLite log here (reused when it has the rows)")
    args = parser.parse_args()
    console.print(environment())
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.database or Path(tmp) / "log.db"
        storage = SQLiteStorage(db)
        have = storage.count("calls")
        if have == 0:
            took = seed(storage, args.calls, now)
            console.print(f"seeded {args.calls:,} calls into SQLite in {took:.0f} s ({storage.count('calls'):,} call rows, "
                          f"{storage.count('outcomes'):,} outcomes, {db.stat().st_size / 1e6:.0f} MB)")
        else:
            now = float(storage.query("SELECT MAX(created_at) FROM calls")[1][0][0]) + 1
            console.print(f"reusing {db} ({have:,} call rows)")
        show(measure(storage, "SQLite", now, serve_page(db)), args.calls)
        storage.close()
        if args.postgres:
            show(postgres_rows(args.calls, now), args.calls)
        console.print(table("What the rollup triggers cost a write (SQLite, 20,000 call rows in commits of 500)",
                            ["calls table", "µs a row", "ratio"], trigger_cost(Path(tmp))))


def show(rows: list[list[Any]], calls: int) -> None:
    console.print(table(f"The dashboard on a log of {calls:,} calls (ms; median of 5 after a warm-up)",
                        ["log, window", "calls in window", "rollup reads", "quality", "last 20", "report", "render",
                         "GET /dashboard", "page KB", "page / 1 s target", "peer: raw GROUP BY", "peer / rollups"], rows))


_SERVERS: list[Any] = []


def serve_page(db: Path) -> str:
    """``tinydancer serve``'s app over ``db`` on loopback (no token: open there), kept running."""
    from tinydancer.gateway.standin import running
    from tinydancer.server import ServiceSettings, create_app

    app = create_app(ServiceSettings(database_path=db, auth_token=None, api_keys=(), watch_interval_s=0))
    ctx = running(app)
    _SERVERS.append(ctx)
    return ctx.__enter__()


def postgres_rows(n: int, now: float) -> list[list[Any]]:
    import os

    from tinydancer.server.storage.postgres import PostgresStorage

    url = os.environ.get("TINY_DANCER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    storage = PostgresStorage(url, schema=f"td_bench_{uuid.uuid4().hex[:8]}")
    try:
        took = seed(storage, n, now)
        with storage._pool.connection() as conn:
            conn.execute("ANALYZE")
        console.print(f"seeded {n:,} calls into PostgreSQL in {took:.0f} s")
        return measure(storage, "PostgreSQL", now, None)
    finally:
        storage.drop_schema()


if __name__ == "__main__":
    main()
