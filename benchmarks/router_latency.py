"""Router.route() latency with 1, 10, 50 and 100 candidates of 384-d embeddings, beside the Rust crate.

What the crate's ``inferenceTimeUs`` covers (@ruvector/tiny-dancer 0.1.22): candidates already
converted to ``Vec<f32>``; cosine similarities from the raw vectors; the model; an uncertainty for
every candidate; every decision built; the sort.  Ours, measured in the same command:

* ``route()``: features, the model, the lightweight decisions, the sort; uncertainty is not
  computed (the decision does not need it) and no per-candidate object is built;
* ``route() + columns()``: and every candidate's uncertainty and decision as ranked arrays (the
  public result the service serializes).  This is the like-for-like one, except that unit
  normalization of the embeddings happened when the request was built;
* ``from_arrays + route() + columns()``: from raw float32 arrays, so including the unit
  normalization (and our validation, which the crate does not do): an upper bound;
* ``route() + every decision object``: all ``RoutingDecision`` objects built.

The model is the calibrated default (int8, conformal scores in the file).  Nothing is cached
across calls.

Each time is the median of 3,000 single calls, each timed alone with ``perf_counter`` around it
from Python, the same statistic as the crate's (a median of its per-call ``inferenceTimeUs``).
The "batched" column times 100-call batches instead (median of the batches' means): on a shared
machine it also carries time the process spent descheduled, which a per-call median leaves out on
both sides.

    .venv/bin/python benchmarks/router_latency.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import console, environment, median_per_call, table, time_call, us

from tinydancer.demo import train_default_router_model
from tinydancer.candidates import Candidate, Router, RouterConfig, RoutingRequest

HERE = Path(__file__).resolve().parent
SIZES = (1, 10, 50, 100)
DIM = 384


def rust_numbers() -> dict | None:
    if shutil.which("node") is None or not (HERE / "node_modules" / "@ruvector" / "tiny-dancer").is_dir():
        console.print("[yellow]Rust crate skipped: run `npm ci --prefix benchmarks` (Node.js needed)[/]")
        return None
    proc = subprocess.run(["node", "peers/rust_router.js", json.dumps(list(SIZES)), "3000"], cwd=HERE, capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(f"[red]Rust crate failed:[/] {proc.stderr[-400:]}")
        return None
    return json.loads(proc.stdout)


def main() -> None:
    console.print(environment())
    rng = np.random.default_rng(0)
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        train_default_router_model(path)
        router = Router(RouterConfig(model_path=path))
    assert router.served.calibrator is not None, "the benchmark needs a calibrated model"
    rust = rust_numbers()
    rows = []
    for n in SIZES:
        embs = rng.normal(size=(n, DIM)).astype(np.float32)
        query = rng.normal(size=DIM).astype(np.float32)
        ids = [f"c{i}" for i in range(n)]
        created, counts, rates = [now - 60] * n, [10] * n, [0.9] * n

        def build() -> RoutingRequest:
            cands = [Candidate(ids[i], embs[i], {}, now - 60, 10, 0.9) for i in range(n)]
            return RoutingRequest(query, cands, None)

        def from_raw() -> object:
            req = RoutingRequest.from_arrays(query, ids, embs, None, created, counts, rates, None)
            return router.route(req).columns()

        request = build()
        t_build = median_per_call(build, 500)
        t_route = median_per_call(lambda: router.route(request))
        t_cols = median_per_call(lambda: router.route(request).columns())
        t_batched = time_call(lambda: router.route(request).columns())
        t_raw = median_per_call(from_raw)
        t_all = median_per_call(lambda: list(router.route(request).decisions))
        feature_us = np.median([router.route(request).feature_time_us for _ in range(200)])
        row = [f"{n}", us(t_route), us(t_cols), us(t_batched), us(t_raw), us(t_all), f"{feature_us:.1f} µs", us(t_build)]
        if rust is not None:
            r = rust["results"][str(n)]
            rust_s = r["inferenceTimeUs"] * 1e-6
            row += [f"{r['inferenceTimeUs']:.0f} µs", f"{r['wallUs']:.0f} µs",
                    f"{t_cols / rust_s:.2f}x" if rust_s else "—", f"{t_all / rust_s:.2f}x" if rust_s else "—"]
        rows.append(row)
    cols = ["candidates", "route()", "route() + columns()", "route() + columns(), batched", "from_arrays + route() + columns()",
            "route() + every decision object", "of which features", "building the request from objects"]
    if rust is not None:
        cols += [f"Rust inferenceTimeUs (npm {rust['version']})", "Rust route() from Node",
                 "columns / Rust-internal", "objects / Rust-internal"]
    console.print(table(f"Router.route(), {DIM}-d embeddings, calibrated int8 model, median per call", cols, rows))
    console.print("like for like with the crate's timer: route() + columns(). Targets (issue 17), 100 candidates: "
                  "columns <= 0.5x the crate's timer; every decision object built < the crate's timer")


if __name__ == "__main__":
    main()
