"""A chat call's body, read at the boundary: every way a client can break JSON is a 400 naming
the field, never a 5xx, and nothing invalid travels on to the router, the log or an upstream.

What is refused, and why:
- nesting deeper than ``max_json_depth``: Python's decoder recurses, so 2,000 levels raised
  ``RecursionError`` (a 500); real bodies (tool schemas included) stay far below 100;
- ``NaN``, ``Infinity`` and numbers too large for a float (``1e400``): not JSON (RFC 8259), and
  an upstream would refuse the body we forwarded;
- a lone UTF-16 surrogate (``"\\ud800"``): legal JSON syntax but no Unicode text; the tokenizer
  raised on it, failing every prompt embedded in the same batch, and no log can store it;
- ``stream`` that is not a boolean (``"true"`` streamed upstream but was relayed as JSON),
  ``stream_options`` that is not an object, ``max_tokens`` / ``max_completion_tokens`` that is not
  a whole number of tokens in range (they feed the cost estimate).

The common case costs two ``bytes.count`` calls and the decode itself: the depth is measured
only when the body holds more brackets than the limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

import numpy as np

from .selection import RequestError

__all__ = ["MAX_TOKENS_LIMIT", "json_depth", "parse_body"]

#: the largest max_tokens / max_completion_tokens taken (no model answers more in one call)
MAX_TOKENS_LIMIT = 10_000_000

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """How deep the JSON text ``raw`` nests (an upper bound for text that is not JSON)."""
    skeleton = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)  # brackets outside strings, in order
    if not skeleton:
        return 0
    steps = np.where(np.isin(np.frombuffer(skeleton, np.uint8), (ord("["), ord("{"))), 1, -1)
    return int(np.cumsum(steps).max())


def parse_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a dict, or RequestError (400, OpenAI's shape) naming what is wrong and where."""
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw) > max_depth:
        field = _deep_field(raw, max_depth)
        where = f"'{field}'" if field else "the body"
        raise RequestError(400, f"{where} nests deeper than {max_depth} levels; flatten it", "invalid_body", field)
    odd: list[str] = []

    def constant(name: str) -> float:
        odd.append(name)
        return math.nan

    def number(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            odd.append(text)
        return value

    try:
        body = json.loads(raw, parse_constant=constant, parse_float=number)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise RequestError(400, "the body is not valid JSON (UTF-8)", "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object", "invalid_json")
    if odd:
        path = _first(body, _non_finite)
        raise RequestError(400, f"'{path}' holds {odd[0]}, which JSON cannot carry: send a finite number",
                           "invalid_number", path)
    if _SURROGATE_ESCAPE.search(raw):  # rare: only an escape can carry a surrogate (emoji pairs are fine)
        path = _first(body, _lone_surrogate)
        if path is not None:
            raise RequestError(400, f"'{path or 'a key'}' holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is "
                               "not Unicode text: send the text as UTF-8", "invalid_text", path or None)
    _check_fields(body)
    return body


def _check_fields(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "invalid_stream", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object such as {\"include_usage\": true}",
                           "invalid_stream_options", "stream_options")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS_LIMIT:
            raise RequestError(400, f"'{name}' must be a whole number of tokens from 1 to {MAX_TOKENS_LIMIT:,}",
                               "invalid_max_tokens", name)


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _lone_surrogate(value: Any) -> bool:
    return isinstance(value, str) and _SURROGATE.search(value) is not None


def _first(body: Any, bad: Callable[[Any], bool]) -> str | None:
    """The dotted path of the first value (or key: its parent's path) in ``body`` that is ``bad``, depth-first."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if bad(value):
            return path
        if isinstance(value, dict):
            if any(bad(k) for k in value):
                return path
            items: Any = value.items()
        else:
            items = enumerate(value) if isinstance(value, list) else ()
        stack.extend(reversed([(f"{path}.{k}" if path else str(k), v) for k, v in items]))
    return None


def _deep_field(raw: bytes, max_depth: int) -> str | None:
    """The top-level key whose value nests too deep (None when the body is not an object)."""
    text = raw.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    i = _skip(text, 0)
    if not text.startswith("{", i):
        return None
    i += 1
    while True:
        i = _skip(text, i)
        try:
            key, i = decoder.raw_decode(text, i)
            i = _skip(text, i)
            if not text.startswith(":", i):
                return None
            start = _skip(text, i + 1)
            try:
                _, end = decoder.raw_decode(text, start)
            except RecursionError:
                return str(key)
            if json_depth(text[start:end].encode()) > max_depth - 1:
                return str(key)
        except ValueError:
            return None
        i = _skip(text, end)
        if not text.startswith(",", i):
            return None
        i += 1


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i
