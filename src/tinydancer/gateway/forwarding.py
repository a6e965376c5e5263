"""Forwarding one chat call: try the planned upstreams in order, answer, and log every attempt.

A 429, a 5xx, a timeout, a refused connection, or a stream that breaks before its first chunk
moves the call to the next upstream of the plan (at most ``max_attempts``), skipping upstreams
whose circuit breaker is open.  Once bytes have reached the client there is no going back: a
stream that breaks then ends with an error event the OpenAI SDK raises, never a silent cut.
A client that hangs up cancels the upstream call (the connection is closed under it).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..server.storage import CallRecord
from .sse import UsageTap, error_event, usage_of
from .state import Gateway, Plan
from .upstream import Upstream, UpstreamFailure

__all__ = ["forward", "openai_error"]


def openai_error(status: int, message: str, code: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape (the SDK raises the matching exception from it)."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status,
                        headers=headers)


class _Attempts:
    """The bookkeeping of one call's attempts."""

    def __init__(self, gw: Gateway, plan: Plan, stream: bool) -> None:
        self.gw = gw
        self.plan = plan
        self.stream = stream
        self.calls: list[CallRecord] = []
        self.last: UpstreamFailure | None = None
        self.skipped: list[str] = []

    def candidates(self) -> Iterator[Upstream]:
        """The upstreams to try, in order, at most max_attempts, breakers permitting.  Lazily: a
        half-open breaker's one probe is taken only when its upstream is really tried (taken and
        unused, it would keep that upstream shut)."""
        tried = 0
        for up in self.plan.order:
            if tried == self.gw.config.max_attempts:
                return
            if up.breaker.allow():
                tried += 1
                yield up
            else:
                self.skipped.append(up.name)

    def add(self, up: Upstream, status: str, started: float, *, http_status: int | None = None,
            usage: tuple[int, int] | None = None, ttft: float | None = None) -> CallRecord:
        now = time.perf_counter()
        cost = None if usage is None else up.config.cost(*usage)
        record = CallRecord(self.plan.request_id, len(self.calls), up.name, up.config.plays, status, http_status,
                            self.stream, None if usage is None else usage[0], None if usage is None else usage[1], cost,
                            None if ttft is None else (ttft - started) * 1e3, (now - started) * 1e3, time.time())
        self.calls.append(record)
        if ttft is not None:
            self.gw.metrics.ttft.observe(ttft - started, up.name)
        return record

    def failed(self, up: Upstream, failure: UpstreamFailure, started: float) -> None:
        self.last = failure
        self.add(up, failure.kind, started, http_status=failure.status)
        if failure.retryable:
            up.breaker.record_failure()
            self.gw.metrics.fallbacks.labels(up.name).inc()

    def headers(self, up: Upstream) -> dict[str, str]:
        h = {"x-tinydancer-model": up.name, "x-tinydancer-decision-id": self.plan.request_id,
             "x-tinydancer-attempts": str(len(self.calls))}
        quality = self.plan.quality.get(up.config.plays)
        if quality is not None:
            h["x-tinydancer-predicted-quality"] = f"{quality:.4f}"
        return h

    def refused(self, up: Upstream, f: UpstreamFailure) -> JSONResponse:
        """The upstream refused the request itself (a 4xx other than 429): the client hears why, scrubbed.
        A 401 or 403 is about the gateway's provider key, not the client: a 502 that says so."""
        self.gw.record(self.plan, self.calls, None)
        headers = self.headers(up)
        if f.status in (401, 403):
            return openai_error(502, f"upstream {up.name!r} refused the gateway's credentials ({f.status}); the operator "
                                f"should check {up.config.api_key_env or 'its api_key_env'}", "upstream_auth",
                                kind="upstream_error", headers=headers)
        return openai_error(f.status or 400, str(f), "upstream_rejected", headers=headers)

    def give_up(self) -> JSONResponse:
        """All attempts failed (or none could be made): the last failure, scrubbed."""
        self.gw.record(self.plan, self.calls, None)
        if self.last is None:
            return openai_error(503, f"every candidate upstream's circuit breaker is open ({', '.join(self.skipped)}); "
                                "retry later", "upstreams_unavailable", kind="server_error", headers={"Retry-After": "5"})
        f = self.last
        status = 429 if f.kind == "http_429" else 504 if f.kind == "timeout" else 502
        tried = ", ".join(c.upstream for c in self.calls)
        return openai_error(status, f"{f} (tried {tried})", f.kind, kind="upstream_error",
                            headers={"x-tinydancer-decision-id": self.plan.request_id})


def _body_for(body: dict[str, Any], up: Upstream, stream: bool, client_usage: bool) -> bytes:
    out = dict(body)
    out["model"] = up.config.model
    if stream and not client_usage:  # the only way to learn a stream's cost
        out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return json.dumps(out, separators=(",", ":")).encode()


async def forward(gw: Gateway, plan: Plan, body: dict[str, Any], stream: bool,
                  receive: Callable[[], Awaitable[dict]]) -> Response:
    attempts = _Attempts(gw, plan, stream)
    if stream:
        return await _open_stream(gw, attempts, body)
    call = asyncio.ensure_future(_complete(gw, attempts, body))
    watch = asyncio.ensure_future(_cancel_on_disconnect(receive, call))
    try:
        return await call
    except asyncio.CancelledError:
        if not watch.done():
            raise  # not the caller leaving: the server is shutting down
        return Response(status_code=499)  # the caller left; nobody reads this
    finally:
        watch.cancel()


async def _cancel_on_disconnect(receive: Callable[[], Awaitable[dict]], call: asyncio.Future[Response]) -> None:
    """Cancel ``call`` when the client hangs up: closing the upstream connection stops the upstream's work."""
    while (await receive())["type"] != "http.disconnect":
        pass
    call.cancel()


async def _complete(gw: Gateway, attempts: _Attempts, body: dict[str, Any]) -> Response:
    for up in attempts.candidates():
        started = time.perf_counter()
        try:
            resp, payload = await up.complete(_body_for(body, up, False, True))
        except UpstreamFailure as f:
            attempts.failed(up, f, started)
            if not f.retryable:
                return attempts.refused(up, f)
            continue
        except asyncio.CancelledError:
            attempts.add(up, "client_cancelled", started)
            gw.record(attempts.plan, attempts.calls, None)
            raise
        up.breaker.record_success()
        try:
            usage = usage_of(json.loads(payload))
        except ValueError:
            usage = None
        served = attempts.add(up, "ok", started, http_status=resp.status, usage=usage, ttft=time.perf_counter())
        gw.sessions.put(attempts.plan.session, up.name)
        gw.record(attempts.plan, attempts.calls, served)
        return Response(payload, status_code=resp.status, media_type=resp.headers.get("Content-Type", "application/json"),
                        headers=attempts.headers(up))
    return attempts.give_up()


async def _open_stream(gw: Gateway, attempts: _Attempts, body: dict[str, Any]) -> Response:
    client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    for up in attempts.candidates():
        started = time.perf_counter()
        try:
            resp = await up.open(_body_for(body, up, True, client_usage), stream=True)
        except UpstreamFailure as f:
            attempts.failed(up, f, started)
            if not f.retryable:
                return attempts.refused(up, f)
            continue
        try:
            first = await resp.content.readany()
            if not first:
                raise aiohttp.ClientPayloadError("the stream ended before its first chunk")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            resp.close()
            kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "broken"
            attempts.failed(up, UpstreamFailure(kind, f"upstream {up.name!r} broke off before its first chunk"), started)
            continue
        except asyncio.CancelledError:
            resp.close()
            attempts.add(up, "client_cancelled", started)
            gw.record(attempts.plan, attempts.calls, None)
            raise
        ttft = time.perf_counter()
        gw.sessions.put(attempts.plan.session, up.name)
        return StreamingResponse(_relay(gw, attempts, up, resp, first, started, ttft, client_usage),
                                 media_type="text/event-stream",
                                 headers={**attempts.headers(up), "Cache-Control": "no-cache"})
    return attempts.give_up()


async def _relay(gw: Gateway, attempts: _Attempts, up: Upstream, resp: aiohttp.ClientResponse, first: bytes,
                 started: float, ttft: float, client_usage: bool) -> AsyncIterator[bytes]:
    tap = UsageTap(keep_usage_chunk=client_usage)
    status = "ok"
    try:
        out = tap.feed(first)
        if out:
            yield out
        async for chunk in resp.content.iter_any():
            out = tap.feed(chunk)
            if out:
                yield out
        rest = tap.tail()
        if rest:
            yield rest
        if not tap.done:
            status = "broken"
            yield error_event(f"upstream {up.name!r} ended the stream without [DONE]; the answer may be cut short", "broken")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        status = "timeout" if isinstance(exc, asyncio.TimeoutError) else "broken"
        yield error_event(f"upstream {up.name!r} broke off the stream ({type(exc).__name__}); the answer is incomplete",
                          status)
    except (asyncio.CancelledError, GeneratorExit):
        status = "client_cancelled"
        raise
    finally:
        if status == "ok":
            resp.release()  # read to the end: the connection goes back to the pool
        else:
            resp.close()
        if status == "ok":
            up.breaker.record_success()
        elif status != "client_cancelled":
            up.breaker.record_failure()
        served = attempts.add(up, status, started, http_status=resp.status, usage=tap.usage, ttft=ttft)
        gw.record(attempts.plan, attempts.calls, served)
