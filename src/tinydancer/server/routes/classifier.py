"""POST /v1/systemone: the external-classifier protocol of LiteLLM's complexity router.

Read from the installed ``litellm`` 1.108.7 (``router_strategy/complexity_router/jev_classifier.py``):
the router posts ``{"state": text, "model": str, "questions": {"tier": {"type": "choice",
"instructions": str, "criteria": {tier: description}}}}`` to ``{api_base}/v1/systemone`` and reads
``{"answers": {"tier": {"type": "choice", "choice": tier, "probabilities": {tier: p}, "confidence":
p}}}``.  A LiteLLM proxy whose ``complexity_router_config`` names this service as its classifier
(``classifier_type: oss_classifier``) routes with the query router, no LiteLLM code changed.

How tiers are chosen: the tiers are taken in the order the request lists them, least to most
demanding (LiteLLM sends its tiers in severity order).  The query's difficulty is its place among
typical queries: for a two-model router, the percentile of its strong score in the router's stored
score distribution; for more models, one minus the cheapest model's predicted quality.  Each tier
covers an equal slice of that scale; the probabilities fall off with the distance from the
difficulty to each slice's centre (a Gaussian of one slice's width), sum to 1, and the confidence
is the chosen tier's probability.  The instructions and criteria texts are not read: the router
has learned difficulty from outcomes, not from a rubric.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from pydantic import ConfigDict, Field

from ...llm import QueryRouter
from ..deps import service_of
from ..wire import Strict

router = APIRouter(tags=["routing"])


class ChoiceQuestion(Strict):
    # LiteLLM's protocol, not ours: fields a later LiteLLM adds are ignored rather than refused
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore", strict=True)

    type: Literal["choice"] = "choice"
    instructions: str = Field("", max_length=100_000)
    criteria: dict[str, str] = Field(min_length=1, max_length=32)


class SystemOneIn(Strict):
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore", strict=True)

    state: str = Field(min_length=1, max_length=200_000)
    model: str = Field("", max_length=256)
    questions: dict[str, ChoiceQuestion] = Field(min_length=1, max_length=8)


def difficulty(router_: QueryRouter, outputs: np.ndarray) -> float:
    """Where a query sits among typical ones, 0 (easiest) to 1 (hardest)."""
    if router_.is_pair and router_.score_quantiles is not None:
        grid = np.linspace(0.0, 1.0, len(router_.score_quantiles))
        return float(np.interp(outputs[2], router_.score_quantiles, grid))
    return float(np.clip(1.0 - outputs[router_.weak], 0.0, 1.0))


def tier_answer(level: float, tiers: list[str]) -> dict[str, Any]:
    n = len(tiers)
    centres = (np.arange(n) + 0.5) / n
    weights = np.exp(-0.5 * ((level - centres) * n) ** 2)
    probs = weights / weights.sum()
    best = int(np.argmax(probs))
    return {"type": "choice", "choice": tiers[best], "probabilities": {t: float(p) for t, p in zip(tiers, probs)},
            "confidence": float(probs[best])}


def request_text(state: str) -> str:
    """The request itself, without what LiteLLM frames it with: its complexity router ends the state
    with ``Classify this message:`` and the request (after quoted context and earlier turns), and
    ``build_jev_request`` puts a caller's system prompt before ``Request:``.  The router learned
    from requests alone, so that is what it reads."""
    for marker in ("\nClassify this message:\n", "\n\nRequest:\n"):
        _head, sep, tail = state.rpartition(marker)
        if sep and tail.strip():
            return tail
    return state


@router.post("/v1/systemone", summary="LiteLLM complexity router's external classifier: which tier a request needs")
async def systemone(body: SystemOneIn, request: Request) -> Any:
    service = service_of(request)
    qr = service.query_router
    if qr is None:
        raise HTTPException(503, "no query router loaded: start the service with --query-router DIR")
    if service.query_embedder_problem is not None:
        raise HTTPException(503, service.query_embedder_problem)
    text = request_text(body.state)
    emb = (await asyncio.to_thread(qr.embedder.embed, [text]))[0]
    level = difficulty(qr, qr.outputs_for(emb, text))
    answers = {qid: tier_answer(level, list(q.criteria)) for qid, q in body.questions.items()}
    service.metrics.requests.labels("/v1/systemone").inc()
    return {"model": f"tinydancer/{qr.info.get('trained_at', 'router')}", "answers": answers, "classifier_provider": "tinydancer",
            "usage": {"input_tokens": 0, "output_tokens": 0}}
