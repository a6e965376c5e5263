"""Making FastGRNN kilobyte-sized: magnitude pruning, sparse training, int8 quantization.

Size accounting follows EdgeML (``getModelSize``): a weight matrix kept at fraction s < 0.5 is
stored sparse and costs ceil(n*s) * 2 * b bytes (a value and an index each), otherwise n * b,
with b = 4 for float32 and 1 for int8.  Biases, zeta and nu stay float32 (4 bytes each); a
quantized matrix adds its float32 scale.  EdgeML's 1-byte index is optimistic for matrices over
256 entries, so reports show the real file size beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import ValidationError
from .model import RECURRENT_MATRICES, WEIGHT_MATRICES

if TYPE_CHECKING:  # pragma: no cover
    from .data import TrainingDataset
    from .model import FastGRNN
    from .training import Trainer, TrainingMetrics


def recurrent_names(model: "FastGRNN") -> list[str]:
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


def _check_sparsity(sparsity: float, name: str = "sparsity") -> None:
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise ValidationError(f"{name} must be in [0, 1) — the fraction of weights removed; got {sparsity!r}")


def prune(model: "FastGRNN", sparsity: float, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Zero all but the largest (1 - sparsity) fraction of |entries| of each recurrent matrix.

    The masks are stored on the model; training respects them (pruned weights stay zero).
    Returns the masks.
    """
    _check_sparsity(sparsity)
    names = names if names is not None else recurrent_names(model)
    masks = dict(model.masks or {})
    views = model._views
    for name in names:
        if name not in views:
            raise ValidationError(f"cannot prune unknown matrix {name!r}")
        masks[name] = top_k_mask(views[name], kept_count(views[name].size, sparsity))
    was_quantized = model.quantized is not None
    model.masks = masks
    model._after_update()
    if was_quantized:  # kept values are still on the int8 grid: keep the model quantized
        quantize(model)
    return masks


def quantize(model: "FastGRNN") -> dict[str, tuple[np.ndarray, float]]:
    """Symmetric per-tensor int8 quantization of every weight matrix.

    q = round(w / scale) with scale = max|w| / 127, so |w - q*scale| <= scale/2.  The float
    views then hold q*scale exactly: inference runs on the dequantized values (dequantized once,
    here or at load), and :meth:`FastGRNN.save` stores the int8 values and scales.
    """
    quantized: dict[str, tuple[np.ndarray, float]] = {}
    views = model._views
    for name, view in views.items():
        if name not in WEIGHT_MATRICES:
            continue
        q, scale = quantize_tensor(view)
        quantized[name] = (q, scale)
    for name, (q, scale) in quantized.items():
        views[name][...] = dequantize_tensor(q, scale)
    model._invalidate()
    model.quantized = quantized
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


def kept_fraction(model: "FastGRNN", name: str) -> float:
    if model.masks is not None and name in model.masks:
        mask = model.masks[name]
        return float(np.count_nonzero(mask)) / mask.size
    return 1.0


def model_size_bytes(model: "FastGRNN") -> int:
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


# ---------------------------------------------------------------------- sparse training
def sparsity_targets(model: "FastGRNN", w_sparsity: float, u_sparsity: float) -> dict[str, float]:
    """Fraction of entries to remove, per recurrent matrix (W factors get w_, U factors u_)."""
    _check_sparsity(w_sparsity, "w_sparsity")
    _check_sparsity(u_sparsity, "u_sparsity")
    return {n: (w_sparsity if n.startswith("W") else u_sparsity) for n in recurrent_names(model)}


@dataclass
class IterativeHardThresholding:
    """Stage 2 of the paper: every ``every`` steps keep only the top entries of each matrix.

    A dense *shadow* copy of the weights receives every update (computed at the sparse point);
    the model always holds ``shadow * mask``, and the mask is recomputed from |shadow| every
    ``every`` steps.  So the support is re-applied after each step, yet a pruned weight whose
    shadow grows large can come back — without the shadow, IHT would reduce to one-shot pruning.
    """

    sparsity: dict[str, float]
    every: int = 15
    _shadow: np.ndarray | None = field(default=None, repr=False)
    _masked: np.ndarray | None = field(default=None, repr=False)
    _masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    support_changes: int = 0

    def start(self, model: "FastGRNN") -> None:
        if self.every < 1:
            raise ValidationError(f"iht_every must be >= 1, got {self.every}")
        model.masks = None  # the trainer must not freeze a support during this stage
        self._shadow = model.get_flat()
        self._threshold(model)
        self._apply(model)

    def _threshold(self, model: "FastGRNN") -> None:
        assert self._shadow is not None
        views = model.unflatten(self._shadow)
        new = {n: top_k_mask(views[n], kept_count(views[n].size, s)) for n, s in self.sparsity.items()}
        if self._masks:
            self.support_changes += sum(int((new[n] != self._masks[n]).sum()) for n in new)
        self._masks = new

    def _apply(self, model: "FastGRNN") -> None:
        assert self._shadow is not None
        model._flat[...] = self._shadow
        views = model._views
        for name, mask in self._masks.items():
            views[name] *= mask
        self._masked = model.get_flat()
        model._invalidate()

    def __call__(self, model: "FastGRNN", step: int, epoch: int) -> None:
        assert self._shadow is not None and self._masked is not None
        self._shadow -= self._masked - model._flat  # the optimizer's update, moved to the shadow
        if step % self.every == 0:
            self._threshold(model)
        self._apply(model)

    def finish(self, model: "FastGRNN") -> dict[str, np.ndarray]:
        """Fix the last support on the model (stage 3 fine-tunes on it)."""
        self._threshold(model)
        self._apply(model)
        model.masks = {n: m.copy() for n, m in self._masks.items()}
        return model.masks


def train_sparse(
    trainer: "Trainer",
    model: "FastGRNN",
    dataset: "TrainingDataset",
    validation: "TrainingDataset | None",
    on_epoch_end: "Callable[[TrainingMetrics], None] | None",
) -> "list[TrainingMetrics]":
    """The paper's three stages over ``trainer.config.epochs`` split in thirds.

    1. dense training of the (low-rank) model;
    2. iterative hard thresholding to the target sparsities;
    3. fine-tuning on the fixed support, with early stopping and best-weight restore.
    Early stopping acts only in stage 3, so the returned model always has the final support.
    """
    from .training import Trainer

    cfg = trainer.config
    if cfg.epochs < 3:
        raise ValidationError("sparse training needs at least 3 epochs (one per stage)")
    targets = sparsity_targets(model, cfg.w_sparsity, cfg.u_sparsity)
    if validation is None and cfg.validation_split > 0:
        dataset, validation = dataset.split(cfg.validation_split, seed=cfg.seed)
    e1 = cfg.epochs // 3
    e2 = cfg.epochs // 3
    dense_cfg = replace(cfg, w_sparsity=0.0, u_sparsity=0.0)
    stages = [
        (replace(dense_cfg, epochs=e1, early_stopping_patience=None), None),
        (replace(dense_cfg, epochs=e2, early_stopping_patience=None, restore_best_weights=False),
         IterativeHardThresholding(targets, cfg.iht_every)),
        (replace(dense_cfg, epochs=cfg.epochs - e1 - e2), None),
    ]
    metrics: list[TrainingMetrics] = []
    for stage_cfg, iht in stages:
        stage = Trainer(trainer.model_config, stage_cfg)
        if iht is not None:
            iht.start(model)
        stage.train(model, dataset, validation=validation, on_epoch_end=on_epoch_end,
                    hooks=() if iht is None else (iht,), start_epoch=len(metrics))
        if iht is not None:
            iht.finish(model)
        metrics.extend(stage.metrics)
        trainer.best_epoch = stage.best_epoch
        trainer.stopped_early = stage.stopped_early
    trainer.metrics = metrics
    model.training_summary["epochs_run"] = len(metrics)
    model.training_summary["sparse_training"] = {
        "w_sparsity": cfg.w_sparsity,
        "u_sparsity": cfg.u_sparsity,
        "iht_every": cfg.iht_every,
        "stage_epochs": [e1, e2, cfg.epochs - e1 - e2],
    }
    return metrics
