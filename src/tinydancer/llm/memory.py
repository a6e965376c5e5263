"""Outcome memory: what a router has already seen happen to a query, word for word.

A query router predicts a *smooth* function of the embedding, because one logged outcome is a
single noisy draw (did this model answer this question right, this time?) and neighbouring
queries must share their evidence.  When the very same query comes back, though, its own logged
outcomes are direct evidence about it, and they are often sharper than any neighbourhood: the
same question tends to get the same answers again.  Real traffic repeats itself (retries, FAQs,
benchmarks, templated prompts), and so do datasets: 119 of LLMRouter's 500 test questions appear
verbatim in its training split.

The memory maps a hash of the normalized query text to the sum and count of the outputs
observed for it, output by output.  At routing time each output of a remembered query is the
posterior mean

    (prior_weight · network output + Σ observed values) / (prior_weight + n observed),

so the network's prediction counts as ``prior_weight`` observations and the memory takes over
as evidence accumulates.  A training table observes every output of a query; feedback from the
service observes one model's (the one that answered), so counts are kept per output.  Queries
not in memory, and outputs never observed, are untouched.  Keys are 64-bit BLAKE2b hashes (no
query text is stored), sorted, so a batch is looked up with one ``searchsorted``.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .._validation import as_float_array, check_finite
from ..errors import ValidationError

AUX_KEYS = "memory.keys"
AUX_SUMS = "memory.sums"
AUX_COUNTS = "memory.counts"


def query_key(text: str) -> int:
    """64-bit key of a query: NFC-normalized, whitespace collapsed, case kept."""
    canonical = unicodedata.normalize("NFC", " ".join(text.split()))
    return int.from_bytes(hashlib.blake2b(canonical.encode("utf-8"), digest_size=8).digest(), "little")


def query_keys(texts: Sequence[str]) -> np.ndarray:
    return np.fromiter((query_key(t) for t in texts), dtype=np.uint64, count=len(texts))


def _blank(texts: Sequence[str]) -> np.ndarray:
    """Rows with no text (a table may carry only embeddings): never remembered, never looked up."""
    return np.fromiter((not t.strip() for t in texts), dtype=bool, count=len(texts))


@dataclass(frozen=True)
class OutcomeMemory:
    """Sums and counts of observed outputs per remembered query (rows sorted by key)."""

    keys: np.ndarray  # (n,) uint64, sorted, unique
    sums: np.ndarray  # (n, k) float64: observed values per output
    counts: np.ndarray  # (n, k) float64: observations per output, every row has some
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.prior_weight <= 0 or not np.isfinite(self.prior_weight):
            raise ValidationError("the memory's prior_weight must be a positive number (the network's weight in observations)")
        if self.keys.ndim != 1 or self.sums.ndim != 2 or self.counts.shape != self.sums.shape or len(self.sums) != len(self.keys):
            raise ValidationError(f"memory arrays disagree: keys {self.keys.shape}, sums {self.sums.shape}, counts {self.counts.shape}")
        if self.keys.dtype != np.uint64 or not (self.keys[1:] > self.keys[:-1]).all():
            raise ValidationError(f"memory keys must be sorted, unique uint64 (got {self.keys.dtype})")
        if (self.counts < 0).any() or (len(self.keys) and (self.counts.max(axis=1) <= 0).any()):
            raise ValidationError("every remembered query needs at least one observation, and no count can be negative")

    @classmethod
    def empty(cls, width: int, prior_weight: float = 1.0) -> "OutcomeMemory":
        return cls(np.zeros(0, np.uint64), np.zeros((0, width)), np.zeros((0, width)), prior_weight)

    @classmethod
    def build(cls, queries: Sequence[str], outputs: np.ndarray, prior_weight: float = 1.0) -> "OutcomeMemory":
        """Remember ``outputs[i]`` (targets on the network's output scale) for ``queries[i]``."""
        return cls.empty(0, prior_weight).merged(queries, outputs)

    def merged(self, queries: Sequence[str], outputs: np.ndarray, observed: np.ndarray | None = None) -> "OutcomeMemory":
        """A memory that also holds these observations (repeats add up); see :meth:`merged_keys`."""
        return self.merged_keys(query_keys(queries), outputs, observed, skip=_blank(queries))

    def merged_keys(self, keys: np.ndarray, outputs: np.ndarray, observed: np.ndarray | None = None,
                    skip: np.ndarray | None = None) -> "OutcomeMemory":
        """A memory that also holds ``outputs[i]`` for the query with key ``keys[i]``.

        ``observed`` (same shape as ``outputs``, bool) says which outputs were seen; the others
        (any value, NaN included) are ignored.  Default: all of them.  ``skip``: rows not to remember.
        """
        mask = np.ones(np.shape(outputs), dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
        if mask.shape != np.shape(outputs):
            raise ValidationError(f"observed mask {mask.shape} does not match outputs {np.shape(outputs)}")
        y = as_float_array(np.where(mask, outputs, 0.0), "remembered outputs", ndim=2, dtype=np.float64)
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys) != len(y):
            raise ValidationError(f"{len(keys)} queries for {len(y)} rows of outputs")
        if skip is not None:
            mask = mask & ~np.asarray(skip, dtype=bool)[:, None]
        if len(self.keys) and y.shape[1] != self.width:
            raise ValidationError(f"the memory holds {self.width} outputs per query, got {y.shape[1]}")
        seen = mask.any(axis=1)  # a row that observed nothing adds no entry
        keys, y, mask = keys[seen], y[seen], mask[seen]
        unique, inverse = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
        sums = np.zeros((len(unique), y.shape[1]))
        counts = np.zeros_like(sums)
        np.add.at(sums, inverse, np.vstack([self.sums.reshape(-1, y.shape[1]), y]))
        np.add.at(counts, inverse, np.vstack([self.counts.reshape(-1, y.shape[1]), mask]))
        return OutcomeMemory(unique, sums, counts, self.prior_weight)

    def corrected_keys(self, keys: np.ndarray, changes: np.ndarray, observed: np.ndarray) -> tuple["OutcomeMemory", np.ndarray]:
        """A memory whose observations of query ``keys[i]`` moved by ``changes[i]`` (new value −
        old) where ``observed[i]``, their counts kept: a corrected outcome replaces the one the
        memory counted instead of counting once more.  Rows whose key or output holds no
        observation are left out; returns the memory and which rows were applied."""
        rows = self.find(np.asarray(keys, dtype=np.uint64))
        if not len(self.keys):
            return self, np.zeros(len(rows), dtype=bool)
        mask = np.asarray(observed, dtype=bool) & (rows >= 0)[:, None]
        mask &= self.counts[np.maximum(rows, 0)] > 0
        applied = mask.any(axis=1)
        if not applied.any():
            return self, applied
        sums = self.sums.astype(np.float64, copy=True)
        np.add.at(sums, rows[applied], np.where(mask, np.asarray(changes, dtype=np.float64), 0.0)[applied])
        return OutcomeMemory(self.keys, sums, self.counts, self.prior_weight), applied

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def width(self) -> int:
        return int(self.sums.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes as stored (keys uint64, sums and counts float32)."""
        return len(self.keys) * (8 + 8 * self.width)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key in the memory, or -1."""
        if not len(self.keys):
            return np.full(len(keys), -1)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, pos, -1)

    def blend(self, queries: Sequence[str], outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``outputs`` with remembered queries moved to their posterior mean, and which were remembered."""
        return self.blend_keys(query_keys(queries), outputs, skip=_blank(queries))

    def blend_keys(self, keys: np.ndarray, outputs: np.ndarray, skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`blend` for queries given by their keys (``skip``: rows never to look up)."""
        rows = self.find(np.asarray(keys, dtype=np.uint64))
        hit = rows >= 0 if skip is None else (rows >= 0) & ~skip
        if not hit.any():
            return outputs, hit
        if outputs.shape[1] != self.width:
            raise ValidationError(f"the memory holds {self.width} outputs per query, the network gives {outputs.shape[1]}")
        out = outputs.copy()
        r = rows[hit]
        w = self.prior_weight
        out[hit] = ((w * outputs[hit] + self.sums[r]) / (w + self.counts[r])).astype(outputs.dtype)
        return out, hit

    # ------------------------------------------------------------------ files
    def to_tensors(self) -> dict[str, np.ndarray]:
        return {AUX_KEYS: self.keys.astype(np.uint64), AUX_SUMS: self.sums.astype(np.float32),
                AUX_COUNTS: self.counts.astype(np.float32)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], prior_weight: float) -> "OutcomeMemory | None":
        """The memory stored in a router file, ``None`` if it has none; raises ValidationError if damaged."""
        present = [k for k in (AUX_KEYS, AUX_SUMS, AUX_COUNTS) if k in tensors]
        if not present:
            return None
        if len(present) != 3:
            raise ValidationError(f"the outcome memory is incomplete (has only {present})")
        keys = tensors[AUX_KEYS]
        sums = np.asarray(tensors[AUX_SUMS], dtype=np.float64)
        counts = np.asarray(tensors[AUX_COUNTS], dtype=np.float64)
        check_finite(sums, "memory sums")
        check_finite(counts, "memory counts")
        return cls(keys, sums, counts, float(prior_weight))
