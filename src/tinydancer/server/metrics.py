"""The service's Prometheus metrics (names start ``tiny_dancer_``), in a registry of its own per app."""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily

from ..circuit import BreakerState

#: the circuit-breaker state gauge's values
STATE_CODE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class BatchHistogram:
    """A Prometheus histogram fed many values in one call (one ``searchsorted``).

    prometheus_client's Histogram takes one value and one lock per call; ten candidates' confidences
    and uncertainties made twenty calls per request.  Optionally one series per label value.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry,
                 labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._edges = np.asarray(sorted(buckets), dtype=np.float64)
        self._edge_list = self._edges.tolist()
        # per label values: counts per bucket (the last: above every edge, +Inf) and the sum
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}
        if not self.labelnames:
            self._series[()] = (np.zeros(len(self._edges) + 1, dtype=np.int64), [0.0])
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float] | np.ndarray, *labelvalues: str) -> None:
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v.sum()):
            v = v[np.isfinite(v)]
        if not v.size:
            return
        counts = np.bincount(np.searchsorted(self._edges, v, side="left"), minlength=len(self._edges) + 1)
        with self._lock:
            series = self._series.setdefault(labelvalues, (np.zeros(len(self._edges) + 1, dtype=np.int64), [0.0]))
            series[0][:] += counts
            series[1][0] += float(v.sum())

    def observe(self, value: float, *labelvalues: str) -> None:
        """One value: a bisect on a list, no NumPy (a per-request call; ~10x cheaper than observe_many)."""
        if not math.isfinite(value):
            return
        i = bisect.bisect_left(self._edge_list, value)
        with self._lock:
            series = self._series.get(labelvalues)
            if series is None:
                series = self._series.setdefault(labelvalues, (np.zeros(len(self._edges) + 1, dtype=np.int64), [0.0]))
            series[0][i] += 1
            series[1][0] += value

    def collect(self) -> Any:
        with self._lock:
            snapshot = [(key, np.cumsum(counts).tolist(), total[0]) for key, (counts, total) in sorted(self._series.items())]
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [repr(float(e)) for e in self._edges.tolist()]
        for key, cumulative, total in snapshot:
            family.add_metric(list(key), list(zip(edges, cumulative[:-1])) + [("+Inf", cumulative[-1])], sum_value=total)
        yield family


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    ``POST /v1/route`` does not update them itself: seven updates, each behind a lock, cost ~25 µs
    of a ~450 µs request.  It appends one tuple (:meth:`route_done`), and the tuples are folded in
    as arrays every ``FOLD_EVERY`` requests and before every scrape, so ``/metrics`` is exact.
    """

    FOLD_EVERY = 256

    def endpoint_label(self, path: str) -> str:
        """``path`` if it is one of the app's routes, else ``"unmatched"``: a label taken from the raw
        path let unauthenticated junk GETs grow ``/metrics`` without limit (18 KB to 75 MB)."""
        return path if path in self.endpoints else "unmatched"

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tiny_dancer_requests", "Requests served", ["endpoint"], registry=r)
        self.routes = Counter("tiny_dancer_routes", "Routing decisions", ["decision"], registry=r)
        self.errors = Counter("tiny_dancer_errors", "Requests that failed", ["endpoint", "kind"], registry=r)
        #: the app's route paths: the only values the ``endpoint`` label takes (see endpoint_label)
        self.endpoints: frozenset[str] = frozenset()
        self.fallbacks = Counter("tiny_dancer_fallbacks", "Responses answered by the safe fallback", registry=r)
        self.breaker_trips = Counter("tiny_dancer_circuit_breaker_trips", "Times the circuit breaker opened", registry=r)
        self.breaker_state = Gauge("tiny_dancer_circuit_breaker_state", "0 closed, 1 half-open, 2 open", registry=r)
        self.reloads = Counter("tiny_dancer_model_reloads", "Model reloads", ["result"], registry=r)
        self.feedback = Counter("tiny_dancer_feedback", "Outcomes recorded", ["success"], registry=r)
        self.latency = BatchHistogram("tiny_dancer_request_latency_seconds", "Handler latency",
                                      (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0), r, ["endpoint"])
        self.inference = BatchHistogram("tiny_dancer_inference_latency_seconds", "Router.route() time",
                                        (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3), r)
        prob = tuple(np.round(np.linspace(0.1, 1.0, 10), 2).tolist())
        self.confidence = BatchHistogram("tiny_dancer_confidence", "Decision confidence", prob, r)
        self.uncertainty = BatchHistogram("tiny_dancer_uncertainty", "Decision uncertainty", prob, r)
        self.model_info = Gauge("tiny_dancer_model_loaded", "1 when a model is being served", ["version"], registry=r)
        self.explorations = Counter("tiny_dancer_query_explorations", "Queries sent to a random model", registry=r)
        self.storage_ok = Gauge("tiny_dancer_storage_ok", "1 while the decision log can be written, 0 while it fails", registry=r)
        self.log_pending = Gauge("tiny_dancer_decision_log_pending_rows", "Decision rows waiting to be written", registry=r)
        self.log_dropped = Counter("tiny_dancer_decision_log_dropped_rows", "Log rows dropped: storage failed and the buffer "
                                   "was full, or a row no database could store was refused alone", registry=r)
        self._routes: list[tuple[int, int, bool, float, float, np.ndarray, np.ndarray | None]] = []

    def route_done(self, n: int, n_light: int, fallback: bool, inference_s: float, latency_s: float,
                   confidence: np.ndarray, uncertainty: np.ndarray | None) -> None:
        """Record one POST /v1/route (call from the event loop's thread)."""
        self._routes.append((n, n_light, fallback, inference_s, latency_s, confidence, uncertainty))
        if len(self._routes) >= self.FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Fold the recorded routes into the Prometheus metrics."""
        routes, self._routes = self._routes, []
        if not routes:
            return
        n, light, fallback, inference, latency, conf, unc = zip(*routes)
        self.requests.labels("/v1/route").inc(len(routes))
        self.routes.labels("lightweight").inc(sum(light))
        self.routes.labels("powerful").inc(sum(n) - sum(light))
        if any(fallback):
            self.fallbacks.inc(sum(fallback))
        self.inference.observe_many(inference)
        self.latency.observe_many(latency, "/v1/route")
        self.confidence.observe_many(np.concatenate(conf))
        known = [u for u in unc if u is not None]
        if known:
            self.uncertainty.observe_many(np.concatenate(known))
