"""The operating point held on this gateway's own traffic: ``strong_share: 0.3`` means 30 % of
*these* routed calls, not 30 % of the router's training prompts.

A router file stores its training prompts' score distribution (101 quantiles), and
``QueryRouter.operating_point(strong_share=...)`` takes its threshold there.  A router trained
on MMLU then sent 19 % of a chat application's calls to strong at ``strong_share: 0.3``: the
traffic is not the training set.  :class:`LiveOperatingPoint` keeps the router's outputs for
the last ``live_window`` routed calls and takes the threshold (or, for more models and a
``budget``, the cost weight) on them.

Why a rolling window and not a streaming quantile sketch: a window is exact, a few kilobytes
(2,000 floats), and forgets, so the point follows traffic that drifts over a day or after a
release; a sketch converges to the all-time distribution and would keep serving last month's mix.
The window's cost is a ``np.quantile`` over it every ``window // 200`` calls (tens of µs).

Warm start: a new window is filled with the router file's stored quantiles (interpolated to the
window's length), so the first calls are routed exactly as before; each routed call pushes out
the oldest entry, so after ``live_window`` calls the point is the traffic's alone.  More-model
routers store no such distribution: under a ``budget`` they keep the router's own point until
``MIN_LIVE`` calls are in the window.

Per router version: a promoted router scores on another scale, so its window is the recent
traffic scored again by it: the window keeps each routed call's embedding (``live_window`` ×
the embedding's width, 2 MB at 2,000 × 256 float32), and a hot-reloaded router re-scores them
(its network and head, without the outcome memory, which needs the texts).  Slots with no
embedding (the warm start, a window restored from its file) start from the new router's file.  The window is written
atomically to a JSON file beside the log (``<database>.live.json``) by the service's watcher and
at shutdown, and read back at start when it belongs to the router being served.  With PostgreSQL
replicas each replica keeps its own file: each sees a sample of the same traffic behind the load
balancer, so each converges to the same quantile, and none waits on another.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json
from ..errors import ValidationError
from ..llm.evaluation import cost_weight_for_budget
from ..llm.query_router import OperatingPoint, QueryRouter
from .config import OperatingPointSpec

__all__ = ["LiveOperatingPoint", "LiveTally", "MIN_LIVE"]

log = logging.getLogger("tinydancer.gateway")

#: routed calls a more-model router's window needs before a budget is taken on it
MIN_LIVE = 50


def _threshold(scores: np.ndarray, share: float) -> float:
    """The threshold that sends ``share`` of ``scores`` to strong (as ``QueryRouter.calibrate``)."""
    threshold = float(np.quantile(scores, 1.0 - share))
    if share == 0.0:  # scores are float32 and compared in float32: one ulp up sends none
        threshold = float(np.nextafter(np.float32(threshold), np.float32(np.inf)))
    return threshold


class LiveOperatingPoint:
    """The router's outputs over the last ``window`` routed calls, and the point taken on them."""

    def __init__(self, router: QueryRouter, version: str, spec: OperatingPointSpec, state_path: Path | None) -> None:
        self.spec = spec
        self.state_path = state_path
        self.size = spec.live_window
        self._dirty = False
        self._start(router, version, restore=True)

    # ------------------------------------------------------------------ the window
    @property
    def live(self) -> bool:
        """Whether the configured point moves with the traffic (strong_share or budget set)."""
        return self.spec.strong_share is not None or self.spec.budget is not None

    def check(self, router: QueryRouter) -> None:
        """Raise ValidationError when the configured knob does not fit ``router`` (at start, and for a
        router about to be hot-reloaded, before anything changes)."""
        router.operating_point(**self.spec.knobs())
        if self.spec.budget is not None and self.spec.budget < float(router.costs.min()):
            raise ValidationError(f"a budget of ${self.spec.budget:g} a call is below the cheapest model's "
                                  f"${float(router.costs.min()):g} (the router's per-model costs)")

    def _start(self, router: QueryRouter, version: str, restore: bool) -> None:
        self.check(router)
        # a more-model budget searches cost weights over the window (milliseconds): less often
        self.refresh = max(1, self.size // (200 if router.is_pair else 20))
        self.router = router
        self.version = version
        width = 1 if router.is_pair else len(router.models)
        self.values = np.full((self.size, width), np.nan, dtype=np.float32)
        self.pos = 0  # the next slot to write
        self.traffic = 0  # routed calls seen by this window (the rest of it is the warm start)
        #: each slot's embedding, where the call that wrote it had one (for re-scoring at a switch)
        self.inputs: np.ndarray | None = None
        self.known = np.zeros(self.size, dtype=bool)
        if router.is_pair and router.score_quantiles is not None:
            levels = np.linspace(0.0, 1.0, len(router.score_quantiles))
            warm = np.interp(np.linspace(0.0, 1.0, self.size), levels, router.score_quantiles)
            # in a fixed shuffled order: calls overwrite the window from slot 0, and in ascending
            # order the first calls would replace the lowest scores only, holding the threshold high
            # (too few strong calls) until the window had turned over once
            self.values[:, 0] = warm[np.random.default_rng(0).permutation(self.size)]
        if restore and self.state_path is not None:
            self._restore()
        self._since = 0
        self.point = self._compute(None)

    def switch(self, router: QueryRouter, version: str) -> OperatingPoint:
        """A hot-reloaded router: when its version is another, a new window of the recent calls scored
        again by it (slots with no embedding start from its file)."""
        if version != self.version or router.models != self.router.models:
            carried = (self.inputs, self.known, self.pos) if router.models == self.router.models else None
            self._start(router, version, restore=False)
            if carried is not None:
                self._rescore(*carried)
            self._dirty = True
        else:
            self.router = router
            self.point = self._compute(None)
        return self.point

    def _rescore(self, inputs: np.ndarray | None, known: np.ndarray, pos: int) -> None:
        """The old window's calls scored by the new router: the window is this traffic's at once."""
        if inputs is None or not known.any():
            return
        try:
            out = self.router.estimate(inputs[known])
        except (ValidationError, ValueError) as exc:  # another embedding width: start from the file
            log.warning("the live window was not re-scored by the new router (%s); it starts from its file", exc)
            return
        self.values[known] = out[:, 2:3] if self.router.is_pair else out[:, : self.values.shape[1]]
        self.inputs, self.known, self.pos = inputs, known, pos  # the oldest call is still the next to go
        self.traffic = int(known.sum())
        self.point = self._compute(None)

    def observe(self, values: list[float], embedding: np.ndarray | None = None) -> None:
        """One routed call's router outputs (what ``QueryRouter.ranking`` read), and its embedding,
        kept so that a promoted router can score the same traffic again."""
        self.values[self.pos] = values[2] if self.router.is_pair else values[: self.values.shape[1]]
        if embedding is not None:
            row = np.asarray(embedding, dtype=np.float32).reshape(-1)
            if self.inputs is None or self.inputs.shape[1] != row.shape[0]:
                self.inputs = np.zeros((self.size, row.shape[0]), dtype=np.float32)
                self.known[:] = False
            self.inputs[self.pos] = row
        self.known[self.pos] = embedding is not None and self.inputs is not None
        self.pos = (self.pos + 1) % self.size
        self.traffic += 1
        self._dirty = True
        self._since += 1
        if self._since >= self.refresh and self.live:
            self._since = 0
            self.point = self._compute(None)

    def _filled(self) -> np.ndarray:
        """The window's entries that hold a value (a window with no warm start fills as calls arrive)."""
        if self.traffic >= self.size:
            return self.values
        return self.values[np.isfinite(self.values).all(axis=1)]

    # ------------------------------------------------------------------ the point
    def _share_for_budget(self, budget: float) -> float:
        r = self.router
        strong, weak = float(r.costs[r.strong]), float(r.costs[r.weak])
        if strong <= weak:
            return 1.0
        return float(np.clip((budget - weak) / (strong - weak), 0.0, 1.0))

    def _compute(self, strong_share: float | None) -> OperatingPoint:
        r = self.router
        spec = self.spec
        if r.is_pair:
            share = strong_share if strong_share is not None else spec.strong_share
            if share is None and spec.budget is not None:
                share = self._share_for_budget(spec.budget)
            if share is None or len(self._filled()) < MIN_LIVE:
                return r.operating_point(strong_share=share) if share is not None else r.operating_point()
            return OperatingPoint(_threshold(self._filled()[:, 0], share), r.cost_weight, r.quality_bar)
        if strong_share is not None:
            r.operating_point(strong_share=strong_share)  # raises: a more-model router has no strong share
        if spec.budget is None:
            return r.operating_point(**spec.knobs())
        if self.traffic < MIN_LIVE:
            return r.operating_point()
        found = cost_weight_for_budget(self._filled(), r.costs, spec.budget)
        if found is None:  # the budget is below every model on this traffic: the cheapest everywhere
            return OperatingPoint(r.threshold, float("inf"), None)
        return OperatingPoint(r.threshold, found[0], None)

    def at_share(self, strong_share: float) -> OperatingPoint:
        """A call's own ``strong_share``: a threshold taken on the same live window."""
        return self._compute(strong_share)

    def describe(self) -> dict[str, Any]:
        """What ``GET /admin/upstreams`` shows: the router version, the window and the point in use."""
        return {"router_version": self.version, "live": self.live, "window": self.size,
                "routed_calls_in_window": min(self.traffic, self.size), "point": self.point.to_dict()}

    # ------------------------------------------------------------------ the file
    def snapshot(self) -> dict[str, Any] | None:
        """The window, for :meth:`save`, when it changed since the last one (taken on the event loop;
        written elsewhere)."""
        if not self._dirty:
            return None
        self._dirty = False
        # a copy of the window (8 KB); its 2,000 values are formatted by save(), off the event loop
        return {"version": self.version, "models": self.router.models, "window": self.size, "pos": self.pos,
                "traffic": self.traffic, "values": self.values.copy()}

    def save(self, snapshot: dict[str, Any] | None = None) -> None:
        data = self.snapshot() if snapshot is None else snapshot
        if data is not None and self.state_path is not None:
            values = data["values"]
            filled = np.isfinite(values).all(axis=1)
            data = {**data, "values": [None if not ok else [round(float(v), 7) for v in row]
                                       for row, ok in zip(values, filled)]}
            atomic_write_json(self.state_path, data)

    def _restore(self) -> None:
        assert self.state_path is not None
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("the live operating point's file %s was not read (%s); starting from the router file",
                        self.state_path, exc)
            return
        if (data.get("version") != self.version or data.get("models") != self.router.models
                or data.get("window") != self.size):
            log.info("the live window in %s belongs to another router version or window size; starting afresh",
                     self.state_path)
            return
        try:
            rows = [[np.nan] * self.values.shape[1] if row is None else row for row in data["values"]]
            values = np.asarray(rows, dtype=np.float32)
            if values.shape != self.values.shape:
                raise ValidationError(f"expected {self.values.shape} values, found {values.shape}")
            self.values, self.pos, self.traffic = values, int(data["pos"]) % self.size, int(data["traffic"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            log.warning("the live window in %s is damaged (%s); starting from the router file", self.state_path, exc)


class LiveTally:
    """What the last ``size`` routed calls did: the share that went to the strong model and the
    mean dollars a served call cost (the live metrics; unknown costs are left out of the mean)."""

    def __init__(self, size: int) -> None:
        self.strong = np.zeros(size, dtype=np.float64)
        self.cost = np.full(size, np.nan)
        self.pos = 0
        self.n = 0

    def add(self, strong: bool, cost: float | None) -> None:
        self.strong[self.pos] = 1.0 if strong else 0.0
        self.cost[self.pos] = np.nan if cost is None else cost
        self.pos = (self.pos + 1) % len(self.strong)
        self.n = min(self.n + 1, len(self.strong))

    def strong_share(self) -> float:
        return float(self.strong.sum() / self.n) if self.n else 0.0

    def spend_per_call(self) -> float:
        known = self.cost[np.isfinite(self.cost)]
        return float(known.mean()) if known.size else 0.0
