"""What routing returns: ranked decisions kept as columns, and the response around them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from .uncertainty import ConformalCalibrator


class RoutingDecision(NamedTuple):
    """One candidate's decision."""

    candidate_id: str
    confidence: float
    use_lightweight: bool
    #: conformal p-value of the alternative label; None when the model has no calibration
    uncertainty: float | None


class Decisions(Sequence[RoutingDecision]):
    """The ranked decisions, stored as columns; a :class:`RoutingDecision` is built when read.

    Building a hundred Python objects costs more than scoring a hundred candidates, and most
    callers read the first one or two.  Indexing, slicing, iteration and ``len`` work as on a list.
    """

    __slots__ = ("_ids", "_order", "_confidence", "_light", "_calibrator", "_unc")

    def __init__(self, ids: list[str], order: np.ndarray, confidence: np.ndarray, light: np.ndarray,
                 calibrator: ConformalCalibrator | None) -> None:
        self._ids = ids
        self._order = order
        self._confidence = confidence
        self._light = light
        self._calibrator = calibrator
        self._unc: np.ndarray | None = None

    @property
    def _uncertainty(self) -> np.ndarray | None:
        """Conformal uncertainty per candidate, computed on first read (the decision did not need it)."""
        if self._calibrator is None:
            return None
        if self._unc is None:
            conf = self._confidence
            self._unc = self._calibrator.uncertainty(np.where(np.isfinite(conf), conf, np.float32(0.5)))
        return self._unc

    def __len__(self) -> int:
        return len(self._order)

    def _row(self, i: int) -> RoutingDecision:
        unc = self._uncertainty
        return RoutingDecision(self._ids[i], float(self._confidence[i]), bool(self._light[i]),
                               None if unc is None else float(unc[i]))

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self._row(i) for i in self._order[k].tolist()]
        return self._row(int(self._order[k]))

    def __iter__(self) -> Any:
        order = self._order.tolist()
        conf, light = self._confidence[order].tolist(), self._light[order].tolist()
        unc_all = self._uncertainty
        unc = [None] * len(order) if unc_all is None else unc_all[order].tolist()
        ids = self._ids
        return (RoutingDecision(ids[i], c, li, u) for i, c, li, u in zip(order, conf, light, unc))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Decisions({list(self)!r})"

    def ranked_arrays(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(ids, order, confidence, lightweight, uncertainty), the arrays in rank order."""
        order = self._order
        unc = self._uncertainty
        return ([self._ids[i] for i in order.tolist()], order, self._confidence[order], self._light[order],
                None if unc is None else unc[order])


@dataclass
class RoutingResponse:
    decisions: Sequence[RoutingDecision]
    inference_time_us: float
    candidates_processed: int
    feature_time_us: float
    model_version: str = ""
    #: False when the model carries no conformal calibration (uncertainty is then None)
    calibrated: bool = True
    #: True when the circuit breaker was open and every candidate was sent to the powerful model
    fallback: bool = False
    fallback_reason: str | None = None
    #: the (N, 5) feature matrix the model scored (None for a fallback); what logs keep for retraining
    features: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": [
                {"candidate_id": d.candidate_id, "confidence": None if d.confidence != d.confidence else d.confidence,
                 "use_lightweight": d.use_lightweight, "uncertainty": d.uncertainty}
                for d in self.decisions
            ],
            "inference_time_us": self.inference_time_us,
            "candidates_processed": self.candidates_processed,
            "feature_time_us": self.feature_time_us,
            "model_version": self.model_version,
            "calibrated": self.calibrated,
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
        }
