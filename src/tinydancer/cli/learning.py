"""``tinydancer retrain``: the learning loop, run by hand or from cron: retrain from logged
outcomes, promote only what is not worse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..progress import err_console
from .common import console, existing_log, friendly_errors

__all__ = ["retrain"]


@friendly_errors
def retrain(
    database_path: Path = typer.Option(Path("tinydancer.db"), help="The service's or gateway's SQLite log."),
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
    strong_share: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Query routers: the strong share both "
                                                 "routers are compared at (default: the current router's on the logs)."),
    offpolicy_margin: float = typer.Option(0.01, min=0.0, help="Query routers with logged exploration: promote only if "
                                           "the new router's quality is not below the current one's by more than this "
                                           "(95 % confidence)."),
    ips_clip: float = typer.Option(10.0, min=1.0, help="Largest inverse-propensity weight an explored outcome gets."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retrain from logged decisions and outcomes; promote the new model only if it is not worse.

    Logged outcomes alone cannot promote a model that moves the routing mix by more than
    --max-mix-shift, nor one that is worse on the --reference set: the logs are what clients send.
    A query router whose gateway explored is judged by an off-policy estimate of its quality on
    the held-out decisions logged with a propensity, explored or not (doubly robust, 95 % bootstrap
    interval; see the README).
    """
    from dataclasses import asdict

    from ..server.learning import RetrainConfig, retrain_query_router
    from ..server.registry import registry_for, who
    from ..server.learning import retrain as run_retrain
    from ..candidates import default_model_path
    from ..server.storage import open_storage

    config = RetrainConfig(mode=mode, since=since, epochs=epochs, learning_rate=learning_rate, min_samples=min_samples,
                           max_mix_shift=max_mix_shift, allow_mix_shift=allow_mix_shift, reference=reference,
                           strong_share=strong_share, offpolicy_margin=offpolicy_margin, ips_clip=ips_clip,
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
