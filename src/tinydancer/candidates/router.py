"""The seed's candidate-scoring Router: which candidates can go to the lightweight model.

Data is validated and turned into arrays where it enters — building a :class:`Candidate` checks
and unit-normalizes its embedding, building a :class:`RoutingRequest` stacks the candidates into
columns — so :meth:`Router.route` is array work only: five features for all candidates, one
FastGRNN pass, conformal uncertainty, a sort.  It never crashes on a bad score: a non-finite
confidence sorts last and routes powerful, and counts as a failure for the circuit breaker.

Hot reload swaps one immutable bundle (model + calibration) after loading and checking the new
file completely; a route() running in another thread keeps the bundle it started with.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from .._validation import FLOAT32_MAX, as_float_array
from ..circuit import BreakerState, CircuitBreaker
from ..errors import ModelFileError, TinyDancerError, ValidationError
from .features import FEATURE_NAMES, MAX_EXPECTED_ACCESS, FeatureConfig, FeatureEngineer
from ..nn.model import FastGRNN
from .uncertainty import ConformalCalibrator

#: a timestamp above this many seconds (the year 5138) is almost surely in milliseconds
MILLISECOND_HINT = 1e11
#: tolerated clock skew for timestamps "in the future"
FUTURE_SKEW_S = 300.0
LOG_MAX_ACCESS = math.log1p(MAX_EXPECTED_ACCESS)
_ZERO_ORDER = np.zeros(1, dtype=np.intp)


def default_model_path() -> Path:
    """``$TINY_DANCER_MODEL`` or ``models/default.safetensors`` (written by ``make demo``)."""
    return Path(os.environ.get("TINY_DANCER_MODEL") or Path("models") / "default.safetensors")


class CircuitOpenError(TinyDancerError, RuntimeError):
    """Raised by route() while the breaker is open and ``fallback_on_open`` is off."""


# ---------------------------------------------------------------------- request types
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
        self.frequency = np.minimum(np.log1p(counts) / LOG_MAX_ACCESS, 1.0).astype(np.float32)
        self.success_rate = rates.astype(np.float32, copy=False)
        if request_metadata:
            items = list(request_metadata.items())
            self.metadata_overlap = np.array(
                [sum(1 for k, v in items if k in m and m[k] == v) / len(items) if m else 0.0 for m in metas],
                dtype=np.float32)
        else:
            self.metadata_overlap = np.zeros(len(ids), dtype=np.float32)

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


# ---------------------------------------------------------------------- router
@dataclass
class RouterConfig:
    """The seed's router settings (with its defaults) plus the breaker's timing and fallback."""

    model_path: str | os.PathLike[str] | None = None
    confidence_threshold: float = 0.85
    max_uncertainty: float = 0.15
    enable_circuit_breaker: bool = True
    circuit_breaker_threshold: int = 5
    #: store the weights as int8 (dequantized once at load); the seed's default
    enable_quantization: bool = True
    database_path: str | os.PathLike[str] | None = None
    circuit_breaker_timeout_s: float = 30.0
    circuit_breaker_probes: int = 1
    #: while the breaker is open: answer "everything powerful" (marked) instead of raising
    fallback_on_open: bool = True
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        for name in ("confidence_threshold", "max_uncertainty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValidationError(f"RouterConfig.{name} must be in [0, 1], got {v!r}")
        if int(self.circuit_breaker_threshold) < 1:
            raise ValidationError("circuit_breaker_threshold must be >= 1")


@dataclass(frozen=True)
class ServedModel:
    """What route() uses, swapped as one unit by reload_model()."""

    model: FastGRNN
    calibrator: ConformalCalibrator | None
    path: str
    sha256: str
    version: str
    loaded_at: float


def load_served_model(path: str | os.PathLike[str], quantize: bool) -> ServedModel:
    """Load, check and prepare a candidate-scoring model completely (no state is touched)."""
    path = Path(path)
    data = _read_bytes(path)
    model = FastGRNN.load(path)
    if model.config.input_dim != len(FEATURE_NAMES) or model.config.output_dim != 1:
        raise ModelFileError(
            f"{path} takes {model.config.input_dim} features and has {model.config.output_dim} outputs; a candidate-"
            f"scoring model takes the {len(FEATURE_NAMES)} router features {FEATURE_NAMES} and has 1 output"
        )
    calibrator = ConformalCalibrator.from_model(model)
    if quantize and model.quantized is None:
        model.quantize()
    probe = np.array([[0.4, 0.2, 0.15, 0.15, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    if not np.isfinite(model.predict(probe)).all():
        raise ModelFileError(f"{path} produces non-finite scores; refusing to serve it")
    digest = hashlib.sha256(data).hexdigest()
    version = model.extra_metadata.get("version") or f"sha256:{digest[:12]}"
    return ServedModel(model, calibrator, str(path), digest, version, time.time())


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"no model file at {path}: train one (`tinydancer train`, `tinydancer retrain`) or run `make demo` "
            "for the default model"
        ) from None
    except (OSError, ValueError) as exc:  # a directory, no permission, a name too long, a NUL byte, ...
        reason = getattr(exc, "strerror", None) or exc
        raise ModelFileError(f"cannot read a model file at {str(path)[:200]!r}: {reason}") from None


class Router:
    """Scores candidates for a query and decides which may use the lightweight model."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        path = self.config.model_path if self.config.model_path is not None else default_model_path()
        self.model_path = Path(path)
        self._served = load_served_model(self.model_path, self.config.enable_quantization)
        self._reload_lock = threading.Lock()
        self.features = FeatureEngineer(self.config.feature_config)
        self._cut_key: tuple[str, float] | None = None
        self._cut = 0.0
        self.breaker: CircuitBreaker | None = None
        if self.config.enable_circuit_breaker:
            self.breaker = CircuitBreaker(self.config.circuit_breaker_threshold, self.config.circuit_breaker_timeout_s,
                                          self.config.circuit_breaker_probes)

    @property
    def served(self) -> ServedModel:
        return self._served

    # ------------------------------------------------------------------ routing
    def route(self, request: RoutingRequest) -> RoutingResponse:
        start = time.perf_counter()
        served = self._served  # one read: a concurrent reload cannot mix two models in one answer
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            return self._fallback(request, served, start, "circuit breaker open")
        feats = self.features.compute(request)
        feature_done = time.perf_counter()
        try:
            conf = served.model.predict_trusted(feats)[:, 0]
        except Exception as exc:  # inference itself failed: count it, then fail safe
            if breaker is not None:
                breaker.record_failure()
            if self.config.fallback_on_open:
                return self._fallback(request, served, start, f"inference failed: {exc}")
            raise
        all_finite = math.isfinite(conf.sum())
        # a non-finite score never sorts first and never routes light
        ranked = conf if all_finite else np.where(np.isfinite(conf), conf, -np.inf)
        light = self._lightweight(ranked, served)
        order = np.argsort(-ranked, kind="stable") if request.size > 1 else _ZERO_ORDER
        if breaker is not None:
            if all_finite:
                breaker.record_success()
            else:
                breaker.record_failure()
        now = time.perf_counter()
        return RoutingResponse(
            Decisions(request.ids, order, conf, light, served.calibrator),
            (now - start) * 1e6,
            request.size,
            (feature_done - start) * 1e6,
            served.version,
            served.calibrator is not None,
            features=feats,
        )

    def _lightweight(self, conf: np.ndarray, served: ServedModel) -> np.ndarray:
        """confidence >= threshold and uncertainty <= max_uncertainty, as comparisons on the score.

        ``uncertainty <= m`` ⇔ ``max(p, 1 - p) > s*`` (``ConformalCalibrator.certainty_cut``).
        When the threshold is at least 0.5, ``max(p, 1 - p) = p`` wherever the first test holds.
        """
        thr = self.config.confidence_threshold
        if served.calibrator is None:
            return conf >= thr
        key = (served.sha256, self.config.max_uncertainty)
        if self._cut_key != key:
            self._cut = served.calibrator.certainty_cut(self.config.max_uncertainty)
            self._cut_key = key
        cut = self._cut
        if thr >= 0.5:
            return conf > cut if cut >= thr else conf >= thr
        spread = np.abs(conf - np.float32(0.5))
        spread += np.float32(0.5)
        return (conf >= thr) & (spread > cut)

    def _fallback(self, request: RoutingRequest, served: ServedModel, start: float, reason: str) -> RoutingResponse:
        if not self.config.fallback_on_open:
            raise CircuitOpenError(f"routing refused: {reason}; retry in {self.breaker.status()['retry_in_s'] if self.breaker else 0} s")
        n = request.size
        decisions = Decisions(request.ids, np.arange(n), np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool), None)
        return RoutingResponse(decisions, (time.perf_counter() - start) * 1e6, request.size, 0.0,
                               served.version, served.calibrator is not None, True, reason)

    # ------------------------------------------------------------------ operations
    def reload_model(self, path: str | os.PathLike[str] | None = None) -> ServedModel:
        """Load and check a model file, then swap it in atomically; on error the old one keeps serving."""
        with self._reload_lock:
            target = Path(path) if path is not None else self.model_path
            new = load_served_model(target, self.config.enable_quantization)
            self._served = new
            self.model_path = target
            return new

    def circuit_breaker_status(self) -> bool | None:
        """The seed's call: True when closed (healthy), False when open or half-open, None if disabled."""
        return None if self.breaker is None else self.breaker.state is BreakerState.CLOSED

    def set_thresholds(self, confidence_threshold: float | None = None, max_uncertainty: float | None = None) -> None:
        """Change the decision thresholds live (validated)."""
        new = dict(confidence_threshold=self.config.confidence_threshold, max_uncertainty=self.config.max_uncertainty)
        if confidence_threshold is not None:
            new["confidence_threshold"] = confidence_threshold
        if max_uncertainty is not None:
            new["max_uncertainty"] = max_uncertainty
        RouterConfig(model_path=self.model_path, **new)  # validates
        self.config.confidence_threshold = new["confidence_threshold"]
        self.config.max_uncertainty = new["max_uncertainty"]
