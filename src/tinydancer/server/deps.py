"""What the routers share: the service state and readiness (credentials: :mod:`.guards`).

``ready_router`` is a FastAPI dependency (``async def``: a plain ``def`` dependency would run in
the thread pool, ~300 µs).  The /v1/route hot path calls
:func:`service_of` and :func:`ready` directly instead of declaring dependencies, because
FastAPI's dependency solving costs more than the routing itself.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from ..candidates import Router
from .state import Service


def service_of(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def ready(service: Service) -> Router:
    """The candidate router, or 503 while no model is loaded."""
    if service.router is None:
        raise HTTPException(503, f"not ready: {service.not_ready_reason}")
    return service.router


async def ready_router(request: Request) -> Router:
    return ready(service_of(request))
