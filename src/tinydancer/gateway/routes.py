"""The gateway's routes: ``POST /v1/chat/completions`` and ``GET /v1/models`` (OpenAI's shapes).

The chat handler reads the body itself (no pydantic model): the body is forwarded as it came,
fields we do not know included, with only ``model`` replaced and our ``tinydancer`` field taken
out.  Credentials were checked before the body was read (:mod:`tinydancer.server.guards`:
``/v1/*`` needs a client key when keys are set).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route

from .budgets import BudgetExceeded, call_estimate
from .forwarding import forward, openai_error, until_disconnect
from .passthrough import PASSED_THROUGH, passthrough
from .request_body import parse_body
from .selection import CallOptions, ModelSpec, RequestError, parse_model, prompt_text
from .state import Gateway

router = APIRouter(tags=["gateway"])

_CHAT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"], "additionalProperties": True,
    "properties": {
        "model": {"type": "string", "description": "an upstream's name, 'tinydancer', or router-<name>-<threshold>"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "tinydancer": {"type": "object", "description": "models, max_cost, strong_share, cost_weight, quality_bar"},
    }}}}}}


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions: OpenAI chat completions, routed to an upstream LLM."""
    started = time.perf_counter()
    gw = gateway_of(request)
    try:
        body = parse_body(await request.body(), gw.config.max_json_depth, gw.config.max_json_containers)
        spec = parse_model(body.get("model"), gw.config)
        options = CallOptions.parse(body.pop("tinydancer", None))
        text = prompt_text(body)[: gw.config.max_routed_chars]
        session = session_of(request, gw.config.max_session_id_chars)
        key_name: str | None = request.scope.get("state", {}).get("key_name")
        gw.spend.check(key_name)  # a key past its budget is refused before its prompt is embedded
    except RequestError as exc:
        return openai_error(exc.status, str(exc), exc.code, exc.param)
    except BudgetExceeded as exc:
        return over_budget(exc)
    trace_parent = gw.tracer.parent(request.headers) if gw.tracer is not None else None
    # a client that hangs up while its prompt waits to be embedded is gone before the upstream is called
    work = _answer(gw, started, spec, options, body, text, session, key_name, trace_parent)
    return await until_disconnect(work, request.receive)


def over_budget(exc: BudgetExceeded) -> Response:
    return openai_error(429, str(exc), "budget_exceeded", kind="insufficient_quota",
                        headers={"Retry-After": str(exc.retry_after_s)})


async def _answer(gw: Gateway, started: float, spec: ModelSpec, options: CallOptions, body: dict[str, Any], text: str,
                  session: str | None, key_name: str | None, trace_parent: dict[str, str] | None) -> Response:
    try:
        plan = await gw.plan(spec, options, body, text, session)
    except RequestError as exc:
        return openai_error(exc.status, str(exc), exc.code, exc.param)
    plan.overhead_s = time.perf_counter() - started
    plan.key_name, plan.model, plan.trace_parent = key_name, body["model"], trace_parent
    plan.started_ns = time.time_ns() - int(plan.overhead_s * 1e9)
    if gw.spend.budget_of(key_name) is not None and plan.order:
        try:  # held against the key's budget until the call is logged
            gw.spend.admit(plan.request_id, key_name, call_estimate(body, plan.order[0].config))
        except BudgetExceeded as exc:
            return over_budget(exc)
    gw.metrics.overhead.observe(plan.overhead_s, "routed" if plan.routed else "named")
    return await forward(gw, plan, body, body.get("stream") is True)


def session_of(request: Request, limit: int) -> str | None:
    """``x-session-id``, refused past ``limit`` characters: each one is kept for the session's TTL."""
    session = request.headers.get("x-session-id")
    if session is not None and len(session) > limit:
        raise RequestError(400, f"x-session-id is over {limit} characters; send a short id (a UUID, or a hash of yours)",
                           "invalid_session_id", "x-session-id")
    return session


@router.get("/admin/upstreams", summary="Each upstream's circuit breaker and slots")
async def upstreams(request: Request) -> Any:
    return gateway_of(request).upstream_status()


@router.post("/admin/upstreams/reset", summary="Close every upstream's circuit breaker")
async def upstreams_reset(request: Request) -> Any:
    gw = gateway_of(request)
    for up in gw.upstreams.values():
        up.breaker.reset()
    return gw.upstream_status()


@router.get("/admin/keys", summary="Each client key's spend today (UTC) and daily budget, by name")
async def keys(request: Request) -> Any:
    return gateway_of(request).spend.status()


@router.get("/v1/models", summary="The routed aliases and the upstreams")
async def models(request: Request) -> Any:
    return {"object": "list", "data": gateway_of(request).models()}


# A plain Starlette route: FastAPI's dependency solving and response handling cost ~100 µs a call
# here, and this handler reads and answers its body itself anyway.  OpenAI's own specification
# documents the body; the service's /openapi.json lists it through the stub below.
router.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], include_in_schema=True,
                     summary="OpenAI chat completions, routed to an upstream LLM", openapi_extra=_CHAT_BODY)
ROUTES = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
          *(Route(f"/v1/{path}", passthrough, methods=["POST"]) for path in PASSED_THROUGH), *router.routes]
