"""POST /v1/systemone: the external-classifier protocol of LiteLLM's complexity router.

Read from the installed ``litellm`` 1.108.7 (``router_strategy/complexity_router/jev_classifier.py``):
the router posts ``{"state": text, "model": str, "questions": {"tier": {"type": "choice",
"instructions": str, "criteria": {tier: description}}}}`` to ``{api_base}/v1/systemone`` and reads
``{"answers": {"tier": {"type": "choice", "choice": tier, "probabilities": {tier: p}, "confidence":
p}}}``.  A LiteLLM proxy whose ``complexity_router_config`` names this service as its classifier
(``classifier_type: oss_classifier``) routes with the query router, no LiteLLM code changed.

How tiers are chosen: the tiers are taken in the order the request lists them, least to most
demanding (LiteLLM sends its tiers in severity order).  A query's difficulty is its strong score
(two-model routers) or one minus the cheapest model's predicted quality (more models), placed
among the last requests this route saw (the live score distribution: ``SYSTEMONE_WINDOW``
requests; until 50 were seen, the router's stored distribution of typical queries).  The lower
half of the tiers share the easiest ``1 − s`` of that distribution and the upper half the hardest
``s``, where ``s`` is the served strong share (``--strong-share``; otherwise the share of live
requests at or above the router's threshold, or one half for an N-model router), so the
operating point applies to the traffic the classifier actually sees: with a tier map that sends
the upper tiers to the strong model, about ``s`` of the calls go there.  Within a half, tiers
are equal slices.  The probabilities fall off with the distance from the difficulty to each
slice's centre (a Gaussian of the slice's width), sum to 1, and the confidence is the chosen
tier's probability.  The instructions and criteria texts are not read: the router has learned
difficulty from outcomes, not from a rubric.

Each request is a decision like ``/v1/route/query``'s (the router's model at the served
operating point), logged with its embedding; the answer carries its ``request_id`` so feedback
can name it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal, Sequence

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from pydantic import ConfigDict, Field

from ...llm import QueryRouter, query_key
from ..deps import service_of
from ..storage import DecisionRow, decision_tuples, new_request_id
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


#: live requests needed before the tiers are cut from them rather than from the stored distribution
MIN_LIVE = 50


def raw_score(router_: QueryRouter, outputs: np.ndarray) -> float:
    """The number difficulty is read from: the strong score (pairs), else 1 − the cheapest model's quality."""
    if router_.is_pair:
        return float(outputs[2])
    return float(np.clip(1.0 - outputs[router_.weak], 0.0, 1.0))


def difficulty(router_: QueryRouter, outputs: np.ndarray, live: Sequence[float] = ()) -> float:
    """Where a query sits, 0 (easiest) to 1 (hardest): among ``live`` scores when there are
    enough of them, else among the router's stored typical queries."""
    score = raw_score(router_, outputs)
    if len(live) >= MIN_LIVE:
        arr = np.fromiter(live, dtype=np.float64)
        return float((np.sum(arr < score) + 0.5 * np.sum(arr == score)) / len(arr))
    if router_.is_pair and router_.score_quantiles is not None:
        grid = np.linspace(0.0, 1.0, len(router_.score_quantiles))
        return float(np.interp(score, router_.score_quantiles, grid))
    return score


def strong_share(router_: QueryRouter, served: float | None, live: Sequence[float]) -> float:
    """The share of requests the upper tiers should take (see the module docstring)."""
    if served is not None:
        return float(served)
    if router_.is_pair and router_.threshold is not None and len(live) >= MIN_LIVE:
        return float(np.mean(np.fromiter(live, dtype=np.float64) >= router_.threshold))
    if router_.is_pair and router_.threshold is not None and router_.score_quantiles is not None:
        grid = np.linspace(0.0, 1.0, len(router_.score_quantiles))
        return float(1.0 - np.interp(router_.threshold, router_.score_quantiles, grid))
    return 0.5


def tier_answer(level: float, tiers: list[str], share: float = 0.5) -> dict[str, Any]:
    """Tier probabilities for a difficulty ``level``: the lower half of ``tiers`` cut from
    ``[0, 1 − share]``, the upper half from ``[1 − share, 1]``."""
    n = len(tiers)
    if n == 1:
        return {"type": "choice", "choice": tiers[0], "probabilities": {tiers[0]: 1.0}, "confidence": 1.0}
    split = float(np.clip(1.0 - share, 1e-3, 1.0 - 1e-3))
    lower = n // 2
    edges = np.concatenate([np.linspace(0.0, split, lower + 1), np.linspace(split, 1.0, n - lower + 1)[1:]])
    centres = (edges[:-1] + edges[1:]) / 2
    widths = np.diff(edges)
    weights = np.exp(-0.5 * ((level - centres) / widths) ** 2)
    if not np.isfinite(weights).all() or weights.sum() <= 0:  # far outside every slice: the nearest one
        weights = (np.arange(n) == int(np.argmin(np.abs(level - centres)))).astype(float)
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
    started = time.perf_counter()
    text = request_text(body.state)
    emb = (await asyncio.to_thread(qr.embedder.embed, [text]))[0]
    outputs = qr.outputs_for(emb, text)
    live = service.systemone_scores
    level = difficulty(qr, outputs, live)
    share = strong_share(qr, service.settings.query_strong_share, live)
    live.append(raw_score(qr, outputs))
    answers = {qid: tier_answer(level, list(q.criteria), share) for qid, q in body.questions.items()}
    decision = qr.route(emb, text=text)
    latency = (time.perf_counter() - started) * 1e6
    request_id = new_request_id()
    service.writer.submit(decision_tuples(request_id, "query", str(qr.info.get("trained_at", "")),
                                          [DecisionRow(decision.model, 0, emb, decision.predicted_quality,
                                                       decision.strong_score, decision.model != qr.models[qr.strong])],
                                          latency, query_key(text)))
    service.metrics.requests.labels("/v1/systemone").inc()
    return {"model": f"tinydancer/{qr.info.get('trained_at', 'router')}", "answers": answers, "classifier_provider": "tinydancer",
            "usage": {"input_tokens": 0, "output_tokens": 0}, "request_id": request_id, "router_model": decision.model}
