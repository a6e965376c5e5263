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

import numpy as np

from .._validation import check_number
from ..circuit import BreakerState, CircuitBreaker
from ..errors import ModelFileError, TinyDancerError
from ..nn import FastGRNN
from .decisions import Decisions, RoutingResponse
from .features import FEATURE_NAMES, FeatureConfig, FeatureEngineer
from .request import RoutingRequest
from .uncertainty import ConformalCalibrator

_ZERO_ORDER = np.zeros(1, dtype=np.intp)


def default_model_path() -> Path:
    """``$TINY_DANCER_MODEL`` or ``models/default.safetensors`` (written by ``make demo``)."""
    return Path(os.environ.get("TINY_DANCER_MODEL") or Path("models") / "default.safetensors")


class CircuitOpenError(TinyDancerError, RuntimeError):
    """Raised by route() while the breaker is open and ``fallback_on_open`` is off."""


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
            check_number("RouterConfig", name, getattr(self, name), low=0.0, high=1.0)
        check_number("RouterConfig", "circuit_breaker_threshold", self.circuit_breaker_threshold, low=1, integer=True)


@dataclass(frozen=True)
class ServedModel:
    """What route() uses, swapped as one unit by reload_model()."""

    model: FastGRNN
    calibrator: ConformalCalibrator | None
    path: str
    sha256: str
    version: str
    loaded_at: float


def load_served_model(path: str | os.PathLike[str], quantize: bool, data: bytes | None = None) -> ServedModel:
    """Load, check and prepare a candidate-scoring model completely (no state is touched).

    The file is read once (or ``data``, its bytes read by the caller, is used), so the model served
    is exactly the bytes whose sha256 is reported.
    """
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    model = FastGRNN.from_bytes(data, str(path))
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
            f"no model file at {path}: train one (`tinydancer candidates train`, `tinydancer retrain`) or run `make demo` "
            "for the default model"
        ) from None
    except (OSError, ValueError) as exc:  # a directory, no permission, a name too long, a NUL byte, ...
        reason = getattr(exc, "strerror", None) or exc
        raise ModelFileError(f"cannot read a model file at {str(path)[:200]!r}: {reason}") from None


class Router:
    """Scores candidates for a query and decides which may use the lightweight model."""

    def __init__(self, config: RouterConfig | None = None, *, model_bytes: bytes | None = None) -> None:
        """``model_bytes``: the model file's bytes, when the caller has read them (see ``reload_model``)."""
        self.config = config or RouterConfig()
        path = self.config.model_path if self.config.model_path is not None else default_model_path()
        self.model_path = Path(path)
        self._served = load_served_model(self.model_path, self.config.enable_quantization, model_bytes)
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
        order = (-ranked).argsort(kind="stable") if request.size > 1 else _ZERO_ORDER
        if breaker is not None:
            if all_finite:
                breaker.record_success()
            else:
                breaker.record_failure()
        now = time.perf_counter()
        return RoutingResponse(
            Decisions(request.ids, order, conf, light, served.calibrator, all_finite),
            (now - start) * 1e6,
            request.size,
            (feature_done - start) * 1e6,
            served.version,
            served.calibrator is not None,
            features=feats,
        )

    def _lightweight(self, conf: np.ndarray, served: ServedModel) -> np.ndarray:
        """confidence >= threshold and uncertainty <= max_uncertainty, as comparisons on the score.

        ``uncertainty <= m`` ⇔ ``max(p, 1 - p) > s*`` (``ConformalCalibrator.certainty_cut``), which
        the calibrator evaluates as ``|p - 0.5| > s* - 0.5`` in float32; the comparisons here are the
        same float32 operations, so a decision and its reported uncertainty never disagree.  When
        the threshold is at least 0.5, ``max(p, 1 - p) = p`` wherever the first test holds (and
        ``p - 0.5`` and ``s* - 0.5`` are exact there, so ``p > s*`` is the same test).
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
        return (conf >= thr) & (np.abs(conf - np.float32(0.5)) > np.float32(cut) - np.float32(0.5))

    def _fallback(self, request: RoutingRequest, served: ServedModel, start: float, reason: str) -> RoutingResponse:
        if not self.config.fallback_on_open:
            raise CircuitOpenError(f"routing refused: {reason}; retry in {self.breaker.status()['retry_in_s'] if self.breaker else 0} s")
        n = request.size
        decisions = Decisions(request.ids, np.arange(n), np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool), None)
        return RoutingResponse(decisions, (time.perf_counter() - start) * 1e6, request.size, 0.0,
                               served.version, served.calibrator is not None, True, reason)

    # ------------------------------------------------------------------ operations
    def reload_model(self, path: str | os.PathLike[str] | None = None, data: bytes | None = None) -> ServedModel:
        """Load and check a model file, then swap it in atomically; on error the old one keeps serving.

        ``data``: the file's bytes, when the caller read them itself (the service reads model files
        under its own rules, see :mod:`tinydancer.server.model_files`).
        """
        with self._reload_lock:
            target = Path(path) if path is not None else self.model_path
            new = load_served_model(target, self.config.enable_quantization, data)
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
