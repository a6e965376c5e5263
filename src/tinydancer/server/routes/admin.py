"""Admin routes: reload, live thresholds, the circuit breaker, statistics.

The admin token and the JSON-only rule are enforced before routing, by
:class:`~tinydancer.server.guards.AccessGuard`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from ...candidates import Router
from ...errors import TinyDancerError
from ..deps import ready, ready_router, service_of
from ..schemas import BreakerOut, ConfigIn, ConfigOut, ReloadIn, ReloadOut, unprocessable
from ..storage import StorageUnavailable

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload", response_model=ReloadOut, responses={422: {"description": "bad model file"}})
async def reload(request: Request, body: ReloadIn | None = None) -> Any:
    service = service_of(request)
    try:
        served = await asyncio.to_thread(service.reload, body.model_path if body else None)
    except TinyDancerError as exc:
        raise unprocessable(f"reload failed, the previous model keeps serving: {exc}") from None
    return {"status": "reloaded", "model_version": served.version, "sha256": served.sha256, "model_path": served.path}


def _config_out(router_: Router) -> dict[str, Any]:
    c = router_.config
    return {"confidence_threshold": c.confidence_threshold, "max_uncertainty": c.max_uncertainty,
            "enable_circuit_breaker": c.enable_circuit_breaker, "circuit_breaker_threshold": c.circuit_breaker_threshold,
            "enable_quantization": c.enable_quantization, "fallback_on_open": c.fallback_on_open}


@router.get("/config", response_model=ConfigOut)
async def get_config(router_: Router = Depends(ready_router)) -> Any:
    return _config_out(router_)


@router.put("/config", response_model=ConfigOut)
async def put_config(body: ConfigIn, request: Request) -> Any:
    # readiness is checked after the body is validated: a malformed body is a 422 either way
    router_ = ready(service_of(request))
    router_.set_thresholds(body.confidence_threshold, body.max_uncertainty)
    return _config_out(router_)


@router.get("/circuit-breaker", response_model=BreakerOut)
async def breaker(router_: Router = Depends(ready_router)) -> Any:
    return {"enabled": False} if router_.breaker is None else {"enabled": True, **router_.breaker.status()}


@router.post("/circuit-breaker/reset", response_model=BreakerOut)
async def breaker_reset(router_: Router = Depends(ready_router)) -> Any:
    if router_.breaker is None:
        return {"enabled": False}
    router_.breaker.reset()
    return {"enabled": True, **router_.breaker.status()}


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    service = service_of(request)
    try:
        await service.writer.aflush()  # the writer belongs to the loop
        return await asyncio.to_thread(service.storage.statistics)  # a scan of the whole log: off the loop
    except (StorageUnavailable, *service.storage.errors) as exc:
        raise HTTPException(503, f"the decision log cannot be read now ({exc}); retry later",
                            headers={"Retry-After": "5"}) from None
