"""The query router's commands: ``router train / eval / route / tables``, and ``calibrate`` (a
top-level command: it moves a served router's operating point on logged traffic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import TinyDancerError
from ..progress import err_console
from .common import console, dollars, embed_with_progress, existing_log, friendly_errors, load_table, print_or_json

__all__ = ["router_app", "calibrate"]

router_app = typer.Typer(help="Model-tier routing: train, evaluate and use query routers.", no_args_is_help=True,
                          rich_markup_mode="markdown")


@router_app.command("train")
@friendly_errors
def router_train(
    table: Path = typer.Argument(..., help="Routing table (.jsonl): query, scores per model, costs in dollars per call (or --prices)."),
    out: Path = typer.Option(..., "--out", help="Folder for router.safetensors."),
    embedder: str = typer.Option("static", help="Embedder for rows without embeddings: static[-DIM] (the default: "
                                 "static token vectors distilled from MiniLM, 70–190× faster per prompt, AIQ within "
                                 "MiniLM's interval on the 7 robustness tables), minilm (the transformer itself), "
                                 "minilm-torch, hashing-DIM."),
    prices: Optional[Path] = typer.Option(None, help="Price table JSON {model: dollars per call} for rows without costs; per-million-token prices ({model: {input_price, output_price}}) are converted at an assumed 500 prompt + 500 answer tokens a call."),
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
    from ..llm.embeddings import embedder_for_id, make_embedder
    from ..llm.query_router import QueryRouter, QueryRouterConfig

    data = load_table(table, prices)
    start = QueryRouter.load(init) if init is not None else None
    emb = embedder_for_id(start.embedder_id) if start is not None else make_embedder(embedder)
    if data.embeddings is not None:
        data.meta["embedder_id"] = emb.id if data.embeddings.shape[1] == emb.dim else f"table-{data.embeddings.shape[1]}d"
        if data.embeddings.shape[1] != emb.dim and not quiet:  # e.g. MiniLM's 384-d vectors, the default now static
            err_console.print(f"[yellow]the table's embeddings are {data.embeddings.shape[1]}-d, {emb.id!r} gives "
                              f"{emb.dim}-d: the router will route only on vectors like the table's, not on text; "
                              "pass the --embedder that made them (minilm gives 384-d)[/]")
    else:
        data = embed_with_progress(data, emb, quiet)
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


@router_app.command("eval")
@friendly_errors
def router_eval(
    router_dir: Path = typer.Argument(..., help="Folder written by `router train`."),
    table: Path = typer.Argument(..., help="Routing table (.jsonl) to evaluate on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    prices: Optional[Path] = typer.Option(None, help="Price table JSON {model: dollars per call} for rows without costs; per-million-token prices ({model: {input_price, output_price}}) are converted at an assumed 500 prompt + 500 answer tokens a call."),
    plot: Optional[Path] = typer.Option(None, help="Write the cost-quality curve as PNG."),
) -> None:
    """AIQ, and for two-model tables APGR and CPT(20/50/80 %), of a router on a table, and the money
    it saves against always calling the best single model at 90, 95 and 100 % of its quality."""
    from ..llm.query_router import QueryRouter

    router = QueryRouter.load(router_dir)
    data = load_table(table, prices)
    if data.embeddings is not None and data.embeddings.shape[1] != router.model.config.input_dim:
        data.embeddings = None  # embed with the router's own embedder instead
    if data.embeddings is None:
        data = embed_with_progress(data, router.embedder, as_json)
    result = router.evaluate(data)
    curve = result.pop("curve")
    result.pop("default_setting")
    if plot is not None:
        from ..plotting import plot_lines

        col = [data.models.index(m) for m in router.models]
        singles = {m: (float(data.costs[:, c].mean()), float(data.scores[:, c].mean())) for m, c in zip(router.models, col)}
        plot_lines({"router": (curve["mean_cost"], curve["mean_quality"])}, plot, xlabel="mean cost per call ($)",
                   ylabel="mean quality", title=f"{router_dir.name} on {table.name}", points=singles)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        flat = {k: v for k, v in result.items() if k not in ("models", "savings", "best_single_model")}
        best = result["best_single_model"]
        flat["best single model"] = f"{best['model']}: quality {best['mean_quality']:.3f} at {dollars(best['mean_cost'])}"
        for level, point in result["savings"].items():
            flat[f"saved at {level} of its quality"] = ("not reached" if point is None else
                                                        f"{dollars(point['saved_per_query'])} ({point['saved_share']:.0%})")
        print_or_json(flat, False, f"router {router_dir.name} on {table.name}")


@router_app.command("route")
@friendly_errors
def router_route(
    router_dir: Path = typer.Argument(..., help="Folder written by `router train`."),
    query: str = typer.Argument(..., help="The query text."),
    strong_share: Optional[float] = typer.Option(None, help="Two models: calibrate so this share of typical queries go strong."),
    cost_weight: Optional[float] = typer.Option(None, help="N models: the model with the best predicted quality (0-1) − weight × its cost as a share of the dearest model's (unitless: 0 ignores cost, 1 moves to a dearer model only for a gain above the price gap's share of the dearest price, 100 takes the cheapest unless another is far better)."),
    quality_bar: Optional[float] = typer.Option(None, help="N models: cheapest model predicted to reach this quality."),
) -> None:
    """Route one query and print the decision, and the operating point it was made at, as JSON.

    Costs (`cost`, `runner_up_cost`) are dollars per call, as in the table the router was trained on."""
    from ..llm.query_router import QueryRouter

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


@router_app.command("tables")
@friendly_errors
def router_tables(
    out: Path = typer.Option(Path("tables"), help="Folder for the JSONL tables."),
    data_dir: Optional[Path] = typer.Option(None, help="The shared data folder (default: $TINY_DANCER_DATA or ../shared/data)."),
    embeddings: bool = typer.Option(False, help="Include each prompt's embedding in the rows (large files), by --embedder."),
    embedder: str = typer.Option("static", help="The embedder of --embeddings: static (the default, as `router train`'s) "
                                 "or minilm; train on the table with the same one."),
) -> None:
    """Write the benchmark's fixed train/test splits (MMLU, GSM8K, LLMRouter) as routing tables.

    Their costs are dollars per call: the sources' prices, per million tokens, at an assumed 500
    prompt + 500 answer tokens a call (the data hold no token counts); APGR, CPT and AIQ do not
    depend on that assumption, the dollar amounts do."""
    from ..llm.tables import shared_data_dir, standard_splits

    folder = data_dir or shared_data_dir()
    if folder is None:
        raise TinyDancerError("no shared data folder found: pass --data-dir or set TINY_DANCER_DATA")
    emb = None
    if embeddings:
        from ..llm.embeddings import make_embedder

        emb = make_embedder(embedder)
    for name, (train, test) in standard_splits(Path(folder)).items():
        for split, table in (("train", train), ("test", test)):
            if emb is not None:
                table = embed_with_progress(table, emb, False)
            path = table.to_jsonl(out / f"{name}_{split}.jsonl", include_embeddings=embeddings)
            console.print(f"{path}: {len(table)} queries × {len(table.models)} models")


@friendly_errors
def calibrate(
    router_dir: Path = typer.Argument(..., help="The query router to calibrate (a folder from `router train`); rewritten."),
    database_path: Path = typer.Option(Path("tinydancer.db"), help="The service's or gateway's log of routed queries."),
    strong_share: Optional[float] = typer.Option(None, help="Two models: this share of your traffic goes to the strong one."),
    budget: Optional[float] = typer.Option(None, help="Dollars per call, predicted: the best point that stays under it."),
    since: Optional[float] = typer.Option(None, help="Only queries logged at or after this Unix time."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report the point; leave the router file as it is."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Set a router's operating point from your own traffic: the queries the service or gateway logged.

    RouteLLM calibrates its threshold on a fixed public set; this uses the queries your users sent.
    The router file is rewritten atomically (a running gateway or service hot-reloads it)."""
    from ..llm.query_router import QueryRouter
    from ..server.storage import open_storage

    router = QueryRouter.load(router_dir)
    queries = open_storage(existing_log(database_path)).logged_inputs("query", since)
    report = router.calibrate_on_traffic(queries, strong_share=strong_share, budget=budget)
    report["written"] = not dry_run
    if not dry_run:
        router.save(router_dir if router_dir.is_dir() else router_dir.parent)
    shown = report if as_json else {**report, "predicted_cost": dollars(report["predicted_cost"])}
    print_or_json(shown, as_json, f"operating point of {router_dir} on {report['queries']} logged queries")
