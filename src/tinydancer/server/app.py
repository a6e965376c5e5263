"""The HTTP service's app factory: it assembles the state, the routers, the error handlers and the limits.

Routes (all handlers ``async def``; the OpenAPI schema is at ``/openapi.json``)

    POST /v1/route           candidate scoring (the seed's request/response, plus request_id)   routes/routing.py
    POST /v1/route/query     model-tier routing from text or an embedding                       routes/queries.py
    POST /v1/feedback        {"request_id", "success", "quality"?, "candidate_id"?, "cost"?}     routes/feedback.py
    GET  /health             liveness                                                            routes/health.py
    GET  /health/ready       503 until a model is loaded
    GET  /metrics            Prometheus text, names starting tiny_dancer_
    GET  /info               versions, model, storage
    POST /admin/reload       reload the model file (validated; a bad file keeps the old model)  routes/admin.py
    GET|PUT /admin/config    live thresholds, validated (422 on a bad value)
    GET  /admin/circuit-breaker, POST /admin/circuit-breaker/reset
    GET  /admin/stats        totals, averages, p50/p95/p99 from the stored decisions

Who may call what (client keys, the admin token, loopback) is decided in :mod:`.guards`, before
routing.
Bad JSON, NaN/Inf and out-of-range values get 422, oversized bodies 413 — never a 5xx.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute

from .._version import __version__
from ..errors import ValidationError
from .metrics import Metrics
from .guards import AccessGuard, is_loopback
from .middleware import BodyLimit
from .routes import ALL as ROUTERS
from .settings import ServiceSettings
from .state import Service
from .storage import StorageUnavailable
from .wire import RouteIn

__all__ = ["Metrics", "Service", "ServiceSettings", "create_app"]

log = logging.getLogger("tinydancer.service")


def create_app(settings: ServiceSettings | None = None, extra_routes: Sequence[BaseRoute] = (),
               on_close: Sequence[Callable[[], Awaitable[None]]] = ()) -> FastAPI:
    """The service; a layer built on it (the gateway) adds its routes and what to close at shutdown."""
    settings = settings or ServiceSettings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if service.writer.closed:
            service.writer = service.new_writer()
        # everything loaded so far (models, the embedder, the framework) lives as long as the process:
        # moved out of the collector's reach, a full collection no longer scans it.  Under load
        # those scans stalled the gateway for ~50 ms (its p99 at 8 connections: 52 ms → 10-16 ms)
        gc.collect()
        gc.freeze()
        task = asyncio.create_task(service.watch()) if settings.watch_interval_s > 0 else None
        if service.follower is not None:
            service.follower.start()
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            if service.follower is not None:
                await asyncio.to_thread(service.follower.stop)
            for close in on_close:
                await close()
            try:
                service.writer.close()
            except StorageUnavailable as exc:  # the database is gone at shutdown: say what is lost
                log.error("shutting down with %d decision rows not written: %s", service.writer.pending, exc)
            service.storage.close()

    # The resource routers' routes are complete (path prefix, auth dependency, tags), so they are
    # handed to the app as they are.  ``include_router`` would keep each router as a node that
    # FastAPI 0.165 walks on every request: 12 µs a request with five routers, measured.
    app = FastAPI(title="Tiny Dancer", version=__version__, lifespan=lifespan,
                  # the extra routes first: Starlette tries routes in order, and a gateway's chat calls
                  # are its traffic (14 failed matches cost ~25 µs a call, measured)
                  routes=[*extra_routes, *(route for router in ROUTERS for route in router.routes)],
                  description="FastGRNN routing: which candidate or model should each request go to.")
    app.state.service = service
    service.metrics.endpoints = frozenset(getattr(route, "path", "") for route in app.routes)
    _declare_raw_bodies(app)
    _add_error_handlers(app, service.metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s,
                       deadline_s=settings.body_deadline_s)
    # added last, so it runs first: credentials are checked before a body is read
    app.add_middleware(AccessGuard, admin_token=settings.auth_token, api_keys=settings.api_keys,
                       local_only=settings.insecure or is_loopback(settings.host), metrics=service.metrics)
    return app


def _declare_raw_bodies(app: FastAPI) -> None:
    """FastAPI's schema plus the models of bodies we parse ourselves (RouteIn, CandidateIn)."""
    generated = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generated()
            _, defs = models_json_schema([(RouteIn, "validation")], ref_template="#/components/schemas/{model}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI, m: Metrics) -> None:
    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input; a NaN there would make the error itself
        # unserializable (a 500).  Report where and why, not the value.
        m.errors.labels(m.endpoint_label(request.url.path), "validation").inc()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # every answer is JSON, a failure too (Starlette's default is a plain-text 500)
        m.errors.labels(m.endpoint_label(request.url.path), "internal").inc()
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error; the service logged it"}, status_code=500)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        m.errors.labels(m.endpoint_label(request.url.path), "validation").inc()
        return JSONResponse({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]}, status_code=422)
