"""``tinydancer gateway``: the OpenAI-compatible endpoint that routes chat calls to upstream LLMs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import TinyDancerError
from ..progress import err_console
from .common import check_port_free, friendly_errors

__all__ = ["gateway"]


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

    from ..gateway import create_gateway_app, load_config
    from ..server import ServiceSettings
    from ..server.guards import is_loopback

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
    check_port_free(host, port)
    application = create_gateway_app(cfg, settings)
    gw = application.state.gateway
    routed = [m for m, up in zip(gw.router.models, gw.player) if up is not None]
    which = "the packaged router" if cfg.router is None else f"the router {gw.router_path}"
    err_console.print(f"gateway on http://{host}:{port}/v1: routes 'tinydancer' among {', '.join(routed)} with {which}; "
                      f"upstreams {', '.join(gw.upstreams)}", soft_wrap=True)
    if gw.tracer is not None:
        err_console.print(f"traces: OpenTelemetry, OTEL_TRACES_EXPORTER={os.environ.get('OTEL_TRACES_EXPORTER')} "
                          f"to {os.environ.get('OTEL_EXPORTER_OTLP_ENDPOINT', 'the exporter default')}")
    if cfg.key_budgets:
        err_console.print(f"daily budgets (UTC) for {', '.join(sorted(cfg.key_budgets))}: see GET /admin/keys")
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)
