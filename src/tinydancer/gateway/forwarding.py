"""Forwarding one chat call: try the planned upstreams in order, answer, and log every attempt.

A 429, a 5xx, a timeout, a refused connection, an answer that is too large or is no answer
(a 200 with HTML or an ``error`` object), or a stream that breaks before its first chunk moves
the call to the next upstream of the plan (at most ``max_attempts``), skipping upstreams whose
circuit breaker is open and those with no free slot (``busy``: no call made, nothing held against
them).  Once bytes have reached the client there is no going back: a stream that breaks then ends
with an error event the OpenAI SDK raises, never a silent cut.  A client that hangs up, streamed
or not, before or after the first byte, cancels the upstream call (the connection is closed
under it) and no fallback is bought for nobody.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..server.storage import CallRecord
from .budgets import call_cost
from .sse import ImpossibleUsage, UsageTap, error_event, first_event_problem, usage_of
from .state import Gateway, Plan
from .upstream import Upstream, UpstreamFailure

__all__ = ["forward", "openai_error", "until_disconnect"]

log = logging.getLogger("tinydancer.gateway")


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
        #: upstreams with no free slot: passed over, not attempted
        self.busy: list[UpstreamFailure] = []

    def candidates(self) -> Iterator[Upstream]:
        """The upstreams to try, in order, at most max_attempts calls, breakers permitting.  Lazily: a
        half-open breaker's one probe is taken only when its upstream is really tried (taken and
        unused, it would keep that upstream shut)."""
        for up in self.plan.order:
            if len(self.calls) >= self.gw.config.max_attempts:
                return
            if up.breaker.allow():
                yield up
            else:
                self.skipped.append(up.name)

    def add(self, up: Upstream, status: str, started: float, *, http_status: int | None = None,
            usage: tuple[int, int] | None = None, ttft: float | None = None) -> CallRecord:
        now = time.perf_counter()
        cost = None if usage is None else up.config.cost(*usage)
        record = CallRecord(self.plan.request_id, len(self.calls), up.name, up.config.plays, status, http_status,
                            self.stream, None if usage is None else usage[0], None if usage is None else usage[1], cost,
                            None if ttft is None else (ttft - started) * 1e3, (now - started) * 1e3, time.time(),
                            self.plan.key_name)
        self.calls.append(record)
        if ttft is not None:
            self.gw.metrics.ttft.observe(ttft - started, up.name)
        return record

    def failed(self, up: Upstream, failure: UpstreamFailure, started: float) -> None:
        if failure.kind == "busy":  # the call was never made: nothing to log or hold against the upstream
            self.busy.append(failure)
            self.gw.metrics.busy.labels(up.name).inc()
            up.breaker.release()
            return
        self.last = failure
        self.add(up, failure.kind, started, http_status=failure.status)
        if failure.retryable and failure.its_fault:
            up.breaker.record_failure()
            self.gw.metrics.fallbacks.labels(up.name).inc()
        else:  # the request itself was refused: no verdict on the upstream
            up.breaker.release()

    def cancelled(self, up: Upstream, started: float) -> None:
        """The client hung up during this attempt: logged, held against nobody."""
        up.breaker.release()
        self.add(up, "client_cancelled", started)
        self.gw.record(self.plan, self.calls, None)

    def headers(self, up: Upstream, streaming: bool = False) -> dict[str, str]:
        """The answer's headers; a stream's are sent before its attempt is logged (it ends later)."""
        h = {"x-tinydancer-model": up.name, "x-tinydancer-decision-id": self.plan.request_id,
             "x-tinydancer-attempts": str(len(self.calls) + streaming)}
        quality = self.plan.quality.get(up.config.plays)
        if quality is not None:
            h["x-tinydancer-predicted-quality"] = f"{quality:.4f}"
        if self.plan.explored and up is self.plan.order[0]:  # exploration sent it here (server/exploration.py)
            h["x-tinydancer-explored"] = "true"
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
        if self.last is None and self.busy:
            return openai_error(503, str(self.busy[-1]), "upstream_busy", kind="server_error",
                                headers={"Retry-After": "1", "x-tinydancer-decision-id": self.plan.request_id})
        if self.last is None:
            return openai_error(503, f"every candidate upstream's circuit breaker is open ({', '.join(self.skipped)}); "
                                "retry later", "upstreams_unavailable", kind="server_error", headers={"Retry-After": "5"})
        f = self.last
        status = 429 if f.kind == "http_429" else 504 if f.kind == "timeout" else 502
        tried = ", ".join(c.upstream for c in self.calls)
        return openai_error(status, f"{f} (tried {tried})", f.kind, kind="upstream_error",
                            headers={"x-tinydancer-decision-id": self.plan.request_id})


def cost_headers(cost: tuple[float, str]) -> dict[str, str]:
    """``x-tinydancer-cost`` (dollars) and ``x-tinydancer-cost-source`` (usage | estimate)."""
    return {"x-tinydancer-cost": f"{cost[0]:.10f}".rstrip("0").rstrip(".") or "0", "x-tinydancer-cost-source": cost[1]}


def _body_for(body: dict[str, Any], up: Upstream, stream: bool, client_usage: bool) -> bytes:
    out = dict(body)
    out["model"] = up.config.model
    if stream and not client_usage:  # the only way to learn a stream's cost
        out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    # the body was checked at the door (request_body): finite numbers, bounded depth
    return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()


async def forward(gw: Gateway, plan: Plan, body: dict[str, Any], stream: bool) -> Response:
    """Answer the call (run it under ``until_disconnect``: a client that hangs up cancels it)."""
    attempts = _Attempts(gw, plan, stream)
    return await (_open_stream(gw, attempts, body) if stream else _complete(gw, attempts, body))


async def until_disconnect(work: Awaitable[Response], receive: Callable[[], Awaitable[dict]]) -> Response:
    """``await work``, cancelled if the client hangs up before it returns (a 499 nobody reads)."""
    call = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_cancel_on_disconnect(receive, call))
    try:
        return await call
    except asyncio.CancelledError:
        if not watch.done():
            raise  # not the caller leaving: the server is shutting down
        return Response(status_code=499)  # the caller left; nobody reads this
    finally:
        # once a stream is answered, Starlette's StreamingResponse watches for the disconnect itself
        watch.cancel()


async def _cancel_on_disconnect(receive: Callable[[], Awaitable[dict]], call: asyncio.Future[Response]) -> None:
    """Cancel ``call`` when the client hangs up: closing the upstream connection stops the upstream's work."""
    while (await receive())["type"] != "http.disconnect":
        pass
    call.cancel()


def _usage(gw: Gateway, up: Upstream, answer: dict[str, Any]) -> tuple[int, int] | None:
    try:
        return usage_of(answer)
    except ImpossibleUsage as exc:
        _impossible_usage(gw, up, str(exc))
        return None


def _impossible_usage(gw: Gateway, up: Upstream, why: str) -> None:
    gw.metrics.unknown_usage.labels(up.name).inc()
    log.warning("upstream %s reported impossible usage (%s): the call is logged with its cost unknown", up.name, why)


async def _complete(gw: Gateway, attempts: _Attempts, body: dict[str, Any]) -> Response:
    for up in attempts.candidates():
        started = time.perf_counter()
        try:
            resp, payload, answer = await up.answer(_body_for(body, up, False, True))
        except UpstreamFailure as f:
            attempts.failed(up, f, started)
            if not f.retryable:
                return attempts.refused(up, f)
            continue
        except asyncio.CancelledError:
            attempts.cancelled(up, started)
            raise
        up.breaker.record_success()
        served = attempts.add(up, "ok", started, http_status=resp.status, usage=_usage(gw, up, answer),
                              ttft=time.perf_counter())
        gw.sessions.put(attempts.plan.session, up.name)
        attempts.plan.cost = cost = call_cost(served.cost, body, up.config)
        gw.record(attempts.plan, attempts.calls, served)
        if gw.judge is not None and attempts.plan.routed:  # judged samples: only a drawn answer is kept
            gw.judge.offer(attempts.plan.request_id, served.target, attempts.plan.text, answer, served.cost)
        # a chat completion (checked): JSON; the upstream's own Content-Type is not copied (a byte
        # Starlette cannot encode in it made a 500 of an answer already paid for)
        return Response(payload, status_code=200, media_type="application/json",
                        headers={**attempts.headers(up), **cost_headers(cost)})
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
        except asyncio.CancelledError:
            attempts.cancelled(up, started)
            raise
        chunks = up.body(resp)
        try:
            first = await anext(chunks, b"")
            if not first:
                raise UpstreamFailure("broken", f"upstream {up.name!r} ended the stream before its first chunk")
            problem = first_event_problem(first)
            if problem is not None:
                raise UpstreamFailure("invalid_answer", f"upstream {up.name!r} answered {resp.status}, but {problem}",
                                      status=resp.status)
        except (UpstreamFailure, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            _let_go(up, resp)
            f = exc if isinstance(exc, UpstreamFailure) else UpstreamFailure(
                "timeout" if isinstance(exc, asyncio.TimeoutError) else "broken",
                f"upstream {up.name!r} broke off before its first chunk")
            attempts.failed(up, f, started)
            continue
        except asyncio.CancelledError:
            _let_go(up, resp)
            attempts.cancelled(up, started)
            raise
        ttft = time.perf_counter()
        gw.sessions.put(attempts.plan.session, up.name)
        return StreamingResponse(_relay(gw, attempts, up, resp, chunks, first, started, ttft, client_usage, body),
                                 media_type="text/event-stream",
                                 headers={**attempts.headers(up, streaming=True), "Cache-Control": "no-cache"})
    return attempts.give_up()


def _let_go(up: Upstream, resp: aiohttp.ClientResponse, clean: bool = False) -> None:
    """Close (or, read to its end, pool) the upstream connection and free the call's slot.  The body's
    generator holds nothing else: closed under it, it is finalized by the loop."""
    if clean:
        resp.release()
    else:
        resp.close()
    up.release()


async def _ends_soon(chunks: AsyncIterator[bytes], grace_s: float = 1.0) -> bool:
    """Whether the upstream closes its stream within ``grace_s`` after [DONE] (it does at once, as a
    rule: the connection then goes back to the pool); what it still sends is not relayed."""
    async def drain() -> None:
        async for _ in chunks:
            pass

    try:
        await asyncio.wait_for(drain(), grace_s)
    except (asyncio.TimeoutError, aiohttp.ClientError, UpstreamFailure):
        return False
    return True


async def _relay(gw: Gateway, attempts: _Attempts, up: Upstream, resp: aiohttp.ClientResponse,
                 chunks: AsyncIterator[bytes], first: bytes, started: float, ttft: float,
                 client_usage: bool, body: dict[str, Any]) -> AsyncIterator[bytes]:
    def stamp(usage: tuple[int, int] | None) -> dict[str, Any]:  # the cost, in the usage chunk the client asked for
        dollars, source = call_cost(None if usage is None else up.config.cost(*usage), body, up.config)
        return {"tinydancer_cost": round(dollars, 10), "tinydancer_cost_source": source}

    tap = UsageTap(keep_usage_chunk=client_usage, stamp=stamp if client_usage else None)
    # judged samples: the answer's text is gathered only when this call is drawn
    gather = None if gw.judge is None else gw.judge.gatherer(attempts.plan.routed)
    status = "ok"
    held = False  # the upstream kept the connection open after [DONE]
    try:
        out = tap.feed(first)
        if out:
            if gather is not None:
                gather.feed(out)
            yield out
        async for chunk in chunks:
            out = tap.feed(chunk)
            if out:
                if gather is not None:
                    gather.feed(out)
                yield out
            if tap.done:  # the answer is complete: its end is not left to an upstream that holds on
                held = not await _ends_soon(chunks)
                break
        rest = tap.tail()
        if rest:
            yield rest
        if not tap.done:
            status = "broken"
            yield error_event(f"upstream {up.name!r} ended the stream without [DONE]; the answer may be cut short", "broken")
    except UpstreamFailure as f:  # too large, or a corrupt compressed stream
        status = f.kind
        yield error_event(f"{f}; the answer is incomplete", f.kind)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        status = "timeout" if isinstance(exc, asyncio.TimeoutError) else "broken"
        yield error_event(f"upstream {up.name!r} broke off the stream ({type(exc).__name__}); the answer is incomplete",
                          status)
    except (asyncio.CancelledError, GeneratorExit):
        status = "client_cancelled"
        raise
    except Exception:  # a bug of ours must not cut the stream without a word
        status = "broken"
        log.exception("relaying %s's stream failed", up.name)
        yield error_event("the gateway failed while relaying the stream; the answer is incomplete", "gateway_error")
    finally:
        _let_go(up, resp, clean=status == "ok" and not held)
        if status == "ok":
            up.breaker.record_success()
        elif status == "client_cancelled":
            up.breaker.release()
        else:
            up.breaker.record_failure()
        if tap.impossible_usage:
            _impossible_usage(gw, up, "in its stream")
        served = attempts.add(up, status, started, http_status=resp.status, usage=tap.usage, ttft=ttft)
        # an answer cut short is counted at what its usage says, if it said anything: not at the estimate
        if served.cost is not None or status == "ok":
            attempts.plan.cost = call_cost(served.cost, body, up.config)
        gw.record(attempts.plan, attempts.calls, served)
        if gather is not None and gw.judge is not None and status == "ok":
            gw.judge.enqueue(attempts.plan.request_id, served.target, attempts.plan.text, gather.text, served.cost)
