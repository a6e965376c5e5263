"""The gateway's app factory: the service's app (routing, feedback, metrics, admin) plus the
OpenAI-compatible routes, in one process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..server import ServiceSettings, create_app
from ..server.report import prices_of
from ..server.routes.dashboard import DashboardSource
from .config import GatewayConfig
from .routes import ROUTES
from .state import Gateway

__all__ = ["create_gateway_app"]


def create_gateway_app(config: GatewayConfig, settings: ServiceSettings | None = None, embedder: Any = None,
                       tracer_provider: Any = None, *, serve_candidate_model: bool = False) -> FastAPI:
    """``embedder`` replaces the router's own (tests pass a small deterministic one); ``tracer_provider``
    (an OpenTelemetry TracerProvider) the one the ``OTEL_*`` variables would make (see gateway.tracing).

    The gateway does not use the candidate-scoring model, so it loads none (and /info says so)
    unless ``serve_candidate_model`` asks this one process to serve ``POST /v1/route`` as well."""
    settings = replace(settings or ServiceSettings(), require_candidate_model=serve_candidate_model)
    holder: list[Gateway] = []

    async def close() -> None:
        for gw in holder:
            await gw.close()

    app = create_app(settings, extra_routes=ROUTES, on_close=[close])
    gateway = Gateway(config, app.state.service, embedder=embedder, tracer_provider=tracer_provider)
    holder.append(gateway)
    app.state.gateway = gateway
    app.state.dashboard = DashboardSource(prices=prices_of(config.upstreams), live=lambda: _live(gateway),
                                          registry_folder=Path(settings.model_path).parent / "registry")
    return app


def _live(gw: Gateway) -> dict[str, Any]:
    """What the dashboard shows of the running gateway: breakers, the router served, its operating point,
    each client key's spend today against its budget."""
    router = gw.router
    point = {k: round(v, 4) for k, v in gw.point._asdict().items() if isinstance(v, float)}
    return {"upstreams": gw.upstream_status()["upstreams"], "router_version": gw.router_version,
            "strong_model": router.models[router.strong] if router.is_pair else None,
            "operating_point": ", ".join(f"{k} {v:g}" for k, v in point.items()) or "default",
            "keys": gw.spend.status()["keys"]}
