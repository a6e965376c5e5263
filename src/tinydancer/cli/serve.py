"""``tinydancer serve``: the HTTP API (candidate scoring, query routing, outcomes) under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import TinyDancerError
from ..progress import err_console
from .common import check_port_free, friendly_errors

__all__ = ["serve"]


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
    cost_weight: Optional[float] = typer.Option(None, help="N-model query router: decide by predicted quality (0-1) − weight × its cost as a share of the dearest model's (unitless: 0 ignores cost, 1 moves to a dearer model only for a gain above the price gap's share of the dearest price, 100 takes the cheapest unless another is far better)."),
    quality_bar: Optional[float] = typer.Option(None, help="N-model query router: the cheapest model predicted to reach this."),
) -> None:
    """Serve the HTTP API with uvicorn (one worker; run replicas behind a load balancer to scale).

    Off loopback it needs credentials: client keys in TINY_DANCER_API_KEYS (or a file named by
    TINY_DANCER_API_KEYS_FILE) for /v1/*, and TINY_DANCER_AUTH_TOKEN for the admin routes.
    """
    import uvicorn

    from ..candidates import default_model_path
    from ..server import ServiceSettings, create_app
    from ..server.guards import is_loopback

    # a query-router-only service needs no candidate model: one is served (and readiness waits for
    # it) only when named, or when there is nothing else to serve; /info says which
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
    check_port_free(host, port)
    if service.router is None and require_candidates:
        err_console.print(f"[yellow]starting without a model ({service.not_ready_reason}); /health/ready answers 503[/]")
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)
