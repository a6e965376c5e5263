"""Server-sent events passing through the gateway: usage is read off the stream as it goes by.

The gateway asks every upstream for usage on streams (``stream_options.include_usage``), since
that is the only way to know what a streamed call cost.  A client that did not ask for it gets
the stream it would have had without us: the usage-only chunk (``"choices": []``) is taken out.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["UsageTap", "error_event", "usage_of"]

DONE = b"data: [DONE]"


def usage_of(payload: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a completion or chunk object, or None without usage."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (int(p) if isinstance(p, (int, float)) else 0, int(c) if isinstance(c, (int, float)) else 0)


class UsageTap:
    """Splits a byte stream into SSE events, notes usage and ``[DONE]``, and drops the usage chunk
    the gateway asked for on the client's behalf (``keep_usage_chunk=False``)."""

    def __init__(self, keep_usage_chunk: bool) -> None:
        self.keep_usage_chunk = keep_usage_chunk
        self.usage: tuple[int, int] | None = None
        self.done = False
        self._rest = b""

    def feed(self, chunk: bytes) -> bytes:
        """The part of ``chunk`` to send on now (whole events only; a partial one waits)."""
        data = self._rest + chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._rest = data
            return b""
        self._rest = data[cut + 2:]
        events = data[: cut + 2]
        if b'"usage"' not in events and DONE not in events:
            return events  # the common case: content chunks, passed on as they came
        kept = []
        for event in events.split(b"\n\n")[:-1]:
            if not self._keep(event):
                continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _keep(self, event: bytes) -> bool:
        data = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if data == b"[DONE]":
            self.done = True
            return True
        if b'"usage"' not in data:
            return True
        try:
            payload = json.loads(data)
        except ValueError:
            return True
        found = usage_of(payload)
        if found is not None:
            self.usage = found
            if not self.keep_usage_chunk and not payload.get("choices"):
                return False
        return True

    def tail(self) -> bytes:
        """What is left when the stream ends (an event without its closing blank line)."""
        rest, self._rest = self._rest, b""
        return rest


def error_event(message: str, kind: str) -> bytes:
    """An SSE event the OpenAI SDK raises as ``APIError`` (it checks ``data.error``)."""
    body = {"error": {"message": message, "type": "upstream_error", "code": kind}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
