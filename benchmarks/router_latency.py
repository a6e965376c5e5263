"""Router.route() latency with 1, 10, 50 and 100 candidates of 384-d embeddings, against the Rust crate.

Like with like: the crate's ``inferenceTimeUs`` starts with the candidates already converted to
``Vec<f32>``, so our timing starts with a built :class:`RoutingRequest` (validated, stacked,
unit-normalized columns); building it is measured and reported separately.  Nothing is cached
across calls.  The crate runs in the same command through Node (@ruvector/tiny-dancer 0.1.22):
its internal timer and the wall time of one call from Node.

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
from _common import console, environment, table, time_call, us

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
    rust = rust_numbers()
    rows = []
    for n in SIZES:
        embs = rng.normal(size=(n, DIM)).astype(np.float32)
        query = rng.normal(size=DIM).astype(np.float32)

        def build() -> RoutingRequest:
            cands = [Candidate(f"c{i}", embs[i], {}, now - 60, 10, 0.9) for i in range(n)]
            return RoutingRequest(query, cands, None)

        request = build()
        t_build = time_call(build)
        t_route = time_call(lambda: router.route(request))
        t_all = time_call(lambda: list(router.route(request).decisions))
        feature_us = np.median([router.route(request).feature_time_us for _ in range(200)])
        row = [f"{n}", us(t_route), us(t_all), f"{feature_us:.1f} µs", us(t_build)]
        if rust is not None:
            r = rust["results"][str(n)]
            row += [f"{r['inferenceTimeUs']:.0f} µs", f"{r['wallUs']:.0f} µs", f"{r['inferenceTimeUs'] / (t_route * 1e6):.2f}x"]
        rows.append(row)
    cols = ["candidates", "tinydancer route()", "route() + every decision object", "of which features", "building the request"]
    if rust is not None:
        cols += [f"Rust inferenceTimeUs (npm {rust['version']})", "Rust route() from Node", "Rust-internal / ours"]
    console.print(table(f"Router.route(), {DIM}-d embeddings, conformal uncertainty, int8 model, median per call", cols, rows))
    console.print("targets (issue 4): 100 candidates <= 70 µs and at most half the Rust-internal time; 1 candidate <= 20 µs")


if __name__ == "__main__":
    main()
