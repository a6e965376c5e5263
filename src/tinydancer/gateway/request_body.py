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

The common case costs the decode and two ``bytes.count`` calls: the depth is walked only when
the body holds more brackets than the limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from .selection import RequestError

__all__ = ["MAX_TOKENS_LIMIT", "parse_body", "too_deep"]

#: the largest max_tokens / max_completion_tokens taken (no model answers more in one call)
MAX_TOKENS_LIMIT = 10_000_000

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests deeper than ``limit`` arrays and objects; iterative,
    so no depth can exhaust Python's stack.  Only containers are visited."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_body(raw: bytes, max_depth: int, max_containers: int = 20_000) -> dict[str, Any]:
    """The body as a dict, or RequestError (400, OpenAI's shape) naming what is wrong and where."""
    if raw.count(b"[") + raw.count(b"{") > max_containers and _containers(raw) > max_containers:
        raise RequestError(400, f"the body holds more than {max_containers:,} arrays and objects", "invalid_body")
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
    except RecursionError:  # nested past Python's own stack (~1,000 levels)
        body = _TOO_DEEP
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise RequestError(400, "the body is not valid JSON (UTF-8)", "invalid_json") from None
    # a body with fewer brackets than the limit cannot nest deeper: the walk is for the rare rest
    if body is _TOO_DEEP or (raw.count(b"[") + raw.count(b"{") > max_depth and too_deep(body, max_depth)):
        field = _deep_field(body, raw, max_depth)
        where = f"'{field}'" if field else "the body"
        raise RequestError(400, f"{where} nests deeper than {max_depth} levels; flatten it", "invalid_body", field)
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object", "invalid_json")
    if odd:
        path = _first(body, _non_finite)
        raise RequestError(400, f"{_where(path)} holds {odd[0]}, which JSON cannot carry: send a finite number",
                           "invalid_number", path or None)
    if _SURROGATE_ESCAPE.search(raw):  # rare: only an escape can carry a surrogate (emoji pairs are fine)
        path = _first(body, _lone_surrogate)
        if path is not None:
            raise RequestError(400, f"{_where(path)} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                               "Unicode text: send the text as UTF-8", "invalid_text", path or None)
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


_TOO_DEEP = object()
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
#: values looked at to name a bad one's field; past it the error names the body
_WALK_BUDGET = 100_000


def _containers(raw: bytes) -> int:
    """Arrays and objects in the JSON text ``raw``: its brackets outside strings (the slow count,
    ~20 ms a MB, for the rare body whose bracket count alone is over the limit)."""
    skeleton = _STRING.sub(b"", raw)
    return skeleton.count(b"[") + skeleton.count(b"{")


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _lone_surrogate(value: Any) -> bool:
    return isinstance(value, str) and _SURROGATE.search(value) is not None


def _first(body: Any, bad: Callable[[Any], bool]) -> str | None:
    """The dotted path of a value (or key: its parent's path) in ``body`` that is ``bad``: a
    container's own values first, then its containers, depth-first.  None if there is none, ``""``
    if one may lie past the walk's budget (a body of a million numbers is not walked to the end)."""
    if bad(body):
        return ""
    budget = _WALK_BUDGET
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            if any(bad(k) for k in value):
                return path
            items: Any = value.items()
        else:
            items = enumerate(value)
        inner = []
        for key, child in items:
            budget -= 1
            if budget < 0:
                return ""
            if isinstance(child, (dict, list)):
                inner.append((f"{path}.{key}" if path else str(key), child))
            elif bad(child):
                return f"{path}.{key}" if path else str(key)
        stack.extend(reversed(inner))
    return None


def _where(path: str | None) -> str:
    return f"'{path}'" if path else "the body"


def _deep_field(body: Any, raw: bytes, max_depth: int) -> str | None:
    """The top-level key whose value nests too deep (None when the body is not an object)."""
    if body is not _TOO_DEEP:
        if not isinstance(body, dict):
            return None
        return next((str(k) for k, v in body.items() if isinstance(v, (dict, list)) and too_deep(v, max_depth - 1)), None)
    # too deep to parse at all: find the key by decoding the top-level values one at a time
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
            _, i = decoder.raw_decode(text, _skip(text, i + 1))
        except RecursionError:
            return str(key)
        except ValueError:
            return None
        i = _skip(text, i)
        if not text.startswith(",", i):
            return None
        i += 1


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i
