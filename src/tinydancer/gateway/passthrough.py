"""``/v1/embeddings``, ``/v1/completions`` and ``/v1/responses``: passed through to a named upstream.

Routing is for chat calls (the router reads a conversation's last user turn); these endpoints
take ``model`` = an upstream's name and reach it with the same guards as a chat call: the body
checked at the door, the upstream's slots, breaker, answer-size limit and timeouts, errors
scrubbed of provider keys.  They are counted in ``tiny_dancer_gateway_calls`` but not logged as
decisions: nothing was decided.  No fallback: the client chose the upstream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .forwarding import openai_error, until_disconnect
from .request_body import parse_body
from .selection import RequestError
from .sse import error_event
from .state import Gateway
from .upstream import Upstream, UpstreamFailure

__all__ = ["PASSED_THROUGH", "passthrough"]

#: the OpenAI endpoints passed through, besides the routed chat completions
PASSED_THROUGH = ("embeddings", "completions", "responses")


async def passthrough(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    path = request.url.path.removeprefix("/v1/")
    try:
        body = parse_body(await request.body(), gw.config.max_json_depth, gw.config.max_json_containers)
        up = _named(gw, body.get("model"), path)
    except RequestError as exc:
        return openai_error(exc.status, str(exc), exc.code, exc.param)
    return await until_disconnect(_call(gw, up, path, body), request.receive)


def _named(gw: Gateway, model: Any, path: str) -> Upstream:
    names = ", ".join(gw.upstreams)
    if isinstance(model, str) and model in gw.upstreams:
        return gw.upstreams[model]
    raise RequestError(400 if model in (None, "", "tinydancer") or not isinstance(model, str) else 404,
                       f"/v1/{path} is passed through, not routed: set 'model' to an upstream's name ({names})",
                       "model_not_found" if isinstance(model, str) and model else "invalid_model", "model")


async def _call(gw: Gateway, up: Upstream, path: str, body: dict[str, Any]) -> Response:
    if not up.breaker.allow():
        return openai_error(503, f"upstream {up.name!r} is failing (circuit breaker open); retry later",
                            "upstreams_unavailable", kind="server_error", headers={"Retry-After": "5"})
    stream = body.get("stream") is True
    out = json.dumps({**body, "model": up.config.model}, separators=(",", ":"), allow_nan=False).encode()
    try:
        resp = await up.open(out, stream, path)
    except UpstreamFailure as f:
        return _failed(gw, up, f)
    except asyncio.CancelledError:
        gw.metrics.calls.labels(up.name, "client_cancelled").inc()
        up.breaker.release()
        raise
    if stream:
        return StreamingResponse(_relay(gw, up, resp), status_code=resp.status, media_type="text/event-stream",
                                 headers={"x-tinydancer-model": up.name, "Cache-Control": "no-cache"})
    try:
        payload = await up.read(resp)
    except asyncio.CancelledError:
        up.breaker.release()
        raise
    except UpstreamFailure as f:
        return _failed(gw, up, f)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "broken"
        return _failed(gw, up, UpstreamFailure(kind, f"upstream {up.name!r} broke off its answer"))
    finally:
        resp.release()
        up.release()
    up.breaker.record_success()
    gw.metrics.calls.labels(up.name, "ok").inc()
    # the upstream's own Content-Type is not copied: a byte Starlette cannot encode made a 500 of an answer
    return Response(payload, status_code=resp.status, media_type="application/json", headers={"x-tinydancer-model": up.name})


def _failed(gw: Gateway, up: Upstream, f: UpstreamFailure) -> Response:
    gw.metrics.calls.labels(up.name, f.kind).inc()
    if f.retryable and f.its_fault:
        up.breaker.record_failure()
    else:
        up.breaker.release()
    headers = {"x-tinydancer-model": up.name}
    if f.kind == "client_error" and f.status in (401, 403):
        return openai_error(502, f"upstream {up.name!r} refused the gateway's credentials ({f.status})", "upstream_auth",
                            kind="upstream_error", headers=headers)
    if f.kind == "client_error":
        return openai_error(f.status or 400, str(f), "upstream_rejected", headers=headers)
    status = {"busy": 503, "http_429": 429, "timeout": 504}.get(f.kind, 502)
    if f.kind == "busy":
        headers["Retry-After"] = "1"
    return openai_error(status, str(f), f.kind, kind="upstream_error", headers=headers)


async def _relay(gw: Gateway, up: Upstream, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The upstream's stream as it comes (bounded by max_response_bytes); a break ends it with an error event."""
    status = "ok"
    try:
        async for chunk in up.body(resp):
            yield chunk
    except UpstreamFailure as f:
        status = f.kind
        yield error_event(f"{f}; the answer is incomplete", f.kind)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        status = "timeout" if isinstance(exc, asyncio.TimeoutError) else "broken"
        yield error_event(f"upstream {up.name!r} broke off the stream; the answer is incomplete", status)
    except (asyncio.CancelledError, GeneratorExit):
        status = "client_cancelled"
        raise
    finally:
        if status == "ok":
            resp.release()
            up.breaker.record_success()
        else:
            resp.close()
            if status == "client_cancelled":
                up.breaker.release()
            else:
                up.breaker.record_failure()
        up.release()
        gw.metrics.calls.labels(up.name, status).inc()
