"""FastGRNN (Kusupati et al., NeurIPS 2018), exactly as the paper and Microsoft EdgeML define it.

    pre_t = W x_t + U h_{t-1}          W = W1 W2, U = U1 U2 when a rank is set
    z_t   = sigmoid(pre_t + b_z)       gate
    c_t   = tanh(pre_t + b_h)          candidate
    h_t   = (sigmoid(zeta) (1 - z_t) + sigmoid(nu)) c_t + z_t h_{t-1},   h_0 = 0
    y     = FC h_T + b_fc              then sigmoid (binary / per-output) or softmax

W and U are shared by the gate and the candidate; that sharing is what makes FastGRNN small.
The seed's cell (separate reset/update weights, a reset gate that never receives gradient) is a
GRU-like variant, not FastGRNN: we implement the paper.

All parameters live in one flat vector (``_flat``) with named views into it.  Adam, gradient
clipping, L2 and pruning masks then act on the whole model in one NumPy expression each, and a
gradient is the same layout as the parameters.

``nu`` and ``zeta`` in :class:`FastGRNNConfig` are the *initial pre-sigmoid* values of the two
learned scalars (EdgeML's defaults: zeta = 1.0, nu = -4.0).  The seed calls them "scaling
parameters" without saying where they enter; this is the reading that matches the paper.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from .._io import atomic_write_bytes
from .._validation import DictConfig, as_float_array
from ..errors import ModelFileError, ValidationError

FORMAT_NAME = "tinydancer.fastgrnn"
FORMAT_VERSION = 1

OutputActivation = Literal["sigmoid", "softmax"]


@dataclass(frozen=True)
class FastGRNNConfig(DictConfig):
    """Shape and initialisation of a FastGRNN.

    ``rank`` sets a low-rank factorisation for both W and U; ``w_rank``/``u_rank`` override it
    per matrix.  ``output_activation`` defaults to sigmoid for one output and softmax for more;
    choose ``"sigmoid"`` with several outputs for independent per-output probabilities (e.g.
    predicted quality of each LLM).
    """

    input_dim: int = 5
    hidden_dim: int = 16
    output_dim: int = 1
    nu: float = -4.0
    zeta: float = 1.0
    rank: int | None = None
    w_rank: int | None = None
    u_rank: int | None = None
    output_activation: OutputActivation | None = None

    def __post_init__(self) -> None:
        for name in ("input_dim", "hidden_dim", "output_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"FastGRNNConfig.{name} must be a positive integer, got {value!r}")
        for name in ("rank", "w_rank", "u_rank"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1
            ):
                raise ValidationError(f"FastGRNNConfig.{name} must be None or a positive integer, got {value!r}")
        for name in ("nu", "zeta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValidationError(f"FastGRNNConfig.{name} must be a finite number, got {value!r}")
        act = self.output_activation
        if act is None:
            object.__setattr__(self, "output_activation", "sigmoid" if self.output_dim == 1 else "softmax")
        elif act not in ("sigmoid", "softmax"):
            raise ValidationError(f"output_activation must be 'sigmoid' or 'softmax', got {act!r}")
        if self.output_activation == "softmax" and self.output_dim < 2:
            raise ValidationError("softmax needs output_dim >= 2; use 'sigmoid' for a single output")

    @property
    def effective_w_rank(self) -> int | None:
        return self.w_rank if self.w_rank is not None else self.rank

    @property
    def effective_u_rank(self) -> int | None:
        return self.u_rank if self.u_rank is not None else self.rank

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name → shape of every parameter, in storage order."""
        d, h, o = self.input_dim, self.hidden_dim, self.output_dim
        shapes: dict[str, tuple[int, ...]] = {}
        if self.effective_w_rank is None:
            shapes["W"] = (h, d)
        else:
            shapes["W1"] = (h, self.effective_w_rank)
            shapes["W2"] = (self.effective_w_rank, d)
        if self.effective_u_rank is None:
            shapes["U"] = (h, h)
        else:
            shapes["U1"] = (h, self.effective_u_rank)
            shapes["U2"] = (self.effective_u_rank, h)
        shapes.update({"b_z": (h,), "b_h": (h,), "zeta": (1,), "nu": (1,), "fc_w": (o, h), "fc_b": (o,)})
        return shapes



#: Parameters that are weight matrices (L2, pruning and quantization apply to these).
RECURRENT_MATRICES = ("W", "W1", "W2", "U", "U1", "U2")
WEIGHT_MATRICES = RECURRENT_MATRICES + ("fc_w",)


@dataclass
class Normalizer:
    """Per-feature z-score parameters: ``(x - means) / stds``."""

    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self) -> None:
        self.means = as_float_array(self.means, "normalization means", ndim=1, dtype=np.float64)
        self.stds = as_float_array(self.stds, "normalization stds", ndim=1, dtype=np.float64)
        if self.means.shape != self.stds.shape:
            raise ValidationError(
                f"normalization means ({self.means.size}) and stds ({self.stds.size}) differ in length"
            )
        if (self.stds <= 0).any():
            raise ValidationError("normalization stds must all be positive")

    @property
    def dim(self) -> int:
        return int(self.means.size)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalize features whose last axis is the feature axis."""
        x = np.asarray(x)
        if x.shape[-1] != self.dim:
            raise ValidationError(f"expected {self.dim} features to normalize, got {x.shape[-1]}")
        return ((x - self.means) / self.stds).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"means": self.means.tolist(), "stds": self.stds.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalizer":
        if not isinstance(data, dict) or "means" not in data or "stds" not in data:
            raise ValidationError("normalization parameters need 'means' and 'stds' lists")
        return cls(np.asarray(data["means"], dtype=np.float64), np.asarray(data["stds"], dtype=np.float64))

    def save_json(self, path: str | Path) -> Path:
        from .._io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | Path) -> "Normalizer":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValidationError(f"no normalization file at {path}") from None
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path} is not valid JSON ({exc})") from None
        return cls.from_dict(data)


def save_normalization_params(path: str | Path, means: Sequence[float], stds: Sequence[float]) -> Path:
    """Save z-score parameters as JSON (the seed's ``save_normalization_params``)."""
    return Normalizer(np.asarray(means), np.asarray(stds)).save_json(path)


def load_normalization_params(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(means, stds)`` written by :func:`save_normalization_params`."""
    norm = Normalizer.load_json(path)
    return norm.means, norm.stds


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: exact, and never overflows (1/(1+exp(-x)) warns for x < -88 in float32)
    return 0.5 * np.tanh(0.5 * x) + 0.5


@dataclass
class _Compiled:
    """Inference constants derived from the parameters (rebuilt after every change).

    The gate and the candidate share W, so one matrix product serves both: with
    sigmoid(a) = (1 + tanh(a/2)) / 2, the columns [W/2 | W] give tanh's argument for both halves,
    and one tanh call evaluates the whole cell.
    """

    a_w: np.ndarray  # (D, 2H): [W/2 ; W]^T
    a_u: np.ndarray  # (H, 2H): [U/2 ; U]^T
    a_b: np.ndarray  # (2H,):   [b_z/2 ; b_h]
    alpha: float  # sigmoid(zeta)/2 + sigmoid(nu)
    beta: float  # sigmoid(zeta)/2
    fc_t: np.ndarray  # (H, O)
    fc_b: np.ndarray  # (O,)
    fc_half_t: np.ndarray  # (H, O) FC/2 for the fused output sigmoid
    fc_half_b: np.ndarray


@dataclass
class ForwardCache:
    """What backpropagation through time needs from a training forward pass."""

    x_tb: np.ndarray  # (T, B, D) inputs, time-major
    w: np.ndarray  # effective W (H, D)
    u: np.ndarray  # effective U (H, H)
    z: np.ndarray  # (T, B, H) gates
    c: np.ndarray  # (T, B, H) candidates
    h: np.ndarray  # (T+1, B, H) hidden states, h[0] = h_0
    zeta_s: float
    nu_s: float


class FastGRNN:
    """A FastGRNN classifier/regressor over sequences of feature vectors.

    ``forward`` accepts one feature vector ``(D,)``, a batch ``(B, D)`` (each row a sequence of
    length 1) or a batch of sequences ``(B, T, D)``, and returns probabilities of shape
    ``(O,)`` or ``(B, O)``.  It does *not* normalize: a model trained on normalized features
    carries its :class:`Normalizer` in ``self.normalizer``; use :meth:`predict` for raw features.
    """

    def __init__(self, config: FastGRNNConfig | None = None, *, seed: int | None = None, dtype: Any = np.float32):
        self.config = config if config is not None else FastGRNNConfig()
        self._dtype = np.dtype(dtype)
        if self._dtype not in (np.float32, np.float64):
            raise ValidationError("FastGRNN dtype must be float32 or float64")
        self._layout: dict[str, tuple[slice, tuple[int, ...]]] = {}
        offset = 0
        for name, shape in self.config.param_shapes().items():
            n = int(np.prod(shape))
            self._layout[name] = (slice(offset, offset + n), shape)
            offset += n
        self._flat = np.zeros(offset, dtype=self._dtype)
        self._views = self.unflatten(self._flat)
        self.normalizer: Normalizer | None = None
        #: name -> bool mask of kept entries (set by pruning / sparse training); None = dense
        self.masks: dict[str, np.ndarray] | None = None
        #: set by :meth:`quantize`: name -> (int8 values, float scale)
        self.quantized: dict[str, tuple[np.ndarray, float]] | None = None
        #: free-form training summary written into the model file
        self.training_summary: dict[str, Any] = {}
        #: string metadata owned by higher layers (query router, registry), kept in the file
        self.extra_metadata: dict[str, str] = {}
        #: finite float arrays owned by higher layers (e.g. conformal calibration scores)
        self.aux_tensors: dict[str, np.ndarray] = {}
        self._compiled: _Compiled | None = None
        self._compiled_raw: _Compiled | None = None
        self._weight_mask: np.ndarray | None = None
        self._init_params(seed)

    # ------------------------------------------------------------------ construction
    @classmethod
    def new(cls, config: FastGRNNConfig | None = None, seed: int | None = None) -> "FastGRNN":
        """The seed's constructor name."""
        return cls(config, seed=seed)

    def _init_params(self, seed: int | None) -> None:
        """EdgeML initialisation: weights N(0, 0.1^2), biases 1, zeta/nu from the config."""
        rng = np.random.default_rng(seed)
        for name in self._layout:
            view = self._views[name]
            if name in WEIGHT_MATRICES:
                view[...] = rng.normal(0.0, 0.1, size=view.shape)
            elif name in ("b_z", "b_h"):
                view[...] = 1.0
            elif name == "fc_b":
                view[...] = 0.0
        self._views["zeta"][0] = self.config.zeta
        self._views["nu"][0] = self.config.nu
        self._invalidate()

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views of a flat vector laid out like the parameters (used for gradients too)."""
        return {name: flat[s].reshape(shape) for name, (s, shape) in self._layout.items()}

    @property
    def num_params(self) -> int:
        return int(self._flat.size)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Read-only views of the parameters.  Change them with :meth:`set_params`."""
        out = {}
        for name, view in self._views.items():
            ro = view.view()
            ro.flags.writeable = False
            out[name] = ro
        return out

    def get_flat(self) -> np.ndarray:
        """A copy of all parameters as one vector."""
        return self._flat.copy()

    def set_flat(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat)
        if flat.shape != self._flat.shape:
            raise ValidationError(f"expected {self._flat.size} parameters, got shape {flat.shape}")
        if not np.isfinite(flat).all():
            raise ValidationError("parameters must be finite")
        self._flat[...] = flat
        self._after_update()

    def set_params(self, **params: np.ndarray) -> None:
        """Replace named parameters (shapes must match); masks are re-applied."""
        for name, value in params.items():
            if name not in self._views:
                raise ValidationError(f"unknown parameter {name!r}; known: {list(self._views)}")
            arr = np.asarray(value, dtype=self._dtype)
            if arr.shape != self._views[name].shape:
                raise ValidationError(f"{name} must have shape {self._views[name].shape}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValidationError(f"{name} must be finite")
            self._views[name][...] = arr
        self._after_update()

    def _after_update(self) -> None:
        """Hook run after any parameter change: re-apply masks, drop stale quantization/caches."""
        if self.masks is not None:
            for name, mask in self.masks.items():
                self._views[name] *= mask
        self.quantized = None
        self._invalidate()

    def _invalidate(self) -> None:
        self._compiled = None
        self._compiled_raw = None

    def copy(self) -> "FastGRNN":
        other = self.astype(self._dtype)
        return other

    def astype(self, dtype: Any) -> "FastGRNN":
        """A deep copy with parameters in ``dtype`` (float64 is used for gradient checks)."""
        other = FastGRNN(self.config, seed=0, dtype=dtype)
        other._flat[...] = self._flat
        other.normalizer = self.normalizer
        other.masks = None if self.masks is None else {k: v.copy() for k, v in self.masks.items()}
        other.quantized = None if self.quantized is None else dict(self.quantized)
        other.training_summary = dict(self.training_summary)
        other.extra_metadata = dict(self.extra_metadata)
        other.aux_tensors = {k: v.copy() for k, v in self.aux_tensors.items()}
        other._invalidate()
        return other

    # ------------------------------------------------------------------ math helpers
    def effective_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense W (H, D) and U (H, H), multiplying out low-rank factors."""
        p = self._views
        w = p["W"] if "W" in p else p["W1"] @ p["W2"]
        u = p["U"] if "U" in p else p["U1"] @ p["U2"]
        return w, u

    def _compile(self, raw: bool = False) -> _Compiled:
        """Inference constants; with ``raw`` the stored z-score is folded into the first layer.

        ((x - mu) / sigma) W^T = x (W / sigma)^T - (mu / sigma) W^T, so predicting from raw
        features costs exactly what predicting from normalized ones does.
        """
        if raw and self.normalizer is None:
            raw = False
        cached = self._compiled_raw if raw else self._compiled
        if cached is not None:
            return cached
        # a quantized model holds its dequantized values (q * scale) in the float views,
        # so inference needs no separate path: dequantization happens once, at load
        p = self._views
        w, u = self.effective_weights()
        zeta_s = float(_sigmoid(p["zeta"][0]))
        nu_s = float(_sigmoid(p["nu"][0]))
        fc = p["fc_w"]
        a_w = np.concatenate([0.5 * w, w]).T  # (D, 2H)
        a_b = np.concatenate([0.5 * p["b_z"], p["b_h"]]).astype(np.float64)
        if raw:
            assert self.normalizer is not None
            inv = 1.0 / self.normalizer.stds
            a_b = a_b - (self.normalizer.means * inv) @ a_w
            a_w = a_w * inv[:, None]
        compiled = _Compiled(
            a_w=np.ascontiguousarray(a_w, dtype=self._dtype),
            a_u=np.ascontiguousarray(np.concatenate([0.5 * u, u]).T),
            a_b=a_b.astype(self._dtype),
            alpha=0.5 * zeta_s + nu_s,
            beta=0.5 * zeta_s,
            fc_t=np.ascontiguousarray(fc.T),
            fc_b=p["fc_b"].copy(),
            fc_half_t=np.ascontiguousarray(0.5 * fc.T),
            fc_half_b=0.5 * p["fc_b"],
        )
        if raw:
            self._compiled_raw = compiled
        else:
            self._compiled = compiled
        return compiled

    # ------------------------------------------------------------------ inference
    def _as_input(self, x: Any) -> tuple[np.ndarray, bool]:
        """Validate input; return (array of ndim 2 or 3, whether the input was one vector)."""
        if isinstance(x, np.ndarray) and x.dtype == self._dtype:
            arr = x
        else:
            arr = as_float_array(x, "model input", dtype=self._dtype)
        single = arr.ndim == 1
        if single:
            arr = arr[None, :]
        if arr.ndim not in (2, 3):
            raise ValidationError(
                f"model input must be (features,), (batch, features) or (batch, time, features); got shape {arr.shape}"
            )
        if arr.shape[-1] != self.config.input_dim:
            raise ValidationError(
                f"model expects {self.config.input_dim} features per step, got {arr.shape[-1]}"
            )
        if arr.shape[0] == 0:
            raise ValidationError("model input has no rows")
        if not np.isfinite(arr.sum()) and not np.isfinite(arr).all():
            # the sum is a cheap first test; the full check names the position
            as_float_array(arr, "model input", dtype=self._dtype)
        return arr, single

    def hidden_state(self, x: Any, initial_hidden: Any = None) -> np.ndarray:
        """Final hidden state h_T for each input row, shape (B, H)."""
        arr, _ = self._as_input(x)
        return self._hidden(arr, self._as_hidden(initial_hidden, arr.shape[0]), self._compile())

    def _as_hidden(self, initial_hidden: Any, batch: int) -> np.ndarray | None:
        if initial_hidden is None:
            return None
        h = as_float_array(initial_hidden, "initial_hidden", ndim=(1, 2), dtype=self._dtype)
        if h.shape[-1] != self.config.hidden_dim:
            raise ValidationError(f"initial_hidden must have {self.config.hidden_dim} values, got {h.shape[-1]}")
        if h.ndim == 2 and h.shape[0] not in (1, batch):
            raise ValidationError(f"initial_hidden has {h.shape[0]} rows for a batch of {batch}")
        return np.broadcast_to(h.reshape(-1, self.config.hidden_dim), (batch, self.config.hidden_dim))

    def _hidden(self, arr: np.ndarray, h: np.ndarray | None, c: _Compiled) -> np.ndarray:
        hd = self.config.hidden_dim
        if arr.ndim == 2:
            steps = (arr,)
        else:
            steps = tuple(arr[:, t] for t in range(arr.shape[1]))
        for x_t in steps:
            a = x_t @ c.a_w
            a += c.a_b
            if h is not None:
                a += h @ c.a_u
            np.tanh(a, out=a)
            t_gate = a[:, :hd]
            cand = a[:, hd:]
            h_new = (c.alpha - c.beta * t_gate) * cand
            if h is not None:
                # z = (1 + t_gate) / 2
                h_new += (0.5 * t_gate + 0.5) * h
            h = h_new
        assert h is not None
        return h

    def logits(self, x: Any, initial_hidden: Any = None) -> np.ndarray:
        """Pre-activation outputs, shape (O,) for one vector or (B, O)."""
        arr, single = self._as_input(x)
        c = self._compile()
        out = self._hidden(arr, self._as_hidden(initial_hidden, arr.shape[0]), c) @ c.fc_t
        out += c.fc_b
        return out[0] if single else out

    def forward(self, x: Any, initial_hidden: Any = None) -> np.ndarray:
        """Output probabilities for *normalized* input: (O,) for one vector or (B, O)."""
        arr, single = self._as_input(x)
        out = self._probabilities(arr, self._as_hidden(initial_hidden, arr.shape[0]), self._compile())
        return out[0] if single else out

    def predict(self, raw_features: Any) -> np.ndarray:
        """Probabilities for *raw* features: the stored normalization is applied (folded in)."""
        arr, single = self._as_input(raw_features)
        out = self._probabilities(arr, None, self._compile(raw=True))
        return out[0] if single else out

    def predict_trusted(self, features: np.ndarray) -> np.ndarray:
        """:meth:`predict` without input checks, for (B, D) float32 arrays this package built itself
        (e.g. the router's feature matrix).  Never pass user input here."""
        return self._probabilities(features, None, self._compile(raw=True))

    def _probabilities(self, arr: np.ndarray, h0: np.ndarray | None, c: _Compiled) -> np.ndarray:
        h = self._hidden(arr, h0, c)
        if self.config.output_activation == "sigmoid":
            out = h @ c.fc_half_t
            out += c.fc_half_b
            np.tanh(out, out=out)  # sigmoid(x) = (1 + tanh(x / 2)) / 2, never overflows
            out *= 0.5
            out += 0.5
            return out
        out = h @ c.fc_t
        out += c.fc_b
        return _softmax(out)

    def forward_batch(self, xs: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Probabilities for a batch of (normalized) feature vectors, shape (B, O)."""
        arr = as_float_array(xs, "batch", ndim=(2, 3), dtype=self._dtype)
        return self.forward(arr)

    # ------------------------------------------------------------------ training math
    def forward_train(self, x: np.ndarray) -> tuple[np.ndarray, ForwardCache]:
        """Logits (B, O) and the cache for :meth:`backward`.  ``x`` is (B, T, D), validated."""
        p = self._views
        w, u = self.effective_weights()
        b, t_len, d = x.shape
        hd = self.config.hidden_dim
        x_tb = np.ascontiguousarray(x.transpose(1, 0, 2))
        xw = (x_tb.reshape(t_len * b, d) @ w.T).reshape(t_len, b, hd)
        zeta_s = float(_sigmoid(p["zeta"][0]))
        nu_s = float(_sigmoid(p["nu"][0]))
        z_all = np.empty((t_len, b, hd), dtype=self._dtype)
        c_all = np.empty((t_len, b, hd), dtype=self._dtype)
        h_all = np.zeros((t_len + 1, b, hd), dtype=self._dtype)
        b_z_half = 0.5 * p["b_z"]
        for t in range(t_len):
            pre = xw[t]
            if t > 0:
                pre = pre + h_all[t] @ u.T
            z = np.tanh(0.5 * pre + b_z_half)
            z *= 0.5
            z += 0.5
            c = np.tanh(pre + p["b_h"])
            z_all[t] = z
            c_all[t] = c
            h_all[t + 1] = (zeta_s * (1.0 - z) + nu_s) * c + z * h_all[t]
        logits = h_all[t_len] @ p["fc_w"].T + p["fc_b"]
        return logits, ForwardCache(x_tb, w, u, z_all, c_all, h_all, zeta_s, nu_s)

    def backward(self, cache: ForwardCache, dlogits: np.ndarray) -> np.ndarray:
        """Gradient of the loss w.r.t. every parameter (flat, same layout) by BPTT."""
        p = self._views
        grad = np.zeros_like(self._flat)
        g = self.unflatten(grad)
        t_len, b, hd = cache.z.shape
        d = cache.x_tb.shape[2]
        h_last = cache.h[t_len]
        g["fc_w"][...] = dlogits.T @ h_last
        g["fc_b"][...] = dlogits.sum(axis=0)
        dh = dlogits @ p["fc_w"]
        d_pre = np.empty((t_len, b, hd), dtype=self._dtype)
        zs, ns = cache.zeta_s, cache.nu_s
        d_zeta_s = 0.0
        d_nu_s = 0.0
        for t in range(t_len - 1, -1, -1):
            z, c, h_prev = cache.z[t], cache.c[t], cache.h[t]
            dh_c = dh * c
            d_nu_s += float(dh_c.sum())
            d_zeta_s += float(dh_c.sum() - (dh_c * z).sum())
            dc = dh * (zs * (1.0 - z) + ns)
            dz = dh * (h_prev - zs * c)
            dpz = dz * z * (1.0 - z)
            dpc = dc * (1.0 - c * c)
            g["b_z"] += dpz.sum(axis=0)
            g["b_h"] += dpc.sum(axis=0)
            dp = dpz + dpc
            d_pre[t] = dp
            dh = dh * z
            if t > 0:
                dh += dp @ cache.u
        dw = d_pre.reshape(t_len * b, hd).T @ cache.x_tb.reshape(t_len * b, d)
        if t_len > 1:
            du = d_pre[1:].reshape((t_len - 1) * b, hd).T @ cache.h[1:t_len].reshape((t_len - 1) * b, hd)
        else:
            du = np.zeros((hd, hd), dtype=self._dtype)
        if "W" in g:
            g["W"][...] = dw
        else:
            g["W1"][...] = dw @ p["W2"].T
            g["W2"][...] = p["W1"].T @ dw
        if "U" in g:
            g["U"][...] = du
        else:
            g["U1"][...] = du @ p["U2"].T
            g["U2"][...] = p["U1"].T @ du
        g["zeta"][0] = d_zeta_s * zs * (1.0 - zs)
        g["nu"][0] = d_nu_s * ns * (1.0 - ns)
        return grad

    def weight_mask(self) -> np.ndarray:
        """Flat 0/1 vector marking weight-matrix entries (where L2 applies); read-only, cached."""
        if self._weight_mask is None:
            mask = np.zeros_like(self._flat)
            for name, view in self.unflatten(mask).items():
                if name in WEIGHT_MATRICES:
                    view[...] = 1.0
            mask.flags.writeable = False
            self._weight_mask = mask
        return self._weight_mask

    def flat_mask(self) -> np.ndarray | None:
        """Flat 0/1 vector of the sparsity masks (ones outside masked matrices), or None."""
        if self.masks is None:
            return None
        mask = np.ones_like(self._flat)
        views = self.unflatten(mask)
        for name, m in self.masks.items():
            views[name][...] = m
        return mask

    # ------------------------------------------------------------------ compression
    def prune(self, sparsity: float) -> "FastGRNN":
        """Zero the smallest ``sparsity`` fraction of each recurrent matrix (W, U or factors)."""
        from .compression import prune

        prune(self, sparsity)
        return self

    def quantize(self) -> "FastGRNN":
        """Store weight matrices as int8 with one scale each; inference uses them."""
        from .compression import quantize

        quantize(self)
        return self

    def size_bytes(self) -> int:
        """Model size by EdgeML's accounting (sparse matrices count value + index)."""
        from .compression import model_size_bytes

        return model_size_bytes(self)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the model as safetensors with metadata, atomically."""
        from safetensors.numpy import save

        tensors: dict[str, np.ndarray] = {}
        masks = self.masks or {}
        for name, view in self._views.items():
            if self.quantized is not None and name in self.quantized:
                key, values = f"int8.{name}", self.quantized[name][0]
            else:
                key, values = name, np.ascontiguousarray(view, dtype=np.float32)
            if name in masks:
                # a pruned matrix is stored as its kept values and their flat positions
                index = np.flatnonzero(masks[name])
                tensors[f"index.{name}"] = index.astype(np.uint16 if masks[name].size <= 65536 else np.uint32)
                values = values.ravel()[index]
            tensors[key] = values
        for name, value in self.aux_tensors.items():
            tensors[f"aux.{name}"] = np.ascontiguousarray(value)
        if self.normalizer is not None:  # binary float64: exact, and 8 bytes a value instead of ~20 in JSON
            tensors["normalization.means"] = self.normalizer.means
            tensors["normalization.stds"] = self.normalizer.stds
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(self.config.to_dict()),
            "training": json.dumps(self.training_summary, default=_json_default),
            "quantization": json.dumps(
                {name: scale for name, (_q, scale) in self.quantized.items()} if self.quantized else {}
            ),
            "extra": json.dumps(self.extra_metadata),
        }
        return atomic_write_bytes(path, save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> "FastGRNN":
        """Read a model written by :meth:`save`, checking everything before returning it."""
        from safetensors import safe_open

        path = Path(path)
        try:
            exists = path.is_file()
        except (OSError, ValueError) as exc:  # e.g. a name too long for the file system, a NUL byte
            reason = getattr(exc, "strerror", None) or exc
            raise ModelFileError(f"cannot read a model file at {str(path)[:200]!r}: {reason}") from None
        if not exists:
            raise ModelFileError(
                f"no model file at {path}: train one with `tinydancer train` or run `make demo` "
                "to create the default model"
            )
        try:
            with safe_open(str(path), framework="np") as fh:
                metadata = fh.metadata() or {}
                keys = list(fh.keys())
                tensors = {k: fh.get_tensor(k) for k in keys}
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ModelFileError(f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
        return cls._from_tensors(tensors, metadata, str(path))

    @classmethod
    def _from_tensors(cls, tensors: dict[str, np.ndarray], metadata: dict[str, str], source: str) -> "FastGRNN":
        if metadata.get("format") != FORMAT_NAME:
            raise ModelFileError(
                f"{source} is not a Tiny Dancer FastGRNN file (format={metadata.get('format')!r})"
            )
        version = metadata.get("format_version")
        if version != str(FORMAT_VERSION):
            raise ModelFileError(f"{source} has format version {version!r}; this release reads version {FORMAT_VERSION}")
        try:
            config = FastGRNNConfig.from_dict(json.loads(metadata["config"]))
            quant_scales: dict[str, float] = json.loads(metadata.get("quantization") or "{}")
            training = json.loads(metadata.get("training") or "{}")
            extra = json.loads(metadata.get("extra") or "{}")
        except (KeyError, json.JSONDecodeError, ValidationError, TypeError) as exc:
            raise ModelFileError(f"{source} has unreadable metadata ({exc})") from None
        aux = {k[4:]: tensors.pop(k) for k in [k for k in tensors if k.startswith("aux.")]}
        for name, value in aux.items():
            if value.dtype.kind not in "fu" or (value.dtype.kind == "f" and not np.isfinite(value).all()):
                raise ModelFileError(f"{source}: auxiliary tensor {name!r} must be finite floats or unsigned integers")
        normalizer = None
        norm = {k: tensors.pop(f"normalization.{k}") for k in ("means", "stds") if f"normalization.{k}" in tensors}
        if norm:
            if len(norm) != 2 or any(v.dtype != np.float64 or v.shape != (config.input_dim,) for v in norm.values()):
                raise ModelFileError(f"{source}: normalization tensors must be two float64 vectors of {config.input_dim} values")
            try:
                normalizer = Normalizer(norm["means"], norm["stds"])
            except ValidationError as exc:
                raise ModelFileError(f"{source}: invalid normalization ({exc})") from None
        model = cls(config, seed=0)
        expected = config.param_shapes()
        quantized: dict[str, tuple[np.ndarray, float]] = {}
        masks: dict[str, np.ndarray] = {}
        seen: set[str] = set()
        for key in [k for k in tensors if k.startswith("index.")]:
            name, index = key[6:], tensors.pop(key)
            size = int(np.prod(expected[name])) if name in expected else 0
            if (
                name not in expected or index.ndim != 1 or index.dtype not in (np.uint16, np.uint32)
                or (index.size and (index[-1] >= size or np.any(np.diff(index.astype(np.int64)) <= 0)))
            ):
                raise ModelFileError(f"{source}: sparse index {key} is invalid (name, dtype, order or range)")
            stored = tensors.get(name, tensors.get(f"int8.{name}"))
            if stored is None or stored.shape != index.shape:
                raise ModelFileError(f"{source}: sparse matrix {name} has {index.size} positions but no matching values")
            dense = np.zeros(size, dtype=stored.dtype)
            dense[index] = stored
            mask = np.zeros(size, dtype=bool)
            mask[index] = True
            masks[name] = mask.reshape(expected[name])
            tensors[name if name in tensors else f"int8.{name}"] = dense.reshape(expected[name])
        for key, value in tensors.items():
            if key.startswith("int8."):
                name = key[5:]
                if value.dtype != np.int8:
                    raise ModelFileError(f"{source}: {key} must be int8, found {value.dtype}")
                scale = quant_scales.get(name)
                if scale is None or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
                    raise ModelFileError(f"{source}: {key} has no valid quantization scale")
                quantized[name] = (value, float(scale))
            else:
                name = key
                if value.dtype != np.float32:
                    raise ModelFileError(f"{source}: tensor {key} must be float32, found {value.dtype}")
                if not np.isfinite(value).all():
                    raise ModelFileError(f"{source}: tensor {key} contains NaN or Inf")
            if name not in expected:
                raise ModelFileError(f"{source}: unexpected tensor {key!r} for this configuration")
            if value.shape != expected[name]:
                raise ModelFileError(f"{source}: tensor {key} has shape {value.shape}, expected {expected[name]}")
            if name in seen:
                raise ModelFileError(f"{source}: tensor {name} is stored twice")
            seen.add(name)
            model._views[name][...] = value.astype(np.float32) * (quantized[name][1] if name in quantized else 1.0)
        missing = set(expected) - seen
        if missing:
            raise ModelFileError(f"{source} is missing tensors {sorted(missing)}")
        model.normalizer = normalizer
        model.masks = masks or None
        model.quantized = quantized or None
        model.training_summary = training
        model.extra_metadata = {str(k): str(v) for k, v in extra.items()}
        model.aux_tensors = aux
        if normalizer is not None and normalizer.dim != config.input_dim:
            raise ModelFileError(f"{source}: normalization has {normalizer.dim} features, model expects {config.input_dim}")
        model._invalidate()
        return model

    def __repr__(self) -> str:
        c = self.config
        return (
            f"FastGRNN(input_dim={c.input_dim}, hidden_dim={c.hidden_dim}, output_dim={c.output_dim}, "
            f"w_rank={c.effective_w_rank}, u_rank={c.effective_u_rank}, params={self.num_params}, "
            f"quantized={self.quantized is not None}, sparse={self.masks is not None})"
        )


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
