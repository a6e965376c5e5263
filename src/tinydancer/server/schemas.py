"""Request and response bodies of the HTTP API (``RouteIn``, the /v1/route body, is in :mod:`.wire`).

Incoming bodies are strict: unknown fields, strings for numbers and NaN are 422s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from fastapi import HTTPException
from pydantic import BaseModel, Field, create_model

from ..llm import RouteDecision
from .wire import MAX_DIM, Strict


class DecisionOut(BaseModel):
    candidate_id: str
    confidence: float | None = Field(description="null when the model produced a non-finite score")
    use_lightweight: bool
    uncertainty: float | None = Field(description="conformal p-value of the other label; null if uncalibrated")


class RouteOut(BaseModel):
    request_id: str
    decisions: list[DecisionOut]
    inference_time_us: float
    candidates_processed: int
    feature_time_us: float
    model_version: str
    calibrated: bool
    fallback: bool
    fallback_reason: str | None = None


class QueryIn(Strict):
    query: str | None = Field(None, min_length=1, max_length=100_000)
    embedding: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM)
    #: this request's operating point, when it should differ from the served one (the knob that
    #: fits the router: strong_share for two models, cost_weight or quality_bar for more)
    strong_share: float | None = Field(None, ge=0.0, le=1.0)
    cost_weight: float | None = Field(None, ge=0.0)
    quality_bar: float | None = Field(None, ge=0.0, le=1.0)


class OperatingPointOut(BaseModel):
    threshold: float | None = Field(description="two models: the strong score at and above which the strong model is called")
    cost_weight: float = Field(description="N models: decisions maximize quality − cost_weight × cost")
    quality_bar: float | None = Field(description="N models: the cheapest model predicted to reach this quality")


def _decision_fields() -> dict[str, Any]:
    """RouteDecision's fields as pydantic field definitions: the decision is declared once, there."""
    types = get_type_hints(RouteDecision)
    return {f.name: (types[f.name], ... if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(RouteDecision)}


#: the answer of POST /v1/route/query: the request id, the RouteDecision, latency and exploration
QueryOut = create_model(
    "QueryOut",
    request_id=(str, ...),
    **_decision_fields(),
    latency_us=(float, ...),
    operating_point=(OperatingPointOut, ...),
    explored=(bool, Field(False, description="sent to a model drawn at random (exploration), not the router's choice")),
)


class FeedbackIn(Strict):
    request_id: str = Field(min_length=1, max_length=64)
    success: bool
    quality: float | None = Field(None, ge=0.0, le=1.0)
    candidate_id: str | None = Field(None, min_length=1, max_length=256)
    cost: float | None = Field(None, ge=0.0)
    correction: bool = Field(False, description="replace an outcome already recorded (the old value is kept, audited)")


class FeedbackOut(BaseModel):
    status: str
    request_id: str
    target: str


class ConfigIn(Strict):
    confidence_threshold: float | None = Field(None, ge=0.0, le=1.0)
    max_uncertainty: float | None = Field(None, ge=0.0, le=1.0)


class ConfigOut(BaseModel):
    confidence_threshold: float
    max_uncertainty: float
    enable_circuit_breaker: bool
    circuit_breaker_threshold: int
    enable_quantization: bool
    fallback_on_open: bool


class ReloadIn(Strict):
    model_path: str | None = Field(None, min_length=1, max_length=4096)


class ReloadOut(BaseModel):
    status: str
    model_version: str
    sha256: str
    model_path: str


class BreakerOut(BaseModel):
    enabled: bool
    state: str | None = None
    consecutive_failures: int | None = None
    failure_threshold: int | None = None
    trips: int | None = None
    reset_timeout_s: float | None = None
    retry_in_s: float | None = None


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationErrorOut(BaseModel):
    detail: list[ErrorItem]


def unprocessable(message: str, loc: tuple[str, ...] = ("body",)) -> HTTPException:
    """A 422 in the shape the OpenAPI schema declares for 422 (a list of {loc, msg, type})."""
    return HTTPException(422, [{"loc": list(loc), "msg": message, "type": "value_error"}])
