"""One upstream LLM: a pooled HTTP client, a circuit breaker, and failures named by kind.

aiohttp, not httpx: on this 2-core machine one aiohttp session made ~3,200 calls/s to a local
stand-in where an httpx ``AsyncClient`` made ~700 (both at 8 concurrent calls, measured before
choosing).  A gateway spends most of its time in its HTTP client, so the choice decides its
throughput.

What reaches a client about an upstream failure is scrubbed: no provider key, no credentialed
URL, no more than a short message.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from ..circuit import CircuitBreaker
from .config import UpstreamConfig

__all__ = ["Upstream", "UpstreamFailure", "scrub"]

#: failures after which the next-best model is tried (before the first byte reached the client)
RETRYABLE = frozenset({"http_429", "http_5xx", "timeout", "connect", "broken"})

_KEYLIKE = re.compile(r"\b(?:sk|pk|rk|key|tok|token|bearer)[-_][A-Za-z0-9_\-]{6,}", re.IGNORECASE)
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without secrets, key-like tokens or URL credentials, cut to 300 characters."""
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    text = _USERINFO.sub(r"\1[redacted]@", _KEYLIKE.sub("[redacted]", text))
    return text[:300]


class UpstreamFailure(Exception):
    """An upstream call that failed; ``kind`` is one of RETRYABLE, ``client_error`` or ``breaker_open``."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class Upstream:
    """An OpenAI-compatible server the gateway forwards to, with its own connection pool and breaker."""

    def __init__(self, config: UpstreamConfig, breaker: CircuitBreaker) -> None:
        self.config = config
        self.breaker = breaker
        self.url = f"{config.base_url}/chat/completions"
        self._session: aiohttp.ClientSession | None = None
        key = config.api_key()
        self._secrets = (key,) if key else ()
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    @property
    def name(self) -> str:
        return self.config.name

    def session(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use inside the serving event loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def timeout(self, stream: bool) -> aiohttp.ClientTimeout:
        c = self.config
        if stream:  # a stream may run long: the limit is on the wait for each next chunk
            return aiohttp.ClientTimeout(total=None, sock_connect=c.connect_timeout_s, sock_read=c.timeout_s)
        return aiohttp.ClientTimeout(total=c.timeout_s, sock_connect=c.connect_timeout_s)

    def safe(self, text: str) -> str:
        return scrub(text, self._secrets)

    async def open(self, body: bytes, stream: bool) -> aiohttp.ClientResponse:
        """Send the call; return the response once its status is a success, else raise UpstreamFailure."""
        try:
            resp = await self.session().post(self.url, data=body, headers=self._headers, timeout=self.timeout(stream))
        except asyncio.TimeoutError:
            raise UpstreamFailure("timeout", f"upstream {self.name!r} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("connect", f"upstream {self.name!r} could not be reached "
                                  f"({self.safe(type(exc).__name__)})") from None
        if resp.status < 400:
            return resp
        try:
            payload = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            payload = b""
        finally:
            resp.release()
        kind = "http_429" if resp.status == 429 else "http_5xx" if resp.status >= 500 else "client_error"
        detail = self.safe(_error_message(payload))
        raise UpstreamFailure(kind, f"upstream {self.name!r} answered {resp.status}" + (f": {detail}" if detail else ""),
                              status=resp.status)

    async def complete(self, body: bytes) -> tuple[aiohttp.ClientResponse, bytes]:
        """A whole (non-streamed) call: the response and its body."""
        resp = await self.open(body, stream=False)
        try:
            return resp, await resp.read()
        except asyncio.TimeoutError:
            raise UpstreamFailure("timeout", f"upstream {self.name!r} did not finish its answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("broken", f"upstream {self.name!r} broke off its answer ({type(exc).__name__})") from None
        finally:
            resp.release()


def _error_message(payload: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    import json

    try:
        data: Any = json.loads(payload)
    except ValueError:
        return payload[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data.get("detail"))
        if isinstance(err, dict):
            return str(err.get("message", ""))
        if isinstance(err, str):
            return err
    return ""
