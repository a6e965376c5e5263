"""Decoding POST /v1/route bodies: the simdjson fast path never accepts what pydantic would not,
and gives exactly what pydantic gives when it accepts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from tinydancer.errors import ValidationError
from tinydancer.server.wire import RouteBody, RouteIn, _canonical, decode_route_body, fast_route_body


def body(n: int = 3, dim: int = 6, seed: int = 0, **extra: Any) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "query_embedding": rng.normal(size=dim).tolist(),
        "candidates": [{"id": f"c{i}", "embedding": rng.normal(size=dim).tolist(), "access_count": 3,
                        "success_rate": 0.5, "created_at": 1_700_000_000.5, "metadata": {"lang": "en", "tier": 2}}
                       for i in range(n)],
        **extra,
    }


def canonical(raw: bytes) -> RouteBody | Exception:
    try:
        return _canonical(RouteIn.model_validate_json(raw))
    except (PydanticValidationError, ValidationError) as exc:
        return exc


def same(a: RouteBody, b: RouteBody) -> bool:
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


def check_agrees(raw: bytes) -> RouteBody | None:
    """The property every body must have; returns what the fast path gave."""
    fast = fast_route_body(raw)
    slow = canonical(raw)
    if fast is not None:
        assert not isinstance(slow, Exception), f"fast path accepted what pydantic rejects: {slow}"
        assert same(fast, slow)
    decoded: RouteBody | Exception
    try:
        decoded = decode_route_body(raw)
    except (PydanticValidationError, ValidationError) as exc:
        decoded = exc
    assert type(decoded) is type(slow)
    if isinstance(slow, RouteBody):
        assert same(decoded, slow)  # type: ignore[arg-type]
    return fast


def _edit(doc: dict, path: tuple, value: Any) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize("doc", [
    body(),
    body(n=1, dim=1),
    body(metadata={"lang": "en"}),
    body(metadata=None),
    _edit(body(), ("candidates", 0, "created_at"), None),
    {"query_embedding": [1, 2, 3], "candidates": [{"id": "a", "embedding": [0, 1e-300, -2.5e10]}]},  # ints, defaults
])
def test_plain_bodies_take_the_fast_path_and_match_pydantic(doc: dict) -> None:
    for text in (json.dumps(doc), json.dumps(doc, indent=2)):
        assert check_agrees(text.encode()) is not None


def test_the_benchmark_body_takes_the_fast_path() -> None:
    """10 × 384-d with rounded floats, as benchmarks/service_load.py posts it."""
    rng = np.random.default_rng(1)
    doc = {"query_embedding": rng.normal(size=384).round(5).tolist(),
           "candidates": [{"id": f"c{i}", "embedding": rng.normal(size=384).round(5).tolist(), "access_count": 10,
                           "success_rate": 0.9, "created_at": 1_700_000_000.0, "metadata": {}} for i in range(10)]}
    fast = check_agrees(json.dumps(doc).encode())
    assert fast is not None and fast.embeddings.shape == (10, 384) and fast.embeddings.dtype == np.float64


UNUSUAL = [
    _edit(body(), ("candidates", 1, "embedding", 2), "0.5"),  # a numeric string: pydantic's lax mode takes it
    _edit(body(), ("candidates", 1, "embedding", 2), True),
    _edit(body(), ("candidates", 1, "embedding", 2), None),
    _edit(body(), ("candidates", 1, "embedding", 2), [1.0]),  # nested
    _edit(body(), ("candidates", 1, "embedding"), [[1.0]] * 6),  # nested, same length
    _edit(body(), ("candidates", 1, "embedding"), []),
    _edit(body(), ("candidates", 1, "embedding"), [1.0] * 5),  # ragged
    _edit(body(), ("query_embedding",), [0.0] * 4097),
    _edit(body(), ("candidates", 0, "access_count"), 3.0),
    _edit(body(), ("candidates", 0, "access_count"), True),
    _edit(body(), ("candidates", 0, "access_count"), -1),
    _edit(body(), ("candidates", 0, "access_count"), 2**60),
    _edit(body(), ("candidates", 0, "success_rate"), 1.5),
    _edit(body(), ("candidates", 0, "success_rate"), "0.5"),
    _edit(body(), ("candidates", 0, "created_at"), -5),
    _edit(body(), ("candidates", 0, "created_at"), "1700000000"),
    _edit(body(), ("candidates", 0, "id"), ""),
    _edit(body(), ("candidates", 0, "id"), "x" * 257),
    _edit(body(), ("candidates", 0, "id"), "[bracket]"),
    _edit(body(), ("candidates", 0, "id"), 7),
    _edit(body(), ("candidates", 0, "metadata"), None),
    _edit(body(), ("candidates", 0, "metadata"), {"nested": {"a": 1}}),
    _edit(body(), ("candidates", 0, "metadata"), {"list": [1, 2]}),
    _edit(body(), ("candidates", 0, "metadata"), []),
    _edit(body(), ("candidates", 0, "extra"), 1),
    _edit(body(), ("extra",), 1),
    _edit(body(), ("metadata",), {"nested": {"a": 1}}),
    _edit(body(), ("metadata",), "text"),
    _edit(body(), ("candidates",), []),
    _edit(body(), ("candidates",), {}),
    _edit(body(), ("query_embedding",), {}),
    {"candidates": body()["candidates"]},
    {"query_embedding": [1.0]},
    [],
    None,
]


@pytest.mark.parametrize("doc", UNUSUAL, ids=range(len(UNUSUAL)))
def test_unusual_bodies_go_to_pydantic(doc: Any) -> None:
    assert check_agrees(json.dumps(doc).encode()) is None


@pytest.mark.parametrize("raw", [
    b"", b"{", b"not json", b'{"query_embedding": [NaN], "candidates": []}',
    b"\xef\xbb\xbf" + json.dumps(body()).encode(),  # simdjson would skip the BOM
    json.dumps(body()).encode() + b"\x00",
    json.dumps(body()).replace('"success_rate": 0.5', '"success_rate": 0.5, "success_rate": 0.7', 1).encode(),  # duplicate key
    json.dumps(body()).replace('"access_count": 3', '"access_count": 3, "metadata": {}', 1).encode(),
    json.dumps(body()).replace("]", ", 1e999]", 1).encode(),  # overflows to inf
    json.dumps(body()).replace("]", ", -9223372036854775809]", 1).encode(),  # beyond int64
    json.dumps(body()).replace('"c0"', '"\\ud800"', 1).encode(),  # lone surrogate
    json.dumps(body()).replace('"c1"', '"c0"', 1).encode(),  # duplicate ids: the router reports them
])
def test_malformed_text_agrees(raw: bytes) -> None:
    check_agrees(raw)


def test_a_failed_parse_does_not_break_the_next_one() -> None:
    """simdjson refuses to reuse a parser while its proxies live; a body that failed half-way
    must not leave any behind."""
    good = json.dumps(body()).encode()
    for bad in (b'{"query_embedding": [1, true], "candidates": [{"id": "a", "embedding": [1, 2]}]}', b"[", good[:-5]):
        fast_route_body(bad)
        assert fast_route_body(good) is not None


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, width=64),
                    st.text(max_size=4))
numbers = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-10**6, 10**6))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed bodies; each part has a small chance of being unusual."""
    dim = draw(st.integers(1, 5))

    def odd() -> bool:
        return draw(st.integers(0, 11)) == 5  # hypothesis favours the ends of a range

    def vector() -> Any:
        if odd():
            return draw(st.one_of(st.lists(numbers, max_size=6), st.lists(st.one_of(numbers, scalars), min_size=dim, max_size=dim),
                                  scalars))
        return draw(st.lists(numbers, min_size=dim, max_size=dim))

    def value(usual: st.SearchStrategy) -> Any:
        return draw(scalars) if odd() else draw(usual)

    doc: dict[str, Any] = {"query_embedding": vector(), "candidates": []}
    for _ in range(draw(st.integers(0 if odd() else 1, 4))):
        c: dict[str, Any] = {"id": value(st.text(min_size=1, max_size=6)), "embedding": vector()}
        for key, usual in (("access_count", st.integers(0, 2**53)), ("success_rate", st.floats(0, 1)),
                           ("created_at", st.one_of(st.none(), st.floats(0, 2e9))),
                           ("metadata", st.dictionaries(st.text(max_size=3), scalars, max_size=3))):
            if draw(st.booleans()):
                c[key] = value(usual)
        if odd():
            c["extra"] = draw(scalars)
        doc["candidates"].append(c)
    if draw(st.booleans()):
        doc["metadata"] = value(st.one_of(st.none(), st.dictionaries(st.text(max_size=3), scalars, max_size=3)))
    return json.dumps(doc).encode()


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_fast_path_agrees_with_pydantic(raw: bytes) -> None:
    check_agrees(raw)
