"""What routing returns: ranked decisions kept as columns, and the response around them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
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


#: RoutingDecision._make without its Python frame and length check (the rows are built here, 4 wide)
_new_decision = partial(tuple.__new__, RoutingDecision)


class DecisionColumns(NamedTuple):
    """Every decision of a response as arrays, in rank order: the fast way to read a whole response.

    Row ``k`` is the ``k``-th best candidate.  ``order[k]`` is its position in the request, so
    ``request.ids[order[k]] == candidate_ids[k]`` and ``response.features[order]`` are the features
    in rank order.
    """

    candidate_ids: list[str]
    #: float32 scores; NaN where the model produced a non-finite score
    confidence: np.ndarray
    use_lightweight: np.ndarray
    #: conformal p-values of the label not predicted; None when the model has no calibration
    uncertainty: np.ndarray | None
    order: np.ndarray


class Decisions(Sequence[RoutingDecision]):
    """The ranked decisions, stored as columns; a :class:`RoutingDecision` is built when read.

    Building a hundred Python objects costs more than scoring a hundred candidates, and many
    callers read only the first one or two, or want arrays: :meth:`columns` gives every decision,
    uncertainty included, without an object per candidate.  Indexing, slicing, iteration and
    ``len`` work as on a list.
    """

    __slots__ = ("_ids", "_order", "_confidence", "_light", "_calibrator", "_all_finite", "_columns")

    def __init__(self, ids: list[str], order: np.ndarray, confidence: np.ndarray, light: np.ndarray,
                 calibrator: ConformalCalibrator | None, all_finite: bool = False) -> None:
        self._ids = ids
        self._all_finite = all_finite  # the router knows; False makes columns() check
        self._order = order
        self._confidence = confidence
        self._light = light
        self._calibrator = calibrator
        self._columns: DecisionColumns | None = None

    def columns(self) -> DecisionColumns:
        """All decisions as ranked arrays, with every candidate's uncertainty (computed once)."""
        if self._columns is None:
            order = self._order
            conf = self._confidence[order]
            unc = None
            if self._calibrator is not None:
                unc = self._calibrator.uncertainty(conf if self._all_finite else np.where(np.isfinite(conf), conf, np.float32(0.5)))
            ids = self._ids
            ranked = [ids[0]] if len(order) == 1 else list(itemgetter(*order.tolist())(ids))
            self._columns = DecisionColumns(ranked, conf, self._light[order], unc, order)
        return self._columns

    def __len__(self) -> int:
        return len(self._order)

    def _row(self, k: int) -> RoutingDecision:
        """The decision ranked ``k`` (0 = best), without building the others."""
        i = int(self._order[k])
        conf = float(self._confidence[i])
        unc = None
        if self._calibrator is not None:
            unc = float(self._calibrator.uncertainty(np.array([conf if math.isfinite(conf) else 0.5], dtype=np.float32))[0])
        return RoutingDecision(self._ids[i], conf, bool(self._light[i]), unc)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return list(self)[k]
        n = len(self._order)
        if not -n <= k < n:
            raise IndexError("decision index out of range")
        return self._row(k % n)

    def __iter__(self) -> Any:
        c = self.columns()
        unc = [None] * len(c.order) if c.uncertainty is None else c.uncertainty.tolist()
        return map(_new_decision, zip(c.candidate_ids, c.confidence.tolist(), c.use_lightweight.tolist(), unc))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Decisions({list(self)!r})"


@dataclass
class RoutingResponse:
    """What :meth:`Router.route` returns.  ``decisions`` reads like a list of :class:`RoutingDecision`
    (best first); :meth:`columns` gives them all as arrays."""

    decisions: Decisions
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

    def columns(self) -> DecisionColumns:
        """Every decision as ranked arrays, uncertainty included (see :class:`DecisionColumns`)."""
        return self.decisions.columns()

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
