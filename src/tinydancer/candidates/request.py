"""A routing request, validated and turned into columns where it enters.

Building a :class:`Candidate` checks and unit-normalizes its embedding; building a
:class:`RoutingRequest` (from objects, or from columns with :meth:`RoutingRequest.from_arrays`)
stacks the candidates into the arrays feature engineering works on, so routing itself is array
work only.  Timestamps are Unix **seconds**; milliseconds (the Node binding's unit) are refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .._validation import FLOAT32_MAX, as_float_array
from ..errors import ValidationError

#: the access count at which the frequency feature saturates at 1
MAX_EXPECTED_ACCESS = 10000.0
#: a timestamp above this many seconds (the year 5138) is almost surely in milliseconds
MILLISECOND_HINT = 1e11
#: tolerated clock skew for timestamps "in the future"
FUTURE_SKEW_S = 300.0
LOG_MAX_ACCESS = math.log1p(MAX_EXPECTED_ACCESS)


@dataclass(slots=True)
class Candidate:
    """Something a request could be routed to: a memory item, a tool, an agent.

    ``created_at`` is a Unix timestamp in **seconds** (None: created now); ``success_rate`` in
    [0, 1]; ``access_count`` a non-negative integer.
    """

    id: str
    embedding: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None
    access_count: int = 0
    success_rate: float = 0.0
    unit: np.ndarray = field(init=False, repr=False)
    norm: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValidationError(f"candidate id must be a non-empty string, got {self.id!r}")
        emb = as_float_array(self.embedding, f"candidate {self.id!r} embedding", ndim=1)
        self.embedding = emb
        norm = _norm(emb)
        self.norm = norm
        self.unit = (emb / norm).astype(np.float32) if norm > 0 else emb
        if not isinstance(self.metadata, dict):
            raise ValidationError(f"candidate {self.id!r} metadata must be a dict, got {type(self.metadata).__name__}")
        if isinstance(self.access_count, bool) or not isinstance(self.access_count, (int, np.integer)) or self.access_count < 0:
            raise ValidationError(f"candidate {self.id!r} access_count must be a non-negative integer, got {self.access_count!r}")
        if isinstance(self.success_rate, bool) or not isinstance(self.success_rate, (int, float)) or not (
            0.0 <= self.success_rate <= 1.0
        ):
            raise ValidationError(f"candidate {self.id!r} success_rate must be a number in [0, 1], got {self.success_rate!r}")
        if self.created_at is not None:
            self.created_at = check_timestamp(self.created_at, f"candidate {self.id!r} created_at")


def _norm(v: np.ndarray) -> float:
    """Euclidean norm in float64: a float32 dot product overflows for components above ~1e19."""
    v64 = v.astype(np.float64)
    return float(np.sqrt(np.dot(v64, v64)))


def check_timestamp(value: Any, name: str, now: float | None = None) -> float:
    """A finite Unix time in seconds, not in the future, not in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite Unix timestamp in seconds, got {value!r}")
    value = float(value)
    if value > MILLISECOND_HINT:
        raise ValidationError(f"{name} = {value:.0f} looks like milliseconds; pass seconds (divide by 1000)")
    now = time.time() if now is None else now
    if value > now + FUTURE_SKEW_S:
        raise ValidationError(f"{name} = {value:.0f} is {value - now:.0f} s in the future; check the clock or the unit")
    if value < 0:
        raise ValidationError(f"{name} must not be negative, got {value}")
    return value


class RoutingRequest:
    """A query embedding and its candidates, validated and stored as columns.

    ``metadata`` is the request's own metadata; each candidate's *metadata overlap* is the share
    of these entries it has with equal values.
    """

    __slots__ = ("query_embedding", "_candidates", "metadata", "query_unit", "query_is_zero", "candidate_units",
                 "candidate_is_zero", "created_at", "access_count", "frequency", "success_rate", "metadata_overlap", "ids",
                 "static_features",
                 "size", "_candidate_metadata", "_embeddings")

    def __init__(self, query_embedding: Any, candidates: Sequence[Candidate], metadata: dict[str, Any] | None = None) -> None:
        q = as_float_array(query_embedding, "query_embedding", ndim=1)
        if not isinstance(candidates, (list, tuple)) or not candidates:
            raise ValidationError("a routing request needs at least one candidate")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValidationError(f"request metadata must be a dict or None, got {type(metadata).__name__}")
        dim = q.shape[0]
        ids = []
        for c in candidates:
            if not isinstance(c, Candidate):
                raise ValidationError(f"candidates must be Candidate objects, got {type(c).__name__}")
            if c.embedding.shape[0] != dim:
                raise ValidationError(
                    f"candidate {c.id!r} has a {c.embedding.shape[0]}-d embedding but the query is {dim}-d"
                )
            ids.append(c.id)
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValidationError(f"candidate id {dup!r} appears twice; ids must be unique within a request")
        now = time.time()
        self._candidates: list[Candidate] | None = list(candidates)
        self._set_columns(
            q, ids, np.stack([c.unit for c in candidates]),
            np.array([c.norm == 0.0 for c in candidates], dtype=np.float32),
            np.array([now if c.created_at is None else c.created_at for c in candidates], dtype=np.float64),
            np.array([c.access_count for c in candidates], dtype=np.float64),
            np.array([c.success_rate for c in candidates], dtype=np.float32),
            [c.metadata for c in candidates], metadata,
        )

    def _set_columns(self, q: np.ndarray, ids: list[str], units: np.ndarray, is_zero: np.ndarray, created: np.ndarray,
                     counts: np.ndarray, rates: np.ndarray, metas: Sequence[dict[str, Any]],
                     request_metadata: dict[str, Any] | None) -> None:
        """The columns route() works on, from checked inputs (shared by both constructors)."""
        qn = _norm(q)
        self.query_embedding = q
        self.query_unit = (q / qn).astype(np.float32) if qn > 0 else q
        self.query_is_zero = qn == 0.0
        self.metadata = request_metadata
        self.ids = ids
        self.size = len(ids)
        self.candidate_units = units
        self.candidate_is_zero = is_zero
        self.created_at = created
        self.access_count = counts
        # the three features that do not depend on the clock or the query, one contiguous row each,
        # so that feature engineering copies them in one assignment; the named columns are views of it
        self.static_features = static = np.empty((3, len(ids)), dtype=np.float32)
        static[0] = np.minimum(np.log1p(counts) / LOG_MAX_ACCESS, 1.0)
        static[1] = rates
        if request_metadata:
            items = list(request_metadata.items())
            static[2] = [sum(1 for k, v in items if k in m and m[k] == v) / len(items) if m else 0.0 for m in metas]
        else:
            static[2] = 0.0
        self.frequency, self.success_rate, self.metadata_overlap = static[0], static[1], static[2]

    @property
    def candidates(self) -> list[Candidate]:
        """The candidates as objects (built on first use for requests made by :meth:`from_arrays`)."""
        if self._candidates is None:
            self._candidates = [
                Candidate(cid, emb, meta, float(t), int(n), float(sr))
                for cid, emb, meta, t, n, sr in zip(self.ids, self._embeddings, self._candidate_metadata, self.created_at,
                                                    self.access_count, self.success_rate)
            ]
        return self._candidates

    @classmethod
    def from_arrays(
        cls,
        query_embedding: Any,
        ids: Sequence[str],
        embeddings: Any,
        metadata: Sequence[dict[str, Any]] | None = None,
        created_at: Sequence[float | None] | None = None,
        access_count: Sequence[int] | None = None,
        success_rate: Sequence[float] | None = None,
        request_metadata: dict[str, Any] | None = None,
    ) -> "RoutingRequest":
        """Build a request from columns, checked as one batch (what the HTTP service uses).

        The same checks as building :class:`Candidate` objects — dimensions, NaN/Inf, float32 range,
        counts, rates, seconds-not-milliseconds, not in the future, unique ids — without a Python
        object per candidate.
        """
        self = cls.__new__(cls)
        q = as_float_array(query_embedding, "query_embedding", ndim=1)
        # one float64 conversion serves the checks, the norms and the unit vectors
        emb64 = as_float_array(embeddings, "candidate embeddings", ndim=2, dtype=np.float64)
        if np.abs(emb64).max() > FLOAT32_MAX:
            raise ValidationError("candidate embeddings have a value beyond float32's range; rescale the data")
        n = emb64.shape[0]
        ids = list(ids)
        if n == 0 or not ids:
            raise ValidationError("a routing request needs at least one candidate")
        if len(ids) != n:
            raise ValidationError(f"{len(ids)} candidate ids for {n} embeddings")
        if emb64.shape[1] != q.shape[0]:
            raise ValidationError(f"candidates have {emb64.shape[1]}-d embeddings but the query is {q.shape[0]}-d")
        if any(not isinstance(i, str) or not i for i in ids):
            raise ValidationError("candidate ids must be non-empty strings")
        if len(set(ids)) != n:
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValidationError(f"candidate id {dup!r} appears twice; ids must be unique within a request")
        meta = list(metadata) if metadata is not None else [{} for _ in ids]
        if len(meta) != n or any(not isinstance(m, dict) for m in meta):
            raise ValidationError("candidate metadata must be one dict per candidate")
        if request_metadata is not None and not isinstance(request_metadata, dict):
            raise ValidationError("request metadata must be a dict or None")
        now = time.time()
        created = np.array([now if t is None else t for t in created_at] if created_at is not None else [now] * n, dtype=np.float64)
        counts = np.array(access_count if access_count is not None else [0] * n, dtype=np.float64)
        rates = np.array(success_rate if success_rate is not None else [0.0] * n, dtype=np.float64)
        if created.shape != (n,) or counts.shape != (n,) or rates.shape != (n,):
            raise ValidationError("created_at, access_count and success_rate need one value per candidate")
        # one min and one max per column: NaN makes both comparisons fail, so it is caught too
        c_lo, c_hi = float(created.min()), float(created.max())
        if not (c_lo >= 0 and c_hi <= MILLISECOND_HINT and c_hi <= now + FUTURE_SKEW_S):
            if not np.isfinite(created).all() or c_lo < 0:
                raise ValidationError("created_at must be one finite, non-negative Unix time (seconds) per candidate")
            i = int(np.argmax(created))
            if created[i] > MILLISECOND_HINT:
                raise ValidationError(f"candidate {ids[i]!r} created_at = {created[i]:.0f} looks like milliseconds; pass seconds (divide by 1000)")
            raise ValidationError(f"candidate {ids[i]!r} created_at = {created[i]:.0f} is in the future; check the clock or the unit")
        if not (counts.min() >= 0 and counts.max() < 2**53 and (counts == np.floor(counts)).all()):
            raise ValidationError("access_count must be one non-negative integer per candidate")
        if not (rates.min() >= 0 and rates.max() <= 1):
            raise ValidationError("success_rate must be one number in [0, 1] per candidate")
        norms = np.sqrt(np.einsum("ij,ij->i", emb64, emb64))
        self._candidates = None
        self._embeddings = emb64.astype(np.float32)
        self._candidate_metadata = meta
        safe = np.where(norms > 0, norms, 1.0)
        self._set_columns(q, ids, (emb64 / safe[:, None]).astype(np.float32), (norms == 0).astype(np.float32),
                          created, counts, rates, meta, request_metadata)
        return self
