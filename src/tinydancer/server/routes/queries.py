"""POST /v1/route/query: which model tier a query (text or embedding) should go to."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request

from ..._validation import as_float_array
from ...llm import QueryRouter, RouteDecision, query_key
from ..deps import service_of
from ..schemas import QueryIn, QueryOut, unprocessable
from ..storage import DecisionRow, decision_tuples, new_request_id

router = APIRouter(tags=["routing"])


def explore(router_: QueryRouter, embedding: np.ndarray, text: str | None, chosen: RouteDecision, index: int) -> RouteDecision:
    """The decision for model ``index`` instead of the router's choice, which becomes the runner-up."""
    quality = router_.outputs_for(embedding, text)[: len(router_.models)].tolist()
    return RouteDecision(model=router_.models[index], predicted_quality=quality[index], cost=float(router_.costs[index]),
                         runner_up=chosen.model, runner_up_quality=chosen.predicted_quality, runner_up_cost=chosen.cost,
                         strong_score=chosen.strong_score)


@router.post("/v1/route/query", response_model=QueryOut, summary="Pick the model tier for a query")
async def route_query(body: QueryIn, request: Request) -> Any:
    started = time.perf_counter()
    service = service_of(request)
    qr = service.query_router
    if qr is None:
        raise HTTPException(503, "no query router loaded: start the service with --query-router DIR")
    if (body.query is None) == (body.embedding is None):
        raise unprocessable("give exactly one of 'query' (text) or 'embedding'")
    if body.query is not None:
        if not body.query.strip():
            raise unprocessable("the query is blank", ("body", "query"))
        if service.query_embedder_problem is not None:
            raise HTTPException(503, service.query_embedder_problem)
        emb = (await asyncio.to_thread(qr.embedder.embed, [body.query]))[0]
    else:
        emb = as_float_array(body.embedding, "embedding", ndim=1)
    point = qr.operating_point(strong_share=body.strong_share, cost_weight=body.cost_weight, quality_bar=body.quality_bar)
    decision = qr.route(emb, text=body.query, point=point)
    share = service.settings.query_exploration
    explored = share > 0 and service.rng.random() < share
    if explored:
        decision = explore(qr, emb, body.query, decision, int(service.rng.integers(len(qr.models))))
        service.metrics.explorations.inc()
    latency = (time.perf_counter() - started) * 1e6
    request_id = new_request_id()
    service.writer.submit(decision_tuples(request_id, "query", str(qr.info.get("trained_at", "")),
                                          [DecisionRow(decision.model, 0, emb, decision.predicted_quality,
                                                       decision.strong_score, decision.model != qr.models[qr.strong])],
                                          latency, None if body.query is None else query_key(body.query)))
    service.metrics.requests.labels("/v1/route/query").inc()
    service.metrics.latency.observe_many([latency * 1e-6], "/v1/route/query")
    return {"request_id": request_id, **decision.to_dict(), "latency_us": latency, "operating_point": point.to_dict(),
            "explored": explored}
