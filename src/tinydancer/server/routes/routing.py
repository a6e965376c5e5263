"""POST /v1/route: score candidates, log the decision with the features the model saw."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json

from ...candidates import RoutingRequest, RoutingResponse
from ..deps import ready, service_of
from ..schemas import HTTPValidationErrorOut, RouteOut
from ..state import Service
from ..storage import decision_record, new_request_id
from ..wire import RouteBody, decode_route_body

router = APIRouter(tags=["routing"])


def _decode(raw: bytes) -> RouteBody:
    """Decode a /v1/route body (see :mod:`tinydancer.server.wire`); schema errors become the declared 422 shape."""
    try:
        return decode_route_body(raw)
    except PydanticValidationError as exc:
        raise HTTPException(422, [{"loc": ["body", *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                                  for e in exc.errors(include_input=False, include_context=False)]) from None


#: bodies larger than this are decoded and scored in a worker thread, so that one big request
#: cannot stall /health and every other request (a typical 10 × 384-d body is ~41 KB and stays
#: on the loop, where a thread handoff would cost more than the work)
OFFLOAD_BYTES = 256 * 1024


def _score(raw: bytes, service: Service) -> tuple[RoutingRequest, RoutingResponse]:
    body = _decode(raw)
    router_ = ready(service)
    req = RoutingRequest.from_arrays(*body)  # one batch conversion and check, no object per candidate
    return req, router_.route(req)


@router.post(
    "/v1/route",
    response_model=RouteOut,
    summary="Score candidates for a query",
    # the body is read raw and parsed by simdjson or pydantic's Rust JSON parser (5x faster than
    # json.loads for 40 KB of floats); the schema is still declared for clients and schemathesis
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RouteIn"}}}}},
    responses={422: {"model": HTTPValidationErrorOut}},
)
async def route(request: Request) -> Any:
    started = time.perf_counter()
    raw = await request.body()
    service = service_of(request)
    if len(raw) > OFFLOAD_BYTES:  # a large body is decoded and scored off the event loop
        req, response = await asyncio.to_thread(_score, raw, service)
    else:
        req, response = _score(raw, service)
    request_id = new_request_id()
    ids, conf, light, unc, order = response.columns()
    # log exactly what the model saw (ranked), so retraining learns from the served features
    inputs = response.features[order] if response.features is not None else np.zeros((req.size, 5), np.float32)
    service.writer.submit([decision_record(request_id, "candidate", response.model_version, ids, inputs, conf, unc,
                                           light, response.inference_time_us)])
    conf_list = [None if c != c else c for c in conf.tolist()]  # NaN → null
    unc_list = unc.tolist() if unc is not None else [None] * len(ids)
    payload = {
        "request_id": request_id,
        "decisions": [{"candidate_id": a, "confidence": b, "use_lightweight": c, "uncertainty": d}
                      for a, b, c, d in zip(ids, conf_list, light.tolist(), unc_list)],
        "inference_time_us": response.inference_time_us,
        "candidates_processed": response.candidates_processed,
        "feature_time_us": response.feature_time_us,
        "model_version": response.model_version,
        "calibrated": response.calibrated,
        "fallback": response.fallback,
        "fallback_reason": response.fallback_reason,
    }
    service.metrics.route_done(len(ids), int(light.sum()), response.fallback, response.inference_time_us * 1e-6,
                               time.perf_counter() - started, conf, unc)
    return Response(to_json(payload), media_type="application/json")
