"""Server-sent events passing through the gateway: usage is read off the stream as it goes by.

The gateway asks every upstream for usage on streams (``stream_options.include_usage``), since
that is the only way to know what a streamed call cost.  A client that did not ask for it gets
the stream it would have had without us: the usage-only chunk (``"choices": []``) is taken out.
A client that asked for it gets the call's cost in that chunk's ``usage`` (``stamp``: the fields
``tinydancer_cost`` and ``tinydancer_cost_source``; the OpenAI SDK keeps fields it does not know).
"""

from __future__ import annotations

import json
from typing import Any, Callable

__all__ = ["ImpossibleUsage", "UsageTap", "error_event", "first_event_problem", "usage_of"]

DONE = b"data: [DONE]"


#: more tokens than any call has: a count above it is not believed
MAX_TOKENS = 10**9


class ImpossibleUsage(ValueError):
    """An upstream reported token counts no call can have (negative, not a number, astronomically large)."""


def usage_of(payload: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a completion or chunk object, or None without usage.

    Counts come from the upstream and are not trusted: anything but a whole number from 0 to
    MAX_TOKENS raises ImpossibleUsage, and the caller logs the call with its usage unknown (a
    negative count once made Prometheus refuse the increment; ``1e999`` overflowed ``int``)."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise ImpossibleUsage(f"usage is {type(usage).__name__}, not an object")
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    if value is None:  # `usage: {}` or a total alone: the cost is unknown, not $0
        raise ImpossibleUsage("usage without prompt_tokens and completion_tokens")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise ImpossibleUsage(f"a token count of {str(value)[:40]!r}")
    return value


class UsageTap:
    """Splits a byte stream into SSE events, notes usage and ``[DONE]``, and drops the usage chunk
    the gateway asked for on the client's behalf (``keep_usage_chunk=False``)."""

    def __init__(self, keep_usage_chunk: bool,
                 stamp: Callable[[tuple[int, int] | None], dict[str, Any]] | None = None) -> None:
        self.keep_usage_chunk = keep_usage_chunk
        #: fields added to a kept usage chunk's ``usage``, from its token counts (None if impossible)
        self.stamp = stamp
        self.usage: tuple[int, int] | None = None
        #: the stream reported usage that cannot be true (see usage_of): its cost is unknown
        self.impossible_usage = False
        self.done = False
        #: the start of an event still waiting for its end, in pieces (joined once it ends: joining on
        #: every chunk made one long event cost quadratic time)
        self._rest: list[bytes] = []
        #: a chunk's last byte, if it was CR: it may be the first half of a CRLF the next chunk ends
        self._cr = b""

    def feed(self, chunk: bytes) -> bytes:
        """The part of ``chunk`` to send on now (whole events only; a partial one waits).  Lines may
        end in CRLF, CR or LF, as the SSE specification allows; they are passed on as LF."""
        if self._cr or b"\r" in chunk:
            chunk = self._cr + chunk
            self._cr = b"\r" if chunk.endswith(b"\r") else b""
            chunk = (chunk[:-1] if self._cr else chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        edge = self._rest[-1][-1:] + chunk[:1] if self._rest else b""  # an event end split across two chunks
        cut = chunk.rfind(b"\n\n")
        if cut < 0 and edge != b"\n\n":
            if chunk:
                self._rest.append(chunk)
            return b""
        data = b"".join(self._rest) + chunk
        cut = data.rfind(b"\n\n")
        self._rest = [data[cut + 2:]] if cut + 2 < len(data) else []
        events = data[: cut + 2]
        if b'"usage"' not in events and DONE not in events:
            return events  # the common case: content chunks, passed on as they came
        kept = []
        for event in events.split(b"\n\n")[:-1]:
            event = self._keep(event)
            if event is not None:
                kept.append(event + b"\n\n")
        return b"".join(kept)

    def _keep(self, event: bytes) -> bytes | None:
        """The event to pass on (perhaps stamped), or None to take it out."""
        data = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if data == b"[DONE]":
            self.done = True
            return event
        if b'"usage"' not in data:
            return event
        try:
            payload = json.loads(data)
        except ValueError:
            return event
        if not isinstance(payload, dict) or payload.get("usage") is None:
            return event
        try:
            self.usage = usage_of(payload)
        except ImpossibleUsage:
            self.usage, self.impossible_usage = None, True
        # the usage chunk the gateway asked for on the client's behalf is taken out
        if not (self.keep_usage_chunk or payload.get("choices")):
            return None
        if self.stamp is not None and isinstance(payload["usage"], dict):
            payload["usage"].update(self.stamp(self.usage))
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode()
        return event

    def tail(self) -> bytes:
        """What is left when the stream ends (an event without its closing blank line)."""
        rest, self._rest, self._cr = b"".join(self._rest) + self._cr, [], b""
        return rest


def error_event(message: str, kind: str) -> bytes:
    """An SSE event the OpenAI SDK raises as ``APIError`` (it checks ``data.error``)."""
    body = {"error": {"message": message, "type": "upstream_error", "code": kind}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def first_event_problem(first: bytes) -> str | None:
    """Why the first bytes of a streamed answer are not a chat stream, or None if they may be.

    A provider in trouble can answer 200 with an HTML page or an ``{"error": ...}`` object
    instead of events; relayed, the client would get a broken stream and the log an ``ok``.
    Only what has arrived is judged: a partial first event passes."""
    head = first.lstrip()
    if not head.startswith((b"data:", b":", b"event:", b"id:", b"retry:")):
        return "its answer is not an event stream"
    if head.startswith(b"data:"):
        line = head[5:].split(b"\n", 1)[0].strip()
        try:
            payload = json.loads(line)
        except ValueError:
            return None  # cut mid-event, or [DONE]
        if not isinstance(payload, dict) or payload.get("error") is not None:
            return "its stream carries an error instead of an answer"
    return None
