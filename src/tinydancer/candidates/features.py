"""The seed's five candidate features, computed for all candidates of a request at once.

    similarity   cosine(query, candidate)          one matrix-vector product over unit vectors
    recency      exp(-recency_decay * age_seconds)
    frequency    min(log(1 + access_count) / log(1 + 10000), 1)   (a function of the stored count
                 alone, so the request computes it when it is built, like its other columns)
    success      the candidate's historical success rate
    metadata     share of the request's metadata entries the candidate matches

Each is multiplied by its weight, as the crate does (the model's stored z-score makes the
weights a matter of convention, not of accuracy).  Zero vectors follow the crate: two zero
vectors have similarity 1, a zero and a non-zero vector 0.

The matrix is built as five contiguous rows (feature × candidate) and handed out as its (N, 5)
transpose: every write is then contiguous, where the columns of an (N, 5) array are strided and
cost NumPy several times as much per element (this is the router's hot path; the values are the
same float32 operations either way, checked against a plain reference in tests/test_routing.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .._validation import check_number
from .request import RoutingRequest

FEATURE_NAMES = ("similarity", "recency", "frequency", "success_rate", "metadata_overlap")


@dataclass(frozen=True)
class FeatureConfig:
    similarity_weight: float = 0.4
    recency_weight: float = 0.2
    frequency_weight: float = 0.15
    success_weight: float = 0.15
    metadata_weight: float = 0.1
    #: per second of age
    recency_decay: float = 0.001

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            check_number("FeatureConfig", name, value, low=0.0)

    @property
    def weights(self) -> np.ndarray:
        return np.array([self.similarity_weight, self.recency_weight, self.frequency_weight,
                         self.success_weight, self.metadata_weight], dtype=np.float32)


class FeatureEngineer:
    """Turns a validated :class:`RoutingRequest` into an (N, 5) float32 feature matrix."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self._weights = self.config.weights
        self._weight_col = np.ascontiguousarray(self._weights[:, None])
        self._neg_decay = -self.config.recency_decay

    def compute(self, request: RoutingRequest, now: float | None = None) -> np.ndarray:
        """The (N, 5) weighted features (a transposed view of a C-contiguous (5, N) array)."""
        now = time.time() if now is None else now
        rows = np.empty((5, request.size), dtype=np.float32)
        if request.query_is_zero:
            rows[0] = request.candidate_is_zero  # both zero → 1, zero vs non-zero → 0
        else:
            np.matmul(request.candidate_units, request.query_unit, out=rows[0])
        age = np.subtract(now, request.created_at)
        np.maximum(age, 0.0, out=age)
        age *= self._neg_decay
        np.exp(age, out=age)
        rows[1] = age
        rows[2:] = request.static_features  # frequency, success rate, metadata overlap, as rows
        rows *= self._weight_col
        return rows.T
