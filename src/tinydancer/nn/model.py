"""FastGRNN (Kusupati et al., NeurIPS 2018), exactly as the paper and Microsoft EdgeML define it.

W and U are shared by the gate and the candidate; that sharing is what makes FastGRNN small.
The seed's cell (separate reset/update weights, a reset gate that never receives gradient) is a
GRU-like variant, not FastGRNN: we implement the paper.  The equations and their gradients are in
:mod:`tinydancer.nn.cell`; the file format in :mod:`tinydancer.nn.model_file`; pruning and
quantization in :mod:`tinydancer.nn.compression`.  This class holds the parameters, validates
input at the boundary and caches the compiled inference plans.

All parameters live in one flat vector (:attr:`FastGRNN.flat`) with named views into it.  Adam,
gradient clipping, L2 and pruning masks then act on the whole model in one NumPy expression each,
and a gradient is the same layout as the parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._validation import as_float_array
from ..errors import ValidationError
from . import cell, compression
from .cell import ForwardCache, InferencePlan
from .config import WEIGHT_MATRICES, FastGRNNConfig
from .model_file import ModelFileContents, decode_model_bytes, encode_model_file, read_model_file, write_model_file
from .normalization import Normalizer


class FastGRNN:
    """A FastGRNN classifier/regressor over sequences of feature vectors.

    ``forward`` accepts one feature vector ``(D,)``, a batch ``(B, D)`` (each row a sequence of
    length 1) or a batch of sequences ``(B, T, D)``, and returns probabilities of shape
    ``(O,)`` or ``(B, O)``.  It does *not* normalize: a model trained on normalized features
    carries its :class:`Normalizer` in ``self.normalizer``; use :meth:`predict` for raw features.
    """

    def __init__(self, config: FastGRNNConfig | None = None, *, seed: int | None = None, dtype: Any = np.float32):
        self.config = config if config is not None else FastGRNNConfig()
        self._activation = self.config.output_activation or "sigmoid"
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
        self._plan: InferencePlan | None = None
        self._plan_raw: InferencePlan | None = None
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
        self.refresh()

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

    @property
    def flat(self) -> np.ndarray:
        """The live parameter vector, for optimizers that update it in place.

        After writing into it, call :meth:`refresh`; :meth:`set_flat` is the checked way in.
        """
        return self._flat

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

    def set_masks(self, masks: dict[str, np.ndarray] | None) -> None:
        """Fix (or with None, lift) a sparsity support: masked entries are zeroed and stay zero in training."""
        if masks is not None:
            for name, mask in masks.items():
                if name not in self._views or np.shape(mask) != self._views[name].shape:
                    raise ValidationError(f"a mask for {name!r} must match a parameter's shape")
        self.masks = masks
        self._after_update()

    def set_quantized(self, quantized: dict[str, tuple[np.ndarray, float]]) -> None:
        """Hold these weight matrices as int8 values and scales; the float views get q * scale."""
        for name, (q, scale) in quantized.items():
            self._views[name][...] = compression.dequantize_tensor(q, scale)
        self.refresh()
        self.quantized = quantized

    def _after_update(self) -> None:
        """After any parameter change: re-apply masks, drop the stale int8 copy and the plans."""
        if self.masks is not None:
            for name, mask in self.masks.items():
                self._views[name] *= mask
        self.quantized = None
        self.refresh()

    def refresh(self) -> None:
        """Drop the compiled inference plans (call after writing into :attr:`flat`)."""
        self._plan = None
        self._plan_raw = None

    def copy(self) -> "FastGRNN":
        return self.astype(self._dtype)

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
        other.refresh()
        return other

    # ------------------------------------------------------------------ inference
    def effective_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense W (H, D) and U (H, H), multiplying out low-rank factors."""
        return cell.effective_weights(self._views)

    def _compile(self, raw: bool = False) -> InferencePlan:
        """The cached plan; with ``raw`` the stored z-score is folded into the first layer."""
        if raw and self.normalizer is not None:
            if self._plan_raw is None:
                self._plan_raw = cell.compile_plan(self._views, self._dtype, self.normalizer)
            return self._plan_raw
        if self._plan is None:
            self._plan = cell.compile_plan(self._views, self._dtype)
        return self._plan

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
        return cell.hidden(self._compile(), arr, self._as_hidden(initial_hidden, arr.shape[0]))

    def _as_hidden(self, initial_hidden: Any, batch: int) -> np.ndarray | None:
        if initial_hidden is None:
            return None
        h = as_float_array(initial_hidden, "initial_hidden", ndim=(1, 2), dtype=self._dtype)
        if h.shape[-1] != self.config.hidden_dim:
            raise ValidationError(f"initial_hidden must have {self.config.hidden_dim} values, got {h.shape[-1]}")
        if h.ndim == 2 and h.shape[0] not in (1, batch):
            raise ValidationError(f"initial_hidden has {h.shape[0]} rows for a batch of {batch}")
        return np.broadcast_to(h.reshape(-1, self.config.hidden_dim), (batch, self.config.hidden_dim))

    def logits(self, x: Any, initial_hidden: Any = None) -> np.ndarray:
        """Pre-activation outputs, shape (O,) for one vector or (B, O)."""
        arr, single = self._as_input(x)
        out = cell.logits(self._compile(), arr, self._as_hidden(initial_hidden, arr.shape[0]))
        return out[0] if single else out

    def forward(self, x: Any, initial_hidden: Any = None) -> np.ndarray:
        """Output probabilities for *normalized* input: (O,) for one vector or (B, O)."""
        arr, single = self._as_input(x)
        out = cell.probabilities(self._compile(), arr, self._as_hidden(initial_hidden, arr.shape[0]), self._activation)
        return out[0] if single else out

    def predict(self, raw_features: Any) -> np.ndarray:
        """Probabilities for *raw* features: the stored normalization is applied (folded in)."""
        arr, single = self._as_input(raw_features)
        out = cell.probabilities(self._compile(raw=True), arr, None, self._activation)
        return out[0] if single else out

    def predict_trusted(self, features: np.ndarray) -> np.ndarray:
        """:meth:`predict` without input checks, for (B, D) float32 arrays this package built itself
        (e.g. the router's feature matrix).  Never pass user input here.  One step from h_0 = 0
        computed with the hidden units along rows (see :func:`cell.probabilities_one_step`)."""
        return cell.probabilities_one_step(self._compile(raw=True), features, self._activation)

    def forward_batch(self, xs: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Probabilities for a batch of (normalized) feature vectors, shape (B, O)."""
        arr = as_float_array(xs, "batch", ndim=(2, 3), dtype=self._dtype)
        return self.forward(arr)

    # ------------------------------------------------------------------ training math
    def forward_train(self, x: np.ndarray) -> tuple[np.ndarray, ForwardCache]:
        """Logits (B, O) and the cache for :meth:`backward`.  ``x`` is (B, T, D), validated."""
        return cell.forward_train(self._views, x)

    def backward(self, cache: ForwardCache, dlogits: np.ndarray) -> np.ndarray:
        """Gradient of the loss w.r.t. every parameter (flat, same layout) by BPTT."""
        grad = np.zeros_like(self._flat)
        cell.backward(self._views, self.unflatten(grad), cache, dlogits)
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
        compression.prune(self, sparsity)
        return self

    def quantize(self) -> "FastGRNN":
        """Store weight matrices as int8 with one scale each; inference uses them."""
        compression.quantize(self)
        return self

    def size_bytes(self) -> int:
        """Model size by EdgeML's accounting (sparse matrices count value + index)."""
        return compression.model_size_bytes(self)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the model as safetensors with metadata, atomically (see :mod:`~tinydancer.nn.model_file`)."""
        return write_model_file(path, self._contents())

    def to_bytes(self) -> bytes:
        """The bytes :meth:`save` would write (a registry in a database keeps them as a row)."""
        return encode_model_file(self._contents())

    def _contents(self) -> ModelFileContents:
        return ModelFileContents(self.config, self._views, self.masks, self.quantized, self.normalizer,
                                 self.training_summary, self.extra_metadata, self.aux_tensors)

    @classmethod
    def load(cls, path: str | Path) -> "FastGRNN":
        """Read a model written by :meth:`save`, checking everything before returning it."""
        return cls.from_contents(read_model_file(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "model bytes") -> "FastGRNN":
        """A model from the bytes of a model file (checked exactly as :meth:`load` checks a file)."""
        return cls.from_contents(decode_model_bytes(data, source))

    @classmethod
    def from_contents(cls, contents: ModelFileContents) -> "FastGRNN":
        """A model holding exactly what a (checked) model file holds."""
        model = cls(contents.config, seed=0)
        for name, value in contents.params.items():
            model._views[name][...] = value
        model.normalizer = contents.normalizer
        model.masks = contents.masks
        model.quantized = contents.quantized
        model.training_summary = contents.training
        model.extra_metadata = contents.extra
        model.aux_tensors = contents.aux
        model.refresh()
        return model

    def __repr__(self) -> str:
        c = self.config
        return (
            f"FastGRNN(input_dim={c.input_dim}, hidden_dim={c.hidden_dim}, output_dim={c.output_dim}, "
            f"w_rank={c.effective_w_rank}, u_rank={c.effective_u_rank}, params={self.num_params}, "
            f"quantized={self.quantized is not None}, sparse={self.masks is not None})"
        )
