"""The ``tinydancer`` command line.

Errors a user can fix (bad data, missing files) print one clear line and exit 1, no traceback.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .errors import TinyDancerError
from .nn import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, evaluate_model
from .nn.datafiles import read_table
from .progress import EpochProgress, err_console, item_progress

app = typer.Typer(help="Tiny Dancer: train, evaluate and serve FastGRNN routers.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="markdown")
console = Console()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's own errors into one red line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TinyDancerError as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@friendly_errors
def train(
    data: Path = typer.Option(..., "--data", help="Training data: .csv, .jsonl or .npz (see docs)."),
    out: Path = typer.Option(..., "--out", help="Folder for model.safetensors, normalization.json, metrics.json, training_curve.png."),
    hidden_dim: int = typer.Option(16, help="Hidden units."),
    rank: Optional[int] = typer.Option(None, help="Low-rank factorisation of W and U (None = dense)."),
    epochs: int = typer.Option(100),
    learning_rate: float = typer.Option(0.001, "--learning-rate", "--lr"),
    batch_size: int = typer.Option(32),
    validation_split: float = typer.Option(0.2),
    patience: Optional[int] = typer.Option(10, help="Early-stopping patience in epochs (0 disables)."),
    lr_decay: float = typer.Option(0.5),
    lr_decay_step: int = typer.Option(20),
    grad_clip: float = typer.Option(5.0),
    l2_reg: float = typer.Option(1e-5),
    distill: bool = typer.Option(False, help="Use the file's soft_target column for knowledge distillation."),
    temperature: float = typer.Option(3.0, help="Distillation temperature."),
    alpha: float = typer.Option(0.5, help="Weight of the soft (teacher) loss."),
    normalize: bool = typer.Option(True, help="Z-score features and store the parameters with the model."),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a FastGRNN on a labelled file and write the model and its artefacts."""
    dataset = read_table(data).to_dataset()
    if normalize:
        dataset.normalize()
    model_config = FastGRNNConfig(
        input_dim=dataset.feature_dim,
        hidden_dim=hidden_dim,
        output_dim=dataset.output_dim,
        rank=rank,
    )
    training_config = TrainingConfig(
        learning_rate=learning_rate,
        batch_size=batch_size,
        epochs=epochs,
        validation_split=validation_split,
        early_stopping_patience=patience or None,
        lr_decay=lr_decay,
        lr_decay_step=lr_decay_step,
        grad_clip=grad_clip,
        l2_reg=l2_reg,
        enable_distillation=distill,
        distillation_temperature=temperature,
        distillation_alpha=alpha,
        seed=seed,
    )
    model = FastGRNN(model_config, seed=seed)
    trainer = Trainer(model_config, training_config)
    with EpochProgress(epochs, quiet) as progress:
        trainer.train(model, dataset, on_epoch_end=progress)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.safetensors")
    if dataset.normalization is not None:
        dataset.normalization.save_json(out / "normalization.json")
    trainer.save_metrics(out / "metrics.json")
    from .plotting import plot_training_curve

    curve = plot_training_curve(trainer.metrics, out / "training_curve.png")
    s = model.training_summary
    console.print(
        f"trained {s['epochs_run']} epochs ({s['seconds']:.2f} s), best epoch {s['best_epoch'] + 1}: "
        f"val loss {s['val_loss'] if s['val_loss'] is not None else float('nan'):.4f}, "
        f"val accuracy {s['val_accuracy'] if s['val_accuracy'] is not None else float('nan'):.3f}"
    )
    console.print(f"wrote {out / 'model.safetensors'} ({model.size_bytes()} bytes by EdgeML accounting)")
    if curve is None:
        console.print("(install tinydancer[plot] for training_curve.png)")


def _print_or_json(values: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(values))
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in values.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
@friendly_errors
def evaluate(
    model_path: Path = typer.Option(..., "--model", help="A model.safetensors file."),
    data: Path = typer.Option(..., "--data", help="Labelled data (.csv, .jsonl, .npz) in raw feature units."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Loss, accuracy and calibration of a saved model on a labelled file."""
    model = FastGRNN.load(model_path)
    dataset = read_table(data).to_dataset()
    if model.normalizer is not None:
        dataset.apply_normalization(model.normalizer)
    loss, acc = evaluate_model(model, dataset)
    probs = model.forward(dataset.features_3d())
    labels = dataset.labels_2d()
    result: dict[str, Any] = {"n": len(dataset), "loss": loss, "accuracy": acc}
    if model.config.output_activation == "sigmoid":
        result["brier"] = float(np.mean((probs - labels) ** 2))
    _print_or_json(result, as_json, f"evaluation of {model_path.name}")


@app.command()
@friendly_errors
def predict(
    model_path: Path = typer.Option(..., "--model", help="A model.safetensors file."),
    data: Optional[Path] = typer.Option(None, "--data", help="Features file (.csv, .jsonl, .npz); labels optional."),
    features: Optional[str] = typer.Option(None, "--features", help="One comma-separated feature vector."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """Probabilities for raw (un-normalized) features; the model's stored normalization is applied."""
    model = FastGRNN.load(model_path)
    if (data is None) == (features is None):
        raise TinyDancerError("give exactly one of --data FILE or --features 'v1,v2,...'")
    if features is not None:
        try:
            rows = np.array([[float(v) for v in features.split(",")]])
        except ValueError:
            raise TinyDancerError(f"--features must be comma-separated numbers, got {features!r}") from None
    else:
        rows = read_table(data).features  # type: ignore[arg-type]
    probs = model.predict(rows)
    for p in probs:
        values = [round(float(v), 6) for v in p]
        typer.echo(json.dumps(values if len(values) > 1 else values[0]) if as_json else " ".join(f"{v:.6f}" for v in values))


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("models"), help="Where the default model and artefacts go."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train on the seed example's synthetic routing data and show what the model learned."""
    from .demo import run_demo

    run_demo(out, console=console, quiet=quiet)


# ---------------------------------------------------------------------- query routing
router_app = typer.Typer(help="Model-tier routing: train, evaluate and use query routers.", no_args_is_help=True,
                          rich_markup_mode="markdown")
app.add_typer(router_app, name="router")


def _load_table(path: Path, prices: Optional[Path]) -> Any:
    from .llm.tables import RoutingTable, load_prices

    return RoutingTable.from_jsonl(path, load_prices(prices) if prices else None)


@router_app.command("train")
@friendly_errors
def router_train(
    table: Path = typer.Argument(..., help="Routing table (.jsonl): query, scores per model, costs (or --prices)."),
    out: Path = typer.Option(..., "--out", help="Folder for router.safetensors."),
    embedder: str = typer.Option("minilm", help="Embedder for rows without embeddings: minilm, minilm-torch, static[-DIM] (static vectors distilled from MiniLM), hashing-DIM."),
    prices: Optional[Path] = typer.Option(None, help="Price table JSON {model: $ per query} for rows without costs."),
    teacher_logits: Optional[Path] = typer.Option(None, help="Two-model tables: .npy of a teacher's logits, one per row, to distil."),
    neighbours: Optional[int] = typer.Option(None, help="Neighbour smoothing of training targets (0 = raw outcomes); "
                                             "default: chosen by cross-validation."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="Remember each training query's outcomes for verbatim repeats."),
    memory_prior: Optional[float] = typer.Option(None, help="The network's weight, in observations, against remembered "
                                                 "outcomes; default: chosen by cross-validation (1 without repeats)."),
    folds: int = typer.Option(3, help="Cross-validation folds the settings are chosen by (1 = one validation slice, "
                              "the network alone)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Processes that train the cross-validation networks; "
                                          "default: one per core on tables of 2,000+ rows (1 = one after another, "
                                          "least memory)."),
    seed: int = typer.Option(0),
    init: Optional[Path] = typer.Option(None, "--init", help="Fine-tune this router (a folder from `router train`, or "
                                        "the gateway's packaged one) instead of starting afresh; the table may score "
                                        "any subset of its models."),
    learning_rate: Optional[float] = typer.Option(None, help="Default 0.001 (0.0005 with --init)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a query router from a routing table, its settings chosen by k-fold cross-validation on it.

    Cross-validation (by AIQ) chooses the neighbour smoothing, the hidden size, whether to blend
    the FastGRNN with a linear head, and the outcome memory's prior; the folds' scores are kept
    in the router file (`QueryRouter.load(out).info['selection']`).

    The table may be partial: rows that score only some models (one answer per logged query, a
    labelled sample).  A missing cell's target is the mean outcome of the query's nearest
    neighbours that have one."""
    from .llm.embeddings import embedder_for_id, make_embedder
    from .llm.query_router import QueryRouter, QueryRouterConfig

    data = _load_table(table, prices)
    start = QueryRouter.load(init) if init is not None else None
    emb = embedder_for_id(start.embedder_id) if start is not None else make_embedder(embedder)
    if data.embeddings is not None:
        data.meta["embedder_id"] = emb.id if data.embeddings.shape[1] == emb.dim else f"table-{data.embeddings.shape[1]}d"
    else:
        data = _embed_with_progress(data, emb, quiet)
    logits = None
    if teacher_logits is not None:
        logits = np.load(teacher_logits)
    say = (lambda _m: None) if quiet else (lambda m: err_console.print(f"[dim]{m}[/]"))
    lr = learning_rate if learning_rate is not None else (5e-4 if start is not None else 1e-3)
    config = QueryRouterConfig(neighbours=neighbours, memory=memory, memory_prior=memory_prior, seed=seed, learning_rate=lr,
                               folds=folds, workers=workers)
    router = QueryRouter.fit(data, config, embedder=emb, teacher_logits=logits, progress=say, init=start)
    path = router.save(out)
    info = router.info
    missing = f", {info['missing_cells']} of {data.scores.size} cells missing" if info["missing_cells"] else ""
    sel = info.get("selection") if start is None else None
    spread = (f" (folds {sel['cv_aiq_range'][0]:.4f}-{sel['cv_aiq_range'][1]:.4f}), network weight "
              f"{info['network_weight']:g}, k {info['neighbours']}" if sel else "")
    console.print(
        f"{'fine-tuned' if start is not None else 'trained'} a {len(router.models)}-model router in {info['seconds']:.1f} s: "
        f"{info['validation_metric'].upper()} {info['validation_score']:.4f}{spread} (hidden {info['hidden_dim']}"
        f"{missing}), {info['memory_entries']} queries remembered; wrote {path}"
    )


def _embed_with_progress(data: Any, emb: Any, quiet: bool) -> Any:
    with item_progress("embedding queries", len(data), quiet) as advance:
        return data.with_embeddings(emb, progress=advance)


@router_app.command("eval")
@friendly_errors
def router_eval(
    router_dir: Path = typer.Argument(..., help="Folder written by `router train`."),
    table: Path = typer.Argument(..., help="Routing table (.jsonl) to evaluate on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    prices: Optional[Path] = typer.Option(None),
    plot: Optional[Path] = typer.Option(None, help="Write the cost-quality curve as PNG."),
) -> None:
    """AIQ, and for two-model tables APGR and CPT(20/50/80 %), of a router on a table, and the money
    it saves against always calling the best single model at 90, 95 and 100 % of its quality."""
    from .llm.query_router import QueryRouter

    router = QueryRouter.load(router_dir)
    data = _load_table(table, prices)
    if data.embeddings is not None and data.embeddings.shape[1] != router.model.config.input_dim:
        data.embeddings = None  # embed with the router's own embedder instead
    if data.embeddings is None:
        data = _embed_with_progress(data, router.embedder, as_json)
    result = router.evaluate(data)
    curve = result.pop("curve")
    result.pop("default_setting")
    if plot is not None:
        from .plotting import plot_lines

        col = [data.models.index(m) for m in router.models]
        singles = {m: (float(data.costs[:, c].mean()), float(data.scores[:, c].mean())) for m, c in zip(router.models, col)}
        plot_lines({"router": (curve["mean_cost"], curve["mean_quality"])}, plot, xlabel="mean cost per query ($)",
                   ylabel="mean quality", title=f"{router_dir.name} on {table.name}", points=singles)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        flat = {k: v for k, v in result.items() if k not in ("models", "savings", "best_single_model")}
        best = result["best_single_model"]
        flat["best single model"] = f"{best['model']}: quality {best['mean_quality']:.3f} at ${best['mean_cost']:.4g} a query"
        for level, point in result["savings"].items():
            flat[f"saved at {level} of its quality"] = ("not reached" if point is None else
                                                        f"${point['saved_per_query']:.4g} a query ({point['saved_share']:.0%})")
        _print_or_json(flat, False, f"router {router_dir.name} on {table.name}")


@router_app.command("route")
@friendly_errors
def router_route(
    router_dir: Path = typer.Argument(..., help="Folder written by `router train`."),
    query: str = typer.Argument(..., help="The query text."),
    strong_share: Optional[float] = typer.Option(None, help="Two models: calibrate so this share of typical queries go strong."),
    cost_weight: Optional[float] = typer.Option(None, help="N models: quality − cost_weight × cost."),
    quality_bar: Optional[float] = typer.Option(None, help="N models: cheapest model predicted to reach this quality."),
) -> None:
    """Route one query and print the decision, and the operating point it was made at, as JSON."""
    from .llm.query_router import QueryRouter

    router = QueryRouter.load(router_dir)
    pair = router.is_pair
    if pair and (cost_weight is not None or quality_bar is not None):
        raise TinyDancerError(f"{router_dir} routes between two models: set the operating point with --strong-share, "
                              "not --cost-weight or --quality-bar")
    if not pair and strong_share is not None:
        raise TinyDancerError(f"{router_dir} routes between {len(router.models)} models: set the operating point with "
                              "--cost-weight (quality − weight × cost) or --quality-bar (the cheapest model predicted to "
                              "reach it), not --strong-share")
    if strong_share is not None:
        router.calibrate(strong_share)
    if cost_weight is not None:
        router.cost_weight = cost_weight
    if quality_bar is not None:
        router.quality_bar = quality_bar
    point = ({"threshold": router.threshold, "strong_share": strong_share} if pair
             else {"cost_weight": router.cost_weight, "quality_bar": router.quality_bar})
    typer.echo(json.dumps({**router.route(query).to_dict(), "operating_point": point}))


@app.command()
@friendly_errors
def calibrate(
    router_dir: Path = typer.Argument(..., help="The query router to calibrate (a folder from `router train`); rewritten."),
    database_path: Path = typer.Option(Path("tinydancer.db"), help="The service's or gateway's log of routed queries."),
    strong_share: Optional[float] = typer.Option(None, help="Two models: this share of your traffic goes to the strong one."),
    budget: Optional[float] = typer.Option(None, help="Dollars a query, predicted: the best point that stays under it."),
    since: Optional[float] = typer.Option(None, help="Only queries logged at or after this Unix time."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report the point; leave the router file as it is."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Set a router's operating point from your own traffic: the queries the service or gateway logged.

    RouteLLM calibrates its threshold on a fixed public set; this uses the queries your users sent.
    The router file is rewritten atomically (a running gateway or service hot-reloads it)."""
    from .llm.query_router import QueryRouter
    from .server.storage import open_storage

    router = QueryRouter.load(router_dir)
    queries = open_storage(existing_log(database_path)).logged_inputs("query", since)
    report = router.calibrate_on_traffic(queries, strong_share=strong_share, budget=budget)
    report["written"] = not dry_run
    if not dry_run:
        router.save(router_dir if router_dir.is_dir() else router_dir.parent)
    _print_or_json(report, as_json, f"operating point of {router_dir} on {report['queries']} logged queries")


@router_app.command("tables")
@friendly_errors
def router_tables(
    out: Path = typer.Option(Path("tables"), help="Folder for the JSONL tables."),
    data_dir: Optional[Path] = typer.Option(None, help="The shared data folder (default: $TINY_DANCER_DATA or ../shared/data)."),
    embeddings: bool = typer.Option(False, help="Include MiniLM embeddings in the rows (large files)."),
) -> None:
    """Write the benchmark's fixed train/test splits (MMLU, GSM8K, LLMRouter) as routing tables."""
    from .llm.tables import shared_data_dir, standard_splits

    folder = data_dir or shared_data_dir()
    if folder is None:
        raise TinyDancerError("no shared data folder found: pass --data-dir or set TINY_DANCER_DATA")
    emb = None
    if embeddings:
        from .llm.embeddings import make_embedder

        emb = make_embedder("minilm")
    for name, (train, test) in standard_splits(Path(folder)).items():
        for split, table in (("train", train), ("test", test)):
            if emb is not None:
                table = _embed_with_progress(table, emb, False)
            path = table.to_jsonl(out / f"{name}_{split}.jsonl", include_embeddings=embeddings)
            console.print(f"{path}: {len(table)} queries × {len(table.models)} models")


# ---------------------------------------------------------------------- service and learning loop
@app.command()
@friendly_errors
def serve(
    model_path: Optional[Path] = typer.Option(None, help="Candidate-scoring model (default: $TINY_DANCER_MODEL or models/default.safetensors)."),
    database_path: Path = typer.Option(Path("tinydancer.db"), help="SQLite file for decisions and outcomes."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="TINY_DANCER_DATABASE_URL",
                                               help="A postgresql:// URL: replicas share one log (replaces --database-path)."),
    query_router: Optional[Path] = typer.Option(None, help="Folder of a query router (enables /v1/route/query)."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    watch_interval: float = typer.Option(1.0, help="Seconds between checks of the model file for hot reload (0: off)."),
    explore: float = typer.Option(0.0, help="Share of /v1/route/query requests sent to a random model, so retraining "
                                            "learns about models the router would not pick."),
    log_level: str = typer.Option("warning"),
    body_timeout: float = typer.Option(10.0, help="Seconds a request body may pause before the request is answered 408."),
    log_buffer_rows: int = typer.Option(10_000, help="Decision rows kept for retry while storage fails (then dropped, counted)."),
    retention_days: Optional[float] = typer.Option(None, help="Remove logged decisions (and their outcomes) older than this."),
    retention_rows: Optional[int] = typer.Option(None, help="Keep at most this many logged decisions, the newest."),
    insecure: bool = typer.Option(False, "--insecure", help="Lab networks only: serve every route without credentials "
                                                            "on any address."),
    strong_share: Optional[float] = typer.Option(None, help="Two-model query router: this share of typical queries go strong."),
    cost_weight: Optional[float] = typer.Option(None, help="N-model query router: decide by quality − weight × cost."),
    quality_bar: Optional[float] = typer.Option(None, help="N-model query router: the cheapest model predicted to reach this."),
) -> None:
    """Serve the HTTP API with uvicorn (one worker; run replicas behind a load balancer to scale).

    Off loopback it needs credentials: client keys in TINY_DANCER_API_KEYS (or a file named by
    TINY_DANCER_API_KEYS_FILE) for /v1/*, and TINY_DANCER_AUTH_TOKEN for the admin routes.
    """
    import uvicorn

    from .candidates import default_model_path
    from .server import ServiceSettings, create_app
    from .server.guards import is_loopback

    # a query-router-only service needs no candidate model: one is served if named, or if the
    # default file exists, but readiness waits for it only when named (or when there is nothing else)
    require_candidates = model_path is not None or query_router is None
    settings = ServiceSettings(model_path=model_path or default_model_path(), database_path=database_path,
                               require_candidate_model=require_candidates,
                               database_url=database_url, query_router_path=query_router, watch_interval_s=watch_interval,
                               query_exploration=explore, host=host, insecure=insecure, body_read_timeout_s=body_timeout,
                               max_pending_rows=log_buffer_rows, retention_days=retention_days,
                               retention_rows=retention_rows, query_strong_share=strong_share,
                               query_cost_weight=cost_weight, query_quality_bar=quality_bar)
    if not is_loopback(host) and not insecure and not (settings.api_keys or settings.auth_token):
        raise TinyDancerError(
            f"refusing to listen on {host} without credentials: set TINY_DANCER_API_KEYS (client keys, comma-separated) "
            "and TINY_DANCER_AUTH_TOKEN (the admin token), or pass --insecure on a lab network")
    if not is_loopback(host) and not insecure and not settings.auth_token:
        err_console.print("[yellow]no TINY_DANCER_AUTH_TOKEN: admin and operator routes answer 403 off loopback[/]")
    application = create_app(settings)
    service = application.state.service
    if service.query_embedder_problem is not None:
        raise TinyDancerError(f"refusing to serve a query router that cannot embed text: {service.query_embedder_problem}")
    _check_port_free(host, port)
    if service.router is None and require_candidates:
        err_console.print(f"[yellow]starting without a model ({service.not_ready_reason}); /health/ready answers 503[/]")
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)


@app.command()
@friendly_errors
def gateway(
    config: Path = typer.Option(..., "--config", help="The gateway's YAML: upstreams, prices, router, operating point."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    database_path: Path = typer.Option(Path("tinydancer.db"), help="SQLite file for decisions, calls and outcomes."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="TINY_DANCER_DATABASE_URL",
                                               help="A postgresql:// URL: replicas share one log (replaces --database-path)."),
    log_level: str = typer.Option("warning"),
    retention_days: Optional[float] = typer.Option(None, help="Remove logged calls (decisions, outcomes, prompts) older "
                                                   "than this."),
    retention_rows: Optional[int] = typer.Option(None, help="Keep at most this many logged calls, the newest."),
    insecure: bool = typer.Option(False, "--insecure", help="Lab networks only: serve without credentials on any address."),
) -> None:
    """Serve an OpenAI-compatible endpoint that routes each chat call to an upstream LLM (one process,
    beside the rest of the HTTP API).  Point the OpenAI SDK's base_url at http://HOST:PORT/v1.

    Clients send a key of TINY_DANCER_API_KEYS as the OpenAI API key; without client keys or an admin
    token (TINY_DANCER_AUTH_TOKEN) the gateway serves only on a loopback address.
    """
    import uvicorn

    from .gateway import create_gateway_app, load_config
    from .server import ServiceSettings
    from .server.guards import is_loopback

    cfg = load_config(config)
    settings = ServiceSettings(database_path=database_path, database_url=database_url, host=host, insecure=insecure,
                               retention_days=retention_days, retention_rows=retention_rows)
    if not is_loopback(host) and not insecure and not (settings.api_keys or settings.auth_token):
        raise TinyDancerError(
            f"refusing to listen on {host}: the gateway holds provider keys, so clients need keys of their own. Set "
            "TINY_DANCER_API_KEYS (comma-separated) or TINY_DANCER_API_KEYS_FILE, and TINY_DANCER_AUTH_TOKEN for the "
            "admin routes; or listen on 127.0.0.1")
    missing = cfg.missing_keys()
    if missing:  # each would answer 401 to every call: say so now, not after the first user's call
        raise TinyDancerError(f"not set: {', '.join(missing)} (the api_key_env of some upstreams). Export them, or remove "
                              "api_key_env from an upstream that needs no key (a local vLLM or Ollama, say)")
    _check_port_free(host, port)
    application = create_gateway_app(cfg, settings)
    gw = application.state.gateway
    routed = [m for m, up in zip(gw.router.models, gw.player) if up is not None]
    err_console.print(f"gateway on http://{host}:{port}/v1: routes 'tinydancer' among {', '.join(routed)}; "
                      f"upstreams {', '.join(gw.upstreams)}")
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)


@app.command()
@friendly_errors
def label(
    prompts: Optional[Path] = typer.Argument(None, help="Prompts: JSONL or CSV with 'prompt' (or 'query') and optional "
                                                        "'reference'."),
    from_db: Optional[Path] = typer.Option(None, "--from-db", help="Label the prompts a gateway kept (its config's "
                                           "log_prompts: true) in this database instead."),
    since: Optional[float] = typer.Option(None, help="--from-db: only prompts logged at or after this Unix time."),
    sample: Optional[int] = typer.Option(None, help="Label this many prompts drawn at random (seeded) from the input."),
    config: Path = typer.Option(..., "--config", help="The gateway's YAML: every upstream answers each prompt."),
    out: Path = typer.Option(..., "--out", help="The routing table to write (JSONL), for `router train`."),
    grader: Optional[str] = typer.Option(None, help="reference, judge or pairwise (default: reference when every prompt "
                                                    "has one, else judge)."),
    judge: Optional[str] = typer.Option(None, help="The upstream that grades answers (judge and pairwise graders)."),
    match: str = typer.Option("normalized", help="Reference grader: exact, normalized or contains."),
    models: Optional[str] = typer.Option(None, help="Comma-separated upstreams to label (default: all of them)."),
    max_tokens: int = typer.Option(512, help="max_tokens of each call: bounds each answer, hence each call's worst case."),
    max_dollars: Optional[float] = typer.Option(None, help="A hard cap on this run's spending: each prompt's worst case "
                                                "is reserved before its calls start."),
    concurrency: int = typer.Option(8, help="Calls in flight at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the estimated cost and stop; nothing is called."),
    journal: Optional[Path] = typer.Option(None, help="The journal of paid calls (default: OUT.journal); a rerun reuses it."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Label your prompts: call every upstream, grade each answer, write a routing table with real costs.

    Resumable: each paid call is journaled as it returns, and a rerun of the same command pays only
    for what is missing. Cells a grader could not score (a judge reply without a parsable rating, a
    failed call) are left out of the table, never written as zeros; `router train` takes such a
    partial table."""
    from .gateway import load_config
    from .gateway.labelling import Prompt, calls_per_prompt, load_prompts, plan_from_config, run_labelling

    if concurrency < 1 or max_tokens < 1:
        raise TinyDancerError("--concurrency and --max-tokens must be at least 1")
    if max_dollars is not None and not (math.isfinite(max_dollars) and max_dollars >= 0):
        raise TinyDancerError(f"--max-dollars must be a finite amount of at least 0, not {max_dollars}")
    if (prompts is None) == (from_db is None):
        raise TinyDancerError("give a prompts file or --from-db DATABASE (one of them)")
    cfg = load_config(config)
    if from_db is not None:
        from .server.storage import open_storage

        texts = open_storage(existing_log(from_db)).prompt_texts(since)
        if not texts:
            raise TinyDancerError(f"{from_db} holds no prompts: set log_prompts: true in the gateway's config, "
                                  "and let it serve some traffic first")
        items = [Prompt(t) for t in texts]
    else:
        assert prompts is not None
        items = load_prompts(prompts)
    if sample is not None and sample < len(items):
        picked = np.random.default_rng(0).choice(len(items), size=sample, replace=False)
        items = [items[i] for i in sorted(picked)]
    plan = plan_from_config(cfg, items, models=models.split(",") if models else None, grader=grader,
                            judge=judge, match=match, max_tokens=max_tokens, max_dollars=max_dollars,
                            concurrency=concurrency)
    estimate = plan.estimate()
    total = sum(estimate.values())
    rows = [[name, f"${dollars:.4f}"] for name, dollars in estimate.items()] + [["total (at most)", f"${total:.4f}"]]
    _print_or_json({r[0]: r[1] for r in rows}, False,
                   f"{len(plan.prompts)} prompts × {len(plan.models)} models, graded by {plan.grader}: estimated cost, "
                   "worst case (every answer max_tokens long; what --max-dollars reserves)")
    if dry_run:
        return
    n_calls = len(plan.prompts) * calls_per_prompt(plan)
    try:
        with item_progress("labelling (calls)", n_calls, quiet) as advance:
            report = run_labelling(plan, out, journal, tick=lambda: advance(1))
    except KeyboardInterrupt:
        raise TinyDancerError(f"interrupted: the paid calls are kept in {journal or out.with_name(out.name + '.journal')}; "
                              "rerun the same command to finish without paying for them again") from None
    console.print(f"wrote {report.rows} rows to {out}: {report.cells} cells scored, {report.missing} missing "
                  f"({report.unparsed} judge replies without a rating, {report.failed_calls} failed calls, "
                  f"{report.skipped_for_budget} calls not made for the budget); {report.paid_calls} calls paid "
                  f"${report.dollars:.4f}" + ("" if max_dollars is None else f" of the ${max_dollars:g} cap")
                  + f", {report.reused_calls} reused from the journal")
    if report.charged_worst_case:
        err_console.print(f"[yellow]{report.charged_worst_case} calls were charged their worst case: usage missing or "
                          "impossible (not a whole number, negative, above the worst case), or no readable answer[/]")
    for e in report.errors:
        err_console.print(f"[yellow]{e}[/]")


storage_app = typer.Typer(help="The decision log's storage.", no_args_is_help=True,
                           rich_markup_mode="markdown")
app.add_typer(storage_app, name="storage")


@storage_app.command("copy")
@friendly_errors
def storage_copy(
    source: str = typer.Option(..., "--from", help="The log to copy: a SQLite file (or a postgresql:// URL)."),
    target: str = typer.Option(..., "--to", help="Where to: a postgresql:// URL (or a SQLite file)."),
    registry: Optional[Path] = typer.Option(None, help="A registry folder (models/registry) to move into the "
                                                       "PostgreSQL target too: its versions become rows."),
    registry_kind: str = typer.Option("model", help="What that registry holds: model (candidate scoring) or "
                                                    "query_router."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Copy a decision log, every table, into another backend (SQLite to PostgreSQL, say), and a
    registry folder with it (--registry).

    Rows and versions the target already has are kept, so an interrupted copy can simply be run
    again."""
    from .server.registry import DatabaseRegistry, ModelRegistry, import_folder
    from .server.storage import copy_log, open_storage
    from .server.storage.base import LOG_TABLES, keeps_registry

    if source == target:
        raise TinyDancerError("--from and --to name the same log")
    existing_log(source)
    if registry is not None and not (registry / "versions").is_dir():
        raise TinyDancerError(f"{registry} is not a registry folder (no versions/ in it)")
    src, dst = open_storage(source), open_storage(target)
    try:
        if registry is not None and not keeps_registry(dst):
            raise TinyDancerError("--registry moves a registry folder into PostgreSQL; beside a SQLite log the "
                                  "registry stays a folder")
        total = sum(src.count(t) for t in LOG_TABLES)
        with item_progress("copying rows", total, quiet) as advance:
            copied = copy_log(src, dst, progress=advance)
        versions = None if registry is None else import_folder(ModelRegistry(registry), DatabaseRegistry(dst, registry_kind))
    finally:
        src.close()
        dst.close()
    console.print("copied " + ", ".join(f"{n:,} {table}" for table, n in copied.items())
                  + ("" if versions is None else f", {versions} registry versions"))


def _check_port_free(host: str, port: int) -> None:
    """Fail before the banner (and before uvicorn's Errno 98 traceback-like line) when the port is taken."""
    import socket

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise TinyDancerError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server there? "
                                  "pick another --port)") from None


def existing_log(where: str | Path) -> str | Path:
    """``where`` if it names a PostgreSQL log or an existing SQLite file: opening a misspelt path
    would create an empty log (and a registry folder beside it) and then report 'no data'."""
    if isinstance(where, str) and where.startswith(("postgres://", "postgresql://")):
        return where
    if not Path(where).is_file():
        raise TinyDancerError(f"no decision log at {where}: name the SQLite file `serve` or `gateway` writes "
                              "(--database-path), or a postgresql:// URL (--database-url)")
    return where


registry_app = typer.Typer(help="Model versions: the registry folder beside a SQLite log, or PostgreSQL's.",
                            no_args_is_help=True,
                            rich_markup_mode="markdown")
app.add_typer(registry_app, name="registry")


def _database_registry(database_url: str, kind: str) -> Any:
    from .server.registry import DatabaseRegistry
    from .server.storage import open_storage
    from .server.storage.base import keeps_registry

    storage = open_storage(database_url)
    if not keeps_registry(storage):
        storage.close()
        raise TinyDancerError("the registry commands read a PostgreSQL registry (--database-url postgresql://…); "
                              "beside SQLite the registry is the folder models/registry")
    return DatabaseRegistry(storage, kind)


@registry_app.command("list")
@friendly_errors
def registry_list(
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="TINY_DANCER_DATABASE_URL",
                                               help="A PostgreSQL registry; without it, the folder --registry."),
    registry: Path = typer.Option(Path("models/registry"), help="The registry folder kept beside a SQLite log."),
    kind: str = typer.Option("model", help="With --database-url: model (candidate scoring) or query_router."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every version, oldest first; the current one is marked."""
    from dataclasses import asdict

    from .server.registry import ModelRegistry

    if database_url is None:
        if not (registry / "versions").is_dir():
            raise TinyDancerError(f"no registry folder at {registry} (retrain writes one beside a SQLite log); "
                                  "name it with --registry, or a PostgreSQL registry with --database-url")
        versions = ModelRegistry(registry).versions()
    else:
        reg = _database_registry(database_url, kind)
        try:
            versions = reg.versions()
        finally:
            reg.storage.close()
    if as_json:
        typer.echo(json.dumps([asdict(v) for v in versions]))
        return
    table = Table("version", "current", "parent", "sha256", "bytes", "promoted by")
    for v in versions:
        table.add_row(v.version, "*" if v.promoted else "", v.parent or "", v.sha256[:12], f"{v.file_bytes:,}",
                      v.promoted_by or "")
    console.print(table)


@registry_app.command("promote")
@friendly_errors
def registry_promote(
    version: str = typer.Argument(..., help="The version to serve (see tinydancer registry list)."),
    database_url: str = typer.Option(..., "--database-url", envvar="TINY_DANCER_DATABASE_URL"),
    kind: str = typer.Option("model", help="model (candidate scoring) or query_router."),
) -> None:
    """Serve this version on every replica (a rollback, say): moves the current pointer and
    notifies the replicas, which reload within seconds."""
    from .server.registry import who

    reg = _database_registry(database_url, kind)
    try:
        reg.promote(version, by=f"{who()} (tinydancer registry promote)")
    finally:
        reg.storage.close()
    console.print(f"{kind} {version} is current; the replicas reload it")


@app.command()
@friendly_errors
def retrain(
    database_path: Path = typer.Option(Path("tinydancer.db"), help="The service's SQLite file."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="TINY_DANCER_DATABASE_URL",
                                               help="A postgresql:// URL: replicas share one log (replaces --database-path)."),
    model_path: Optional[Path] = typer.Option(None, help="The served model file (replaced atomically on promotion)."),
    query_router: Optional[Path] = typer.Option(
        None, help="Retrain this query router (its folder or file) from /v1/route/query feedback instead."),
    registry: Path = typer.Option(Path("models/registry"), help="Folder keeping every trained version (beside a SQLite "
                                                                "log; with PostgreSQL the versions are rows there)."),
    mode: str = typer.Option("finetune", help="finetune (continue the served model) or fresh."),
    since: Optional[float] = typer.Option(None, help="Only decisions logged at or after this Unix time."),
    epochs: int = typer.Option(40),
    learning_rate: float = typer.Option(0.002),
    min_samples: int = typer.Option(200),
    max_mix_shift: float = typer.Option(0.25, help="Largest move of the routing mix a new model may make and be promoted."),
    allow_mix_shift: bool = typer.Option(False, "--allow-mix-shift", help="Promote a larger move (after you reviewed it)."),
    reference: Optional[Path] = typer.Option(None, help="A trusted labelled set, kept apart from the logs "
                                                        "(CSV/JSONL/NPZ): the new model must not be worse on it."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retrain from logged decisions and outcomes; promote the new model only if it is not worse.

    Logged outcomes alone cannot promote a model that moves the routing mix by more than
    --max-mix-shift, nor one that is worse on the --reference set: the logs are what clients send.
    """
    from dataclasses import asdict

    from .server.learning import RetrainConfig, retrain_query_router
    from .server.registry import registry_for, who
    from .server.learning import retrain as run_retrain
    from .candidates import default_model_path
    from .server.storage import open_storage

    config = RetrainConfig(mode=mode, since=since, epochs=epochs, learning_rate=learning_rate, min_samples=min_samples,
                           max_mix_shift=max_mix_shift, allow_mix_shift=allow_mix_shift, reference=reference,
                           promoted_by=f"{who()} (tinydancer retrain)")
    say = None if as_json else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    storage = open_storage(existing_log(database_url or database_path))
    try:
        if query_router is not None:
            report: Any = retrain_query_router(storage, query_router, registry_for(storage, registry, "query_router"),
                                               config, progress=say)
        else:
            report = run_retrain(storage, model_path or default_model_path(), registry_for(storage, registry, "model"),
                                 config, progress=say)
    finally:
        storage.close()
    if as_json:
        typer.echo(json.dumps(asdict(report)))
    else:
        console.print(f"{report.version}: {report.reason}")
