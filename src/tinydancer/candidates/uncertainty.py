"""Split conformal prediction for the lightweight/powerful decision.

On held-out calibration data we record the nonconformity score of the true label,
``s = 1 - P(true label)``.  For a new candidate with predicted probability ``p`` the p-value of
label y is ``(#{calibration scores >= s_y} + 1) / (n + 1)``, and ``{y : p-value(y) > alpha}`` is
a prediction set that contains the true label with probability at least ``1 - alpha``.

The router's *uncertainty* is the p-value of the label the model did **not** predict.  So
``uncertainty <= max_uncertainty`` means exactly: at level ``1 - max_uncertainty`` the conformal
set is the single predicted label — the alternative is ruled out with that confidence.  A model
without calibration reports no uncertainty rather than inventing one.
"""

from __future__ import annotations

import numpy as np

from .._validation import as_float_array
from ..errors import ValidationError

AUX_KEY = "conformal_scores"


class ConformalCalibrator:
    """Sorted calibration nonconformity scores and the p-values they give."""

    def __init__(self, scores: np.ndarray) -> None:
        scores = as_float_array(scores, "conformal scores", ndim=1, dtype=np.float64)
        if scores.min() < 0 or scores.max() > 1:
            raise ValidationError("conformal scores must lie in [0, 1]")
        self.scores = np.sort(scores)
        self.n = int(scores.size)
        # float32 copy for the hot path; rounding to float32 keeps every score's order
        self._scores32 = self.scores.astype(np.float32)
        # the hot path compares |p - 0.5| with the scores shifted by 0.5, and reads the p-value of
        # "k calibration scores below" from a table: two NumPy calls fewer per request
        self._shifted32 = self._scores32 - np.float32(0.5)
        self._by_count = 1.0 - np.arange(self.n + 1) / (self.n + 1.0)

    @classmethod
    def fit(cls, probabilities: np.ndarray, labels: np.ndarray) -> "ConformalCalibrator":
        """Calibrate from P(label = 1) on held-out rows and their 0/1 labels."""
        p = as_float_array(probabilities, "calibration probabilities", ndim=1, dtype=np.float64)
        y = as_float_array(labels, "calibration labels", ndim=1, dtype=np.float64)
        if p.shape != y.shape:
            raise ValidationError("probabilities and labels must have the same length")
        if p.size < 20:
            raise ValidationError(f"{p.size} calibration rows are too few; use at least 20 (hundreds for tight coverage)")
        return cls(np.where(y >= 0.5, 1.0 - p, p))

    def p_values(self, probabilities: np.ndarray, label: int) -> np.ndarray:
        """p-value of ``label`` for each probability of label 1."""
        s = 1.0 - probabilities if label == 1 else probabilities
        below = np.searchsorted(self.scores, s, side="left")
        return (self.n - below + 1.0) / (self.n + 1.0)

    def uncertainty(self, probabilities: np.ndarray) -> np.ndarray:
        """p-value of the label not predicted (0.5 threshold): small = the alternative is ruled out."""
        # s = max(p, 1 - p) = 1 - P(alternative label) = |p - 0.5| + 0.5, compared as |p - 0.5|
        # (#{calibration >= s} + 1) / (n + 1)  ==  1 - #{calibration < s} / (n + 1)
        below = np.searchsorted(self._shifted32, np.abs(probabilities - np.float32(0.5)), side="left")
        return self._by_count[below]

    def certainty_cut(self, max_uncertainty: float) -> float:
        """The score ``s*`` with ``uncertainty(p) <= max_uncertainty``  ⇔  ``max(p, 1 - p) > s*``.

        uncertainty = 1 - #{calibration < s} / (n + 1) <= m  ⇔  #{calibration < s} >= k with
        k = ceil((1 - m)(n + 1)), i.e. s exceeds the k-th smallest score.  It lets the router
        decide with one comparison and compute the uncertainty values only when they are read.
        """
        k = int(np.ceil((1.0 - max_uncertainty) * (self.n + 1) - 1e-9))
        if k <= 0:
            return -np.inf
        if k > self.n:
            return np.inf  # too few calibration rows to ever be that sure
        return float(self._scores32[k - 1])

    def prediction_sets(self, probabilities: np.ndarray, alpha: float) -> np.ndarray:
        """(N, 2) booleans: is label 0 / label 1 in the 1 - alpha conformal set."""
        return np.column_stack([self.p_values(probabilities, 0) > alpha, self.p_values(probabilities, 1) > alpha])

    def attach(self, model: object) -> None:
        """Store the calibration in a model so it travels in the model file."""
        model.aux_tensors[AUX_KEY] = self.scores.astype(np.float32)  # type: ignore[attr-defined]

    @classmethod
    def from_model(cls, model: object) -> "ConformalCalibrator | None":
        scores = getattr(model, "aux_tensors", {}).get(AUX_KEY)
        return None if scores is None else cls(scores)
