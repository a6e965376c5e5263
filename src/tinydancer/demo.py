"""``make demo``: the LLM gateway in front of two stand-in LLMs first, then the candidate router
(the seed's candidate scorer): the seed example done properly, end to end, in a few seconds.

The crate's ``train-model`` example trains on normalized features and then predicts on raw ones,
distils from an untrained "teacher", and never updates a weight.  Here: real training, a large
fresh held-out set (the Bayes ceiling of this data is ~0.904, so 200 validation rows cannot tell
0.88 from 0.92), predictions on properly normalized inputs, and a saved, reloadable model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from .nn import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, TrainingDataset
from .progress import EpochProgress
from .synthetic import seed_example_data

#: the seed example's model and training settings (its distillation from a random teacher is dropped)
DEMO_MODEL = FastGRNNConfig(input_dim=5, hidden_dim=16, output_dim=1, nu=0.8, zeta=1.2, rank=8)
DEMO_TRAINING = TrainingConfig(
    learning_rate=0.01,
    batch_size=32,
    epochs=50,
    validation_split=0.2,
    early_stopping_patience=10,
    lr_decay=0.8,
    lr_decay_step=10,
    grad_clip=5.0,
    l2_reg=1e-4,
)
#: the seed example's three test inputs: easy (lightweight), hard (powerful), in between
SEED_CASES = {
    "easy": [0.9, 0.8, 0.7, 0.9, 0.2],
    "hard": [0.3, 0.2, 0.1, 0.4, 0.9],
    "medium": [0.5, 0.5, 0.5, 0.5, 0.5],
}
SHORT_NAMES = ("sim", "recency", "pop", "success", "complexity")


def train_seed_example(n_train: int = 1000, seed: int = 42, quiet: bool = True, console: Console | None = None) -> tuple[FastGRNN, Trainer]:
    """Train the seed example's model on ``n_train`` synthetic samples."""
    x, y = seed_example_data(n_train, seed=seed)
    dataset = TrainingDataset(x, y)
    dataset.normalize()
    model = FastGRNN(DEMO_MODEL, seed=seed)
    trainer = Trainer(DEMO_MODEL, DEMO_TRAINING)
    if quiet or console is None:
        trainer.train(model, dataset)
    else:
        with EpochProgress(DEMO_TRAINING.epochs, quiet=False, label="training the seed example") as progress:
            trainer.train(model, dataset, on_epoch_end=progress)
    return model, trainer


def held_out_accuracy(model: FastGRNN, n: int = 20000, seed: int = 4242) -> float:
    x, y = seed_example_data(n, seed=seed)
    return float(((model.predict(x)[:, 0] >= 0.5) == (y >= 0.5)).mean())


DEFAULT_ROUTER_MODEL = FastGRNNConfig(input_dim=5, hidden_dim=16, output_dim=1)


def traffic_dataset(n_requests: int, seed: int, candidates_per_request: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(router features, outcomes) of simulated candidate traffic, through the real feature pipeline."""
    from .candidates import FeatureEngineer
    from .synthetic import candidate_requests

    engineer = FeatureEngineer()
    reqs = candidate_requests(n_requests, candidates_per_request, seed=seed)
    x = np.concatenate([engineer.compute(r) for r, _, _ in reqs])
    y = np.concatenate([o for _, _, o in reqs])
    return x, y


def train_default_router_model(path: Path, seed: int = 7) -> dict[str, float]:
    """Train, conformally calibrate and save the default candidate-scoring model.

    It learns the simulated traffic's known ground truth (see
    ``synthetic.lightweight_ok_probability``): a demonstration model for a fresh install, to be
    replaced by one retrained on your own routing logs.
    """
    from .candidates import ConformalCalibrator

    x, y = traffic_dataset(1500, seed)
    n = len(y)
    train_end, cal_end = int(0.7 * n), int(0.85 * n)
    dataset = TrainingDataset(x[:train_end], y[:train_end])
    dataset.normalize()
    model = FastGRNN(DEFAULT_ROUTER_MODEL, seed=seed)
    Trainer(DEFAULT_ROUTER_MODEL, TrainingConfig(learning_rate=0.01, epochs=60, early_stopping_patience=10)).train(model, dataset)
    calibrator = ConformalCalibrator.fit(model.predict(x[train_end:cal_end])[:, 0], y[train_end:cal_end])
    calibrator.attach(model)
    model.extra_metadata["version"] = "default-demo-1"
    model.save(path)
    p_test = model.predict(x[cal_end:])[:, 0]
    in_set = calibrator.prediction_sets(p_test, 0.15)[np.arange(n - cal_end), y[cal_end:].astype(int)]
    return {"accuracy": float(((p_test >= 0.5) == (y[cal_end:] >= 0.5)).mean()), "coverage_85": float(in_set.mean())}


def show_router(path: Path, console: Console) -> None:
    """Route one simulated request with the default model and print the decisions."""
    from .candidates import Router, RouterConfig
    from .synthetic import candidate_requests

    router = Router(RouterConfig(model_path=path, confidence_threshold=0.6))
    request, raw, _ = candidate_requests(1, 6, seed=99)[0]
    response = router.route(request)
    table = Table(title=f"Router.route: 6 candidates in {response.inference_time_us:.0f} µs (confidence ≥ 0.6, uncertainty ≤ 0.15)")
    for col in ("candidate", "similarity", "success", "confidence", "uncertainty", "lightweight"):
        table.add_column(col, justify="right")
    index = {c.id: i for i, c in enumerate(request.candidates)}
    for d in response.decisions:
        i = index[d.candidate_id]
        table.add_row(d.candidate_id, f"{raw[i, 0]:.2f}", f"{raw[i, 3]:.2f}", f"{d.confidence:.3f}",
                      f"{d.uncertainty:.3f}", "yes" if d.use_lightweight else "no")
    console.print(table)


def run_demo(out: Path, console: Console | None = None, quiet: bool = False) -> FastGRNN:
    """The LLM gateway first (what most users come for), then the candidate router: the seed's
    candidate scorer, its default model and the service's learn-and-reload loop."""
    console = console or Console()
    run_gateway_demo(out, console)
    console.rule("[bold]The candidate router (the seed's candidate scorer): the seed example, trained for real")
    console.print("A separate product in the same package: a FastGRNN that scores candidates (a cached answer, a small "
                  "model, a tool) from five routing features (`tinydancer candidates …`, POST /v1/route; "
                  "docs/candidates.md). The features below are synthetic.")
    model, trainer = train_seed_example(console=console, quiet=quiet)
    s = model.training_summary
    acc = held_out_accuracy(model)
    console.print(
        f"trained {s['epochs_run']} epochs in {s['seconds']:.2f} s on {s['train_samples']} samples "
        f"(+{s['val_samples']} validation); best epoch {s['best_epoch'] + 1}"
    )
    console.print(f"held-out accuracy on 20,000 fresh samples: [bold]{acc:.4f}[/] (Bayes ceiling of this data ≈ 0.904)")

    table = Table(title="predictions on raw features (normalized with the stored parameters)")
    table.add_column("case")
    for name in SHORT_NAMES:
        table.add_column(name, justify="right")
    table.add_column("P(light ok)", justify="right")
    probs = model.predict(np.array(list(SEED_CASES.values())))[:, 0]
    for (case, feats), p in zip(SEED_CASES.items(), probs):
        table.add_row(case, *(f"{v:.1f}" for v in feats), f"{p:.4f}")
    console.print(table)

    out.mkdir(parents=True, exist_ok=True)
    path = model.save(out / "seed_example.safetensors")
    trainer.save_metrics(out / "seed_example.metrics.json")
    if model.normalizer is not None:
        model.normalizer.save_json(out / "seed_example.normalization.json")
    from .plotting import plot_training_curve

    plot_training_curve(trainer.metrics, out / "seed_example.training_curve.png", title="seed example")
    reloaded = FastGRNN.load(path)
    same = np.array_equal(reloaded.predict(np.array(list(SEED_CASES.values()))), model.predict(np.array(list(SEED_CASES.values()))))
    console.print(f"saved {path} ({path.stat().st_size} bytes on disk); reload gives identical outputs: {same}")

    fp32_size = model.size_bytes()
    int8 = reloaded.quantize()
    int8_acc = held_out_accuracy(int8)
    console.print(
        f"int8 quantization: {fp32_size} → {int8.size_bytes()} bytes (EdgeML accounting), "
        f"held-out accuracy {acc:.4f} → {int8_acc:.4f}"
    )

    console.rule("[bold]The candidate router's default model")
    default = out / "default.safetensors"
    stats = train_default_router_model(default)
    console.print(
        f"trained the default model on simulated candidate traffic (known ground truth): held-out accuracy "
        f"{stats['accuracy']:.3f}; conformal sets at 85 % cover {stats['coverage_85']:.3f} of fresh outcomes; saved {default}"
    )
    show_router(default, console)

    console.rule("[bold]The candidate router as a service that learns: route, record outcomes, retrain, hot-reload")
    served = out / "served.safetensors"  # the loop promotes over this copy; default.safetensors stays as documented
    served.write_bytes(default.read_bytes())
    run_learning_loop(out, served, console)
    return model


def _agreement(client: "object", requests: list, truth: Callable[[np.ndarray], np.ndarray], feedback: bool) -> tuple[float, str]:
    """Route each request over HTTP; share of candidates whose P(light ok) >= 0.5 matches the truth."""
    import httpx

    c: httpx.Client = client  # type: ignore[assignment]
    hits = total = 0
    version = ""
    for request, raw, outcomes in requests:
        body = {
            "query_embedding": request.query_embedding.tolist(),
            "candidates": [{"id": cand.id, "embedding": cand.embedding.tolist(), "metadata": cand.metadata,
                            "created_at": cand.created_at, "access_count": int(cand.access_count),
                            "success_rate": cand.success_rate} for cand in request.candidates],
            "metadata": request.metadata,
        }
        r = c.post("/v1/route", json=body)
        r.raise_for_status()
        out = r.json()
        version = out["model_version"]
        truth_by_id = dict(zip(request.ids, truth(raw) >= 0.5))
        for d in out["decisions"]:
            hits += (d["confidence"] >= 0.5) == truth_by_id[d["candidate_id"]]
            total += 1
        if feedback:  # the application reports how each candidate actually did
            for cid, ok in zip(request.ids, outcomes):
                c.post("/v1/feedback", json={"request_id": out["request_id"], "candidate_id": cid, "success": bool(ok)})
    return hits / total, version


def run_learning_loop(out: Path, served: Path, console: Console) -> None:
    """Serve over HTTP, send traffic from a changed world with feedback, retrain, hot-reload, compare."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from .server.learning import RetrainConfig, retrain
    from .server.registry import ModelRegistry
    from .server import ServiceSettings, create_app
    from .synthetic import candidate_requests, drifted_lightweight_ok_probability

    db = out / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    app = create_app(ServiceSettings(model_path=served, database_path=db, watch_interval_s=0.2, auth_token=None))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    truth = drifted_lightweight_ok_probability
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(200):
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            t0 = time.perf_counter()
            before, v1 = _agreement(client, candidate_requests(400, 8, seed=21, truth=truth), truth, feedback=True)
            console.print(f"served {v1} on http://127.0.0.1:{port}: 400 requests × 8 candidates from a changed world "
                          f"(track record and context now matter more), each with feedback, in {time.perf_counter() - t0:.1f} s")
            from .server.storage import SQLiteStorage

            storage = SQLiteStorage(db)
            report = retrain(storage, served, ModelRegistry(out / "registry"), RetrainConfig(seed=0))
            storage.close()
            console.print(f"retrain: {report.samples} logged outcomes → {report.version}: {report.reason}")
            deadline = time.time() + 15
            while time.time() < deadline and client.get("/info").json()["model"]["version"] == v1:
                time.sleep(0.1)
            after, v2 = _agreement(client, candidate_requests(150, 8, seed=22, truth=truth), truth, feedback=False)
            stats = client.get("/admin/stats").json()
    finally:
        server.should_exit = True
        thread.join(10)
    table = Table(title="agreement of the served model with the changed world's ground truth")
    table.add_column("phase")
    table.add_column("model version")
    table.add_column("agreement", justify="right")
    table.add_row("before retraining", v1, f"{before:.3f}")
    table.add_row("after hot reload", v2, f"{after:.3f}")
    console.print(table)
    console.print(
        f"stored {stats['total_requests']} requests / {stats['total_decisions']} decisions / {stats['outcomes']} outcomes in {db}; "
        f"route() latency p50 {stats['p50_latency_us']:.0f} µs, p99 {stats['p99_latency_us']:.0f} µs"
    )


# ---------------------------------------------------------------------- the gateway
GATEWAY_PROMPTS = [
    "Thanks!",
    "What is 2+2?",
    "What is the capital of France?",
    "Translate 'good morning' into Spanish.",
    "Give me three name ideas for a bakery.",
    "A train leaves at 3 pm at 60 mph and another at 4 pm at 80 mph on the same track. When does the second catch up?",
    "Prove that there are infinitely many primes.",
    "Derive the Black-Scholes equation for a European call option and explain each assumption.",
    "Implement a lock-free hash map in C++ with open addressing and explain its memory ordering.",
    "Write a Python function that returns the n-th Fibonacci number in O(log n) time.",
]


def run_gateway_demo(out: Path, console: Console) -> None:
    """Two stand-in LLMs on loopback behind the gateway with its packaged router; the official
    openai client sends real prompts; show where each went, what it cost, and a streamed answer."""
    import openai

    from .gateway import create_gateway_app
    from .gateway.config import parse_config
    from .gateway.standin import StandIn, running
    from .server import ServiceSettings
    from .server.storage import SQLiteStorage

    console.rule("[bold]Tiny Dancer's LLM gateway: an OpenAI endpoint in front of two LLMs (stand-ins on loopback)")
    db = out / "gateway.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    strong, weak = StandIn("gpt-4o (stand-in)"), StandIn("gpt-4o-mini (stand-in)")
    prices = {"strong": (2.5, 10.0), "weak": (0.15, 0.6)}  # $ per million tokens, in and out
    with running(strong.app()) as su, running(weak.app()) as wu:
        config = parse_config({"operating_point": {"strong_share": 0.3}, "upstreams": [
            {"name": name, "base_url": f"{url}/v1", "model": name, "input_per_million": prices[name][0],
             "output_per_million": prices[name][1]} for name, url in (("strong", su), ("weak", wu))]})
        app = create_gateway_app(config, ServiceSettings(database_path=db, watch_interval_s=0))
        with running(app, log_level="error") as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="local-demo", max_retries=0)
            table = Table(title="where each prompt went and why (packaged router, 30 % of typical queries to strong): "
                                "its predicted quality per model, and the strong model's advantage against the threshold")
            for col in ("prompt", "model", "strong", "weak", "advantage", "tokens in/out"):
                table.add_column(col, justify="left" if col == "prompt" else "right")
            router, threshold = app.state.gateway.router, app.state.gateway.point.threshold
            outputs = router.predict(GATEWAY_PROMPTS)
            ids = []
            for prompt, out in zip(GATEWAY_PROMPTS, outputs):
                raw = client.chat.completions.with_raw_response.create(model="tinydancer",
                                                                       messages=[{"role": "user", "content": prompt}])
                answer = raw.parse()
                ids.append(raw.headers["x-tinydancer-decision-id"])
                table.add_row(prompt[:60] + ("…" if len(prompt) > 60 else ""), raw.headers["x-tinydancer-model"],
                              f"{out[router.strong]:.2f}", f"{out[router.weak]:.2f}",
                              f"{out[2]:.3f} {'≥' if out[2] >= threshold else '<'} {threshold:.3f}",
                              f"{answer.usage.prompt_tokens}/{answer.usage.completion_tokens}")
            console.print(table)
            console.print("a streamed answer, chunk by chunk: ", end="")
            for chunk in client.chat.completions.create(model="tinydancer", stream=True,
                                                        messages=[{"role": "user", "content": GATEWAY_PROMPTS[5]}]):
                if chunk.choices and chunk.choices[0].delta.content:
                    console.print(chunk.choices[0].delta.content, end="")
            console.print()
        rows = [r for rid in ids for r in SQLiteStorage(db).calls(rid) if r["status"] == "ok"]
    spent = sum(r["cost"] for r in rows)
    always = sum((r["prompt_tokens"] * prices["strong"][0] + r["completion_tokens"] * prices["strong"][1]) / 1e6 for r in rows)
    went_strong = sum(r["upstream"] == "strong" for r in rows)
    console.print(f"{len(rows)} calls logged in {db} ({went_strong} to strong): ${spent:.6f} spent against ${always:.6f} "
                  f"for always-strong with the same tokens ({1 - spent / always:.0%} less). The packaged router learned "
                  "from public benchmark outcomes (exams, arithmetic, code, trivia, chat instructions), not from your "
                  "traffic: label a sample of your own and train from it for your prompts (README).")
