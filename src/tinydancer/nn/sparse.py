"""Stage 2 of the paper's sparse training: iterative hard thresholding (a training step hook).

The three stages themselves (dense → hard thresholding → fine-tuning on the support) are run by
:class:`~tinydancer.nn.training.Trainer` when ``w_sparsity`` or ``u_sparsity`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ValidationError
from .compression import check_sparsity, kept_count, recurrent_names, top_k_mask
from .model import FastGRNN


def sparsity_targets(model: FastGRNN, w_sparsity: float, u_sparsity: float) -> dict[str, float]:
    """Fraction of entries to remove, per recurrent matrix (W factors get w_, U factors u_)."""
    check_sparsity(w_sparsity, "w_sparsity")
    check_sparsity(u_sparsity, "u_sparsity")
    return {n: (w_sparsity if n.startswith("W") else u_sparsity) for n in recurrent_names(model)}


@dataclass
class IterativeHardThresholding:
    """Every ``every`` steps keep only the top entries of each matrix.

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

    @property
    def support(self) -> dict[str, np.ndarray]:
        """The current masks (True = kept), per matrix."""
        return self._masks

    def start(self, model: FastGRNN) -> None:
        if self.every < 1:
            raise ValidationError(f"iht_every must be >= 1, got {self.every}")
        model.set_masks(None)  # the trainer must not freeze a support during this stage
        self._shadow = model.get_flat()
        self._threshold(model)
        self._apply(model)

    def _threshold(self, model: FastGRNN) -> None:
        assert self._shadow is not None
        views = model.unflatten(self._shadow)
        new = {n: top_k_mask(views[n], kept_count(views[n].size, s)) for n, s in self.sparsity.items()}
        if self._masks:
            self.support_changes += sum(int((new[n] != self._masks[n]).sum()) for n in new)
        self._masks = new

    def _apply(self, model: FastGRNN) -> None:
        assert self._shadow is not None
        keep = np.ones_like(self._shadow)
        views = model.unflatten(keep)
        for name, mask in self._masks.items():
            views[name][...] = mask
        model.flat[...] = self._shadow * keep
        model.refresh()
        self._masked = model.get_flat()

    def __call__(self, model: FastGRNN, step: int, epoch: int) -> None:
        assert self._shadow is not None and self._masked is not None
        self._shadow -= self._masked - model.flat  # the optimizer's update, moved to the shadow
        if step % self.every == 0:
            self._threshold(model)
        self._apply(model)

    def finish(self, model: FastGRNN) -> dict[str, np.ndarray]:
        """Fix the last support on the model (stage 3 fine-tunes on it)."""
        self._threshold(model)
        self._apply(model)
        masks = {n: m.copy() for n, m in self._masks.items()}
        model.set_masks(masks)
        return masks
