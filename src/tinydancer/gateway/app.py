"""The gateway's app factory: the service's app (routing, feedback, metrics, admin) plus the
OpenAI-compatible routes, in one process."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import FastAPI

from ..server import ServiceSettings, create_app
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
    return app
