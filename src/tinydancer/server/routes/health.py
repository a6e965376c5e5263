"""Liveness, readiness, Prometheus metrics and service information (no credentials needed)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..._version import __version__
from ..deps import service_of
from ..metrics import STATE_CODE
from ..storage.base import safe_url

router = APIRouter(tags=["operations"])



@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "no model loaded, the decision log cannot be written, "
                                                                "or the query router cannot embed text"}})
async def ready(request: Request) -> Any:
    service = service_of(request)
    problem = service.readiness_problem()
    if problem is not None:
        return JSONResponse({"ready": False, "reason": problem}, status_code=503)
    # what this process serves, and its pid: after a restart, a client can tell the new process from the old one
    return {"ready": True, "model_version": None if service.router is None else service.router.served.version,
            **service.serves()}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Any:
    service = service_of(request)
    m = service.metrics
    if service.router is not None and service.router.breaker is not None:
        m.breaker_state.set(STATE_CODE[service.router.breaker.state])
    m.fold()
    m.storage_ok.set(0 if service.storage_problem() else 1)
    m.log_pending.set(service.writer.pending)
    return PlainTextResponse(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    service = service_of(request)
    r = service.router
    served = service.serves()
    return {
        "version": __version__,
        "uptime_s": round(time.time() - service.started, 1),
        "pid": served["pid"],
        "ready": service.readiness_problem() is None,
        "serves": [k for k in ("gateway", "query_router", "candidate_model") if k in served
                   or (k == "gateway" and getattr(request.app.state, "gateway", None) is not None)],
        # the candidate-scoring model, only where this process serves one
        "model": None if r is None else {
            "version": r.served.version, "path": r.served.path, "sha256": r.served.sha256,
            "loaded_at": r.served.loaded_at, "calibrated": r.served.calibrator is not None,
            "size_bytes": r.served.model.size_bytes(),
        },
        "query_router": served.get("query_router"),
        "database": (safe_url(service.settings.database_url) if service.settings.database_url
                     else str(service.settings.database_path)),
        "auth": bool(service.settings.auth_token),
    }
