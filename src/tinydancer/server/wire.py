"""The body of ``POST /v1/route``: its schema, and a decoder that reads embeddings straight into arrays.

The canonical decoder is pydantic (``RouteIn.model_validate_json``).  It makes a Python float per
number: for 10 candidates of 384-d (41 KB) that is ~150 µs, and ~60 µs more to turn the lists into
the arrays routing works on — together a third of the service's time per request.  simdjson parses
the same body and hands each embedding over as a buffer of doubles in ~70 µs.

The fast path may only *accept*.  Whatever it is not sure about — invalid JSON, a byte-order mark,
a duplicate key, a nested array, a value of an unexpected type, ragged embeddings, metadata that is
not flat — makes it return None, and :func:`decode_route_body` runs the canonical decoder, which
either accepts the body or raises the error the API reports.  Every field other than the embeddings
is still checked by the same pydantic models.  ``tests/test_wire.py`` checks that both paths agree.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, NamedTuple, Union

import numpy as np
import simdjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from ..errors import ValidationError

MAX_DIM = 4096
MAX_CANDIDATES = 1000
#: metadata bounds: the overlap feature compares every request entry with every candidate's, so
#: unbounded metadata is unbounded CPU on the event loop (1.95 MB of it took 2.7 s before)
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 256
MAX_METADATA_VALUE_CHARS = 1024

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Union[Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)], bool, int, float, None]
#: flat metadata: at most 64 entries of short text keys and scalar values
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_KEYS)]


class Strict(BaseModel):
    """Request bodies: unknown fields and NaN/Inf are errors, not ignored, and nothing is coerced
    (``"5"`` is not a count, ``"yes"`` is not a boolean, ``true`` is not a number)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", strict=True)


class CandidateFields(Strict):
    """A candidate without its embedding (what the fast path validates with pydantic)."""

    id: str = Field(min_length=1, max_length=256)
    metadata: Metadata = Field(default_factory=dict)
    created_at: float | None = Field(None, ge=0, description="Unix time in seconds")
    access_count: int = Field(0, ge=0, le=2**53)
    success_rate: float = Field(0.0, ge=0.0, le=1.0)


class CandidateIn(CandidateFields):
    embedding: list[float] = Field(min_length=1, max_length=MAX_DIM)


class RouteIn(Strict):
    query_embedding: list[float] = Field(min_length=1, max_length=MAX_DIM)
    candidates: list[CandidateIn] = Field(min_length=1, max_length=MAX_CANDIDATES)
    metadata: Metadata | None = None


class RouteBody(NamedTuple):
    """A decoded ``POST /v1/route`` body, as the columns :meth:`RoutingRequest.from_arrays` takes."""

    query_embedding: np.ndarray  # float64 (d,)
    ids: list[str]
    embeddings: np.ndarray  # float64 (n, d)
    metadata: list[dict[str, Any]]
    created_at: list[float | None]
    access_count: list[int]
    success_rate: list[float]
    request_metadata: dict[str, Any] | None


def decode_route_body(raw: bytes) -> RouteBody:
    """Decode a body: the fast path when it is sure, else pydantic.

    Raises pydantic's ``ValidationError`` for a body the schema rejects, and :class:`ValidationError`
    when the candidates' embeddings differ in size from each other or from the query's.
    """
    return fast_route_body(raw) or _canonical(RouteIn.model_validate_json(raw))


def _canonical(body: RouteIn) -> RouteBody:
    cands = body.candidates
    dim = len(body.query_embedding)
    bad = next((c for c in cands if len(c.embedding) != dim), None)
    if bad is not None:
        dims = sorted({len(c.embedding) for c in cands})
        raise ValidationError(f"candidate {bad.id!r} has a {len(bad.embedding)}-d embedding but the query is "
                              f"{dim}-d (embedding sizes in this request: {dims})")
    return RouteBody(np.array(body.query_embedding, dtype=np.float64), [c.id for c in cands],
                     np.array([c.embedding for c in cands], dtype=np.float64), [c.metadata for c in cands],
                     [c.created_at for c in cands], [c.access_count for c in cands], [c.success_rate for c in cands],
                     body.metadata)


_CANDIDATE_KEYS = frozenset(CandidateIn.model_fields)
_BODY_KEYS = frozenset(RouteIn.model_fields)
_SCALARS = (str, int, float, bool, type(None))
_validate_candidates = TypeAdapter(list[CandidateFields]).validate_python
_validate_metadata = TypeAdapter(Metadata, config=ConfigDict(strict=True)).validate_python
_local = threading.local()


def fast_route_body(raw: bytes) -> RouteBody | None:
    """The decoded body, or None when the canonical decoder must decide."""
    if raw[:3] == b"\xef\xbb\xbf":  # simdjson skips a BOM; pydantic rejects it
        return None
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        return _fast(parser, raw)
    except Exception:  # noqa: BLE001 — anything unexpected is the canonical decoder's to report
        return None


def _fast(parser: Any, raw: bytes) -> RouteBody | None:
    # The parser's proxies (doc, cands, c, …) must not outlive this call: simdjson refuses to
    # reuse a parser while any exist.  Nothing here awaits, so one parser per thread suffices.
    top = _fields(parser.parse(raw), _BODY_KEYS)
    if top is None or "query_embedding" not in top or "candidates" not in top:
        return None
    cands = top["candidates"]
    n = len(cands) if type(cands) is simdjson.Array else 0
    # the only arrays a plain body has: the query's, the candidate list, one per candidate; any
    # other '[' (a nested array, an array in metadata, a bracket inside a string) goes the slow way
    if not 1 <= n <= MAX_CANDIDATES or np.count_nonzero(np.frombuffer(raw, np.uint8) == ord("[")) != n + 2:
        return None
    query = _numbers(top["query_embedding"])
    request_metadata = top.get("metadata")
    if query is None or (request_metadata is not None and (request_metadata := _flat(request_metadata)) is None):
        return None
    if request_metadata is not None:
        request_metadata = _validate_metadata(request_metadata)  # a bad one: the canonical path reports it
    dim = query.size
    rows: list[bytes] = []
    fields: list[dict[str, Any]] = []
    for c in cands:
        f = _fields(c, _CANDIDATE_KEYS)
        emb = None if f is None else f.pop("embedding", None)
        if type(emb) is not simdjson.Array or len(emb) != dim:
            return None  # ragged embeddings too: the canonical path says which candidate
        rows.append(emb.as_buffer(of_type="d"))  # raises on a non-number
        if "metadata" in f:
            f["metadata"] = _flat(f["metadata"])
        if not _plain_types(f):
            return None
        fields.append(f)
    embeddings = np.frombuffer(b"".join(rows), dtype=np.float64)
    if embeddings.size != n * dim:
        return None
    checked = _validate_candidates(fields)  # the same constraints as the canonical path
    return RouteBody(query, [c.id for c in checked], embeddings.reshape(n, dim), [c.metadata for c in checked],
                     [c.created_at for c in checked], [c.access_count for c in checked],
                     [c.success_rate for c in checked], request_metadata)


def _fields(obj: Any, allowed: frozenset[str]) -> dict[str, Any] | None:
    """An object's members (arrays and objects stay lazy proxies); None for a non-object, a
    duplicate key (pydantic keeps the last, simdjson the first) or an unknown key."""
    if type(obj) is not simdjson.Object:
        return None
    keys = list(obj.keys())
    if len(set(keys)) != len(keys) or not allowed.issuperset(keys):
        return None
    return {k: obj[k] for k in keys}


def _numbers(arr: Any) -> np.ndarray | None:
    """A JSON array of numbers as float64, or None (simdjson raises on a non-number element)."""
    if type(arr) is not simdjson.Array or not 1 <= len(arr) <= MAX_DIM:
        return None
    values = np.frombuffer(arr.as_buffer(of_type="d"), dtype=np.float64)
    return values if values.size == len(arr) else None


def _flat(obj: Any) -> dict[str, Any] | None:
    """An object whose values are all scalars, as a dict; None for anything else."""
    if type(obj) is not simdjson.Object:
        return None
    d = obj.as_dict()
    return d if len(d) == len(obj) and all(isinstance(v, _SCALARS) for v in d.values()) else None


def _plain_types(f: dict[str, Any]) -> bool:
    """Types pydantic would take as they are (no lax conversions, which the two modes do differently)."""
    def number(v: Any) -> bool:
        return type(v) is float or type(v) is int

    return (type(f.get("id")) is str
            and f.get("metadata", {}) is not None
            and ("created_at" not in f or f["created_at"] is None or number(f["created_at"]))
            and ("access_count" not in f or type(f["access_count"]) is int)
            and ("success_rate" not in f or number(f["success_rate"])))
