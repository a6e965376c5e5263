"""One upstream LLM: a pooled HTTP client, a circuit breaker, and failures named by kind.

aiohttp, not httpx: on this 2-core machine one aiohttp session made ~3,200 calls/s to a local
stand-in where an httpx ``AsyncClient`` made ~700 (both at 8 concurrent calls, measured before
choosing).  A gateway spends most of its time in its HTTP client, so the choice decides its
throughput.

What reaches a client about an upstream failure is scrubbed: no provider key, no credentialed
URL, no more than a short message.

Nothing an upstream sends is taken on trust: an answer is read up to ``max_response_bytes``,
counted after decompression as it arrives and inflated a slice at a time (a 300 KB gzip body once
inflated to 300 MB in one step on the event loop); a redirect is not followed (it would re-send
the prompt to another host); calls wait for one of ``max_concurrency`` slots before the upstream's
timeout starts, so time spent queueing is never blamed on the upstream.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any, AsyncIterator

import aiohttp

from ..circuit import CircuitBreaker
from .config import UpstreamConfig

__all__ = ["Upstream", "UpstreamFailure", "scrub"]

#: failures after which the next-best model is tried (before the first byte reached the client)
RETRYABLE = frozenset({"http_429", "http_5xx", "timeout", "connect", "broken", "too_large", "invalid_answer", "busy"})
#: failures that say nothing about the upstream itself: no breaker move, no outcome against its model
NOT_ITS_FAULT = frozenset({"busy", "client_error"})
#: bytes inflated per step: a compressed answer never costs the event loop more than this at once
_INFLATE_STEP = 256 * 1024

_KEYLIKE = re.compile(r"(?:sk|pk|rk|key|tok|token|bearer)[-_][A-Za-z0-9_\-]{6,}", re.IGNORECASE)
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without secrets, key-like tokens or URL credentials, cut to 300 characters."""
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    text = _USERINFO.sub(r"\1[redacted]@", _KEYLIKE.sub("[redacted]", text))
    return text[:300]


class UpstreamFailure(Exception):
    """An upstream call that failed; ``kind`` is one of RETRYABLE or ``client_error``.  ``busy``: every
    slot was taken and the queue full (or waited out): the call was never made."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def its_fault(self) -> bool:
        """Whether the failure counts against the upstream (its breaker, an outcome for its model)."""
        return self.kind not in NOT_ITS_FAULT


class Upstream:
    """An OpenAI-compatible server the gateway forwards to, with its own connection pool and breaker."""

    def __init__(self, config: UpstreamConfig, breaker: CircuitBreaker) -> None:
        self.config = config
        self.breaker = breaker
        self.url = f"{config.base_url}/chat/completions"
        self.base_url = config.base_url
        self._session: aiohttp.ClientSession | None = None
        key = config.api_key()
        self._secrets = (key,) if key else ()
        # answers are inflated here, a slice at a time: only encodings zlib inflates are asked for
        self._headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"}
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._in_flight = 0
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    @property
    def name(self) -> str:
        return self.config.name

    def session(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use inside the serving event loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False,
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def timeout(self, stream: bool) -> aiohttp.ClientTimeout:
        c = self.config
        if stream:  # a stream may run long: the limit is on the wait for each next chunk
            return aiohttp.ClientTimeout(total=c.stream_timeout_s, sock_connect=c.connect_timeout_s, sock_read=c.timeout_s)
        return aiohttp.ClientTimeout(total=c.timeout_s, sock_connect=c.connect_timeout_s)

    def safe(self, text: str) -> str:
        return scrub(text, self._secrets)

    # ------------------------------------------------------------------ slots
    async def acquire(self) -> None:
        """Take one of ``max_concurrency`` slots: at once if one is free, else after waiting in a queue
        of at most ``max_queue`` for at most ``queue_timeout_s``; otherwise UpstreamFailure ``busy``."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_concurrency)
        if not self._slots.locked():
            await self._slots.acquire()
            self._in_flight += 1
            return
        c = self.config
        if self._waiting >= c.max_queue:
            raise UpstreamFailure("busy", f"upstream {self.name!r} has {c.max_concurrency} calls in flight and "
                                  f"{self._waiting} waiting; retry shortly")
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), c.queue_timeout_s)
        except asyncio.TimeoutError:
            raise UpstreamFailure("busy", f"upstream {self.name!r} had no free slot for {c.queue_timeout_s:g} s; "
                                  "retry shortly") from None
        finally:
            self._waiting -= 1
        self._in_flight += 1

    def release(self) -> None:
        assert self._slots is not None
        self._in_flight -= 1
        self._slots.release()

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return self._waiting

    # ------------------------------------------------------------------ calls
    async def open(self, body: bytes, stream: bool, path: str | None = None) -> aiohttp.ClientResponse:
        """Send the call in a slot; return the response once its status is a success, holding the
        slot (give it back with ``release``), else raise UpstreamFailure with the slot given back."""
        await self.acquire()
        try:
            return await self._post(body, stream, self.url if path is None else f"{self.base_url}/{path}")
        except BaseException:
            self.release()
            raise

    async def _post(self, body: bytes, stream: bool, url: str) -> aiohttp.ClientResponse:
        try:
            resp = await self.session().post(url, data=body, headers=self._headers, timeout=self.timeout(stream),
                                             allow_redirects=False)
        except asyncio.TimeoutError:
            raise UpstreamFailure("timeout", f"upstream {self.name!r} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("connect", f"upstream {self.name!r} could not be reached "
                                  f"({self.safe(type(exc).__name__)})") from None
        if 200 <= resp.status < 300:
            return resp
        if resp.status < 400:
            resp.close()
            raise UpstreamFailure("invalid_answer", f"upstream {self.name!r} answered {resp.status} (a redirect, which "
                                  "is not followed: check its base_url)", status=resp.status)
        try:
            payload = await self._read(resp, limit=64 * 1024)
        except (aiohttp.ClientError, asyncio.TimeoutError, UpstreamFailure):
            payload = b""
        finally:
            resp.release()
        kind = "http_429" if resp.status == 429 else "http_5xx" if resp.status >= 500 else "client_error"
        detail = self.safe(_error_message(payload))
        raise UpstreamFailure(kind, f"upstream {self.name!r} answered {resp.status}" + (f": {detail}" if detail else ""),
                              status=resp.status)

    async def complete(self, body: bytes) -> tuple[aiohttp.ClientResponse, bytes]:
        """A whole (non-streamed) call: the response and its body (see ``answer``)."""
        resp, payload, _ = await self.answer(body)
        return resp, payload

    async def answer(self, body: bytes) -> tuple[aiohttp.ClientResponse, bytes, dict[str, Any]]:
        """A whole (non-streamed) call: the response, its body and the body parsed, which must be a
        chat completion (a 200 carrying HTML or an ``error`` object is an ``invalid_answer``)."""
        resp = await self.open(body, stream=False)
        try:
            payload = await self._read(resp, self.config.max_response_bytes)
        except asyncio.TimeoutError:
            raise UpstreamFailure("timeout", f"upstream {self.name!r} did not finish its answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("broken", f"upstream {self.name!r} broke off its answer ({type(exc).__name__})") from None
        finally:
            resp.release()
            self.release()
        try:
            answer = json.loads(payload)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict) or answer.get("error") is not None or not isinstance(answer.get("choices"), list):
            raise UpstreamFailure("invalid_answer", f"upstream {self.name!r} answered {resp.status} with something that "
                                  "is not a chat completion", status=resp.status)
        return resp, payload, answer

    async def read(self, resp: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
        """The whole answer, at most ``limit`` bytes (default ``max_response_bytes``; see ``body``)."""
        return await self._read(resp, self.config.max_response_bytes if limit is None else limit)

    async def _read(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        out = bytearray()
        async for piece in self.body(resp, limit):
            out += piece
        return bytes(out)

    async def body(self, resp: aiohttp.ClientResponse, limit: int | None = None) -> AsyncIterator[bytes]:
        """The answer's bytes as they arrive, decompressed a slice at a time, at most ``limit`` of
        them (default ``max_response_bytes``) before UpstreamFailure ``too_large``."""
        limit = self.config.max_response_bytes if limit is None else limit
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            raise UpstreamFailure("invalid_answer", f"upstream {self.name!r} sent an answer in {encoding[:20]!r}, "
                                  "which was not asked for")
        inflate = None if encoding in ("identity", "") else zlib.decompressobj(wbits=47)  # gzip or zlib, by header
        seen = 0
        async for data in resp.content.iter_any():
            while data:
                if inflate is None:
                    piece, data = data, b""
                else:
                    try:
                        piece = inflate.decompress(data, _INFLATE_STEP)
                    except zlib.error:
                        raise UpstreamFailure("invalid_answer", f"upstream {self.name!r} sent a corrupt "
                                              f"{encoding} body") from None
                    data = inflate.unconsumed_tail
                seen += len(piece)
                if seen > limit:
                    raise UpstreamFailure("too_large", f"upstream {self.name!r} answered more than {limit:,} bytes "
                                          "(max_response_bytes)")
                if piece:
                    yield piece
                if data:
                    await asyncio.sleep(0)  # a long inflation lets the other requests in between slices
        if inflate is not None:
            rest = inflate.flush()
            if seen + len(rest) > limit:
                raise UpstreamFailure("too_large", f"upstream {self.name!r} answered more than {limit:,} bytes "
                                      "(max_response_bytes)")
            if rest:
                yield rest


def _error_message(payload: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body.  Not cut
    short here: ``scrub`` cuts after it has replaced the key (cut first, a key straddling the cut
    escaped the replacement, and its first 20 characters reached the client)."""
    try:
        data: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return payload[:4096].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data.get("detail"))
        if isinstance(err, dict):
            return str(err.get("message", ""))
        if isinstance(err, str):
            return err
    return ""
