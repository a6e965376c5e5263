"""Making FastGRNN kilobyte-sized: magnitude pruning, int8 quantization, EdgeML size accounting.

Size accounting follows EdgeML (``getModelSize``): a weight matrix kept at fraction s < 0.5 is
stored sparse and costs ceil(n*s) * 2 * b bytes (a value and an index each), otherwise n * b,
with b = 4 for float32 and 1 for int8.  Biases, zeta and nu stay float32 (4 bytes each); a
quantized matrix adds its float32 scale.  EdgeML's 1-byte index is optimistic for matrices over
256 entries, so reports show the real file size beside it.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol

import numpy as np

from ..errors import ValidationError
from .config import RECURRENT_MATRICES, WEIGHT_MATRICES


class Compressible(Protocol):
    """What pruning and quantization need of a model (``FastGRNN`` is one)."""

    @property
    def params(self) -> Mapping[str, np.ndarray]: ...

    masks: dict[str, np.ndarray] | None
    quantized: dict[str, tuple[np.ndarray, float]] | None

    def set_masks(self, masks: dict[str, np.ndarray] | None) -> None: ...

    def set_quantized(self, quantized: dict[str, tuple[np.ndarray, float]]) -> None: ...


def recurrent_names(model: Compressible) -> list[str]:
    """Names of the model's W/U matrices (full or low-rank factors)."""
    return [n for n in model.params if n in RECURRENT_MATRICES]


def top_k_mask(values: np.ndarray, keep: int) -> np.ndarray:
    """Boolean mask of the ``keep`` largest |values| (ties broken by position)."""
    flat = np.abs(values).ravel()
    mask = np.zeros(flat.size, dtype=bool)
    if keep >= flat.size:
        mask[:] = True
    elif keep > 0:
        # stable sort on -|v| puts equal magnitudes in index order: deterministic ties
        order = np.argsort(-flat, kind="stable")
        mask[order[:keep]] = True
    return mask.reshape(values.shape)


def kept_count(size: int, sparsity: float) -> int:
    """Entries kept when pruning ``size`` entries to ``sparsity`` (fraction removed)."""
    return int(round(size * (1.0 - sparsity)))


def check_sparsity(sparsity: float, name: str = "sparsity") -> None:
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise ValidationError(f"{name} must be in [0, 1) — the fraction of weights removed; got {sparsity!r}")


def prune(model: Compressible, sparsity: float, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Zero all but the largest (1 - sparsity) fraction of |entries| of each recurrent matrix.

    The masks are stored on the model; training respects them (pruned weights stay zero).
    Returns the masks.
    """
    check_sparsity(sparsity)
    names = names if names is not None else recurrent_names(model)
    masks = dict(model.masks or {})
    params = model.params
    for name in names:
        if name not in params:
            raise ValidationError(f"cannot prune unknown matrix {name!r}")
        masks[name] = top_k_mask(params[name], kept_count(params[name].size, sparsity))
    was_quantized = model.quantized is not None
    model.set_masks(masks)
    if was_quantized:  # kept values are still on the int8 grid: keep the model quantized
        quantize(model)
    return masks


def quantize(model: Compressible) -> dict[str, tuple[np.ndarray, float]]:
    """Symmetric per-tensor int8 quantization of every weight matrix.

    q = round(w / scale) with scale = max|w| / 127, so |w - q*scale| <= scale/2.  The float
    views then hold q*scale exactly: inference runs on the dequantized values (dequantized once,
    here or at load), and the model file stores the int8 values and scales.
    """
    quantized = {name: quantize_tensor(view) for name, view in model.params.items() if name in WEIGHT_MATRICES}
    model.set_quantized(quantized)
    return quantized


def quantize_tensor(values: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 values and the float scale of one tensor."""
    peak = float(np.abs(values).max()) if values.size else 0.0
    if peak < np.finfo(np.float32).tiny:  # zero or subnormal: the scale would underflow in float32
        return np.zeros(values.shape, dtype=np.int8), 1.0
    scale = peak / 127.0
    q = np.clip(np.rint(np.asarray(values, dtype=np.float64) / scale), -127, 127).astype(np.int8)
    return q, scale


def dequantize_tensor(q: np.ndarray, scale: float) -> np.ndarray:
    return (q.astype(np.float32) * np.float32(scale)).astype(np.float32)


def kept_fraction(model: Compressible, name: str) -> float:
    if model.masks is not None and name in model.masks:
        mask = model.masks[name]
        return float(np.count_nonzero(mask)) / mask.size
    return 1.0


def model_size_bytes(model: Compressible) -> int:
    """EdgeML size accounting (see the module docstring)."""
    b = 1 if model.quantized is not None else 4
    total = 0
    for name, view in model.params.items():
        n = view.size
        if name in RECURRENT_MATRICES:
            s = kept_fraction(model, name)
            total += math.ceil(n * s) * 2 * b if s < 0.5 else n * b
        elif name == "fc_w":
            total += n * b
        else:
            total += n * 4
    if model.quantized is not None:
        total += 4 * len(model.quantized)
    return total
