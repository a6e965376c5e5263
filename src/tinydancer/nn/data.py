"""Training data: validated arrays, z-score normalization, splits and mini-batches.

Features are (N, D) — one feature vector per sample, a sequence of length 1 for the RNN — or
(N, T, D) for real sequences.  Labels are (N,) for one output or (N, O); they, and the optional
soft targets from a teacher, are probabilities in [0, 1].  Optional per-sample weights let
imbalanced routing logs count each class fairly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .._validation import as_float_array
from ..errors import ValidationError
from .normalization import Normalizer


def _as_targets(value: Any, name: str, n: int) -> np.ndarray:
    arr = as_float_array(value, name, ndim=(1, 2), dtype=np.float32)
    if arr.shape[0] != n:
        raise ValidationError(f"{name} has {arr.shape[0]} rows but features have {n}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        bad = int(np.argmax((arr < 0) | (arr > 1)) // (arr.shape[1] if arr.ndim == 2 else 1))
        raise ValidationError(
            f"{name} must lie in [0, 1] (1.0 = lightweight was good enough / class present); "
            f"row {bad} has {arr[bad]!r}"
        )
    return arr


class TrainingDataset:
    """Features with labels, optional teacher soft targets and optional sample weights."""

    def __init__(
        self,
        features: Any,
        labels: Any,
        soft_targets: Any = None,
        sample_weights: Any = None,
    ) -> None:
        x = as_float_array(features, "features", ndim=(2, 3), dtype=np.float32)
        n = x.shape[0]
        self.features = x
        self.labels = _as_targets(labels, "labels", n)
        self.soft_targets = None if soft_targets is None else _as_targets(soft_targets, "soft targets", n)
        if self.soft_targets is not None and self.soft_targets.shape != self.labels.shape:
            raise ValidationError(
                f"soft targets have shape {self.soft_targets.shape}, labels {self.labels.shape}: they must match"
            )
        if sample_weights is None:
            self.sample_weights = None
        else:
            w = as_float_array(sample_weights, "sample weights", ndim=1, dtype=np.float32)
            if w.shape[0] != n:
                raise ValidationError(f"sample weights have {w.shape[0]} rows but features have {n}")
            if (w < 0).any() or w.sum() <= 0:
                raise ValidationError("sample weights must be non-negative with a positive sum")
            self.sample_weights = w
        #: set by :meth:`normalize` (or :meth:`apply_normalization`)
        self.normalization: Normalizer | None = None

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def output_dim(self) -> int:
        return 1 if self.labels.ndim == 1 else int(self.labels.shape[1])

    def labels_2d(self) -> np.ndarray:
        return self.labels[:, None] if self.labels.ndim == 1 else self.labels

    def soft_targets_2d(self) -> np.ndarray | None:
        if self.soft_targets is None:
            return None
        return self.soft_targets[:, None] if self.soft_targets.ndim == 1 else self.soft_targets

    def features_3d(self) -> np.ndarray:
        return self.features[:, None, :] if self.features.ndim == 2 else self.features

    # ------------------------------------------------------------------ transforms
    def normalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Z-score the features in place (per feature, over samples and time); return (means, stds).

        A constant feature gets std 1 so it maps to 0 instead of dividing by zero.
        """
        if self.normalization is not None:
            raise ValidationError("dataset is already normalized; normalizing twice would hide the original scale")
        flat = self.features.reshape(-1, self.feature_dim).astype(np.float64)
        means = flat.mean(axis=0)
        stds = flat.std(axis=0)
        stds[stds < 1e-12] = 1.0
        self.apply_normalization(Normalizer(means, stds))
        return means, stds

    def apply_normalization(self, normalizer: Normalizer) -> None:
        """Normalize with given parameters (e.g. a training set's, applied to a test set)."""
        if self.normalization is not None:
            raise ValidationError("dataset is already normalized")
        self.features = normalizer.apply(self.features)
        self.normalization = normalizer

    def subset(self, index: np.ndarray) -> "TrainingDataset":
        out = TrainingDataset.__new__(TrainingDataset)
        out.features = self.features[index]
        out.labels = self.labels[index]
        out.soft_targets = None if self.soft_targets is None else self.soft_targets[index]
        out.sample_weights = None if self.sample_weights is None else self.sample_weights[index]
        out.normalization = self.normalization
        return out

    def split(self, val_ratio: float, seed: int | None = 0) -> tuple["TrainingDataset", "TrainingDataset"]:
        """Shuffle with ``seed`` and split into (train, validation); both keep at least one row."""
        if not 0.0 < val_ratio < 1.0:
            raise ValidationError(f"val_ratio must be strictly between 0 and 1, got {val_ratio}")
        n = len(self)
        if n < 2:
            raise ValidationError(f"cannot split {n} sample(s) into train and validation; add data")
        n_val = min(max(int(round(n * val_ratio)), 1), n - 1)
        perm = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))

    def with_soft_targets(self, soft_targets: Any) -> "TrainingDataset":
        """A copy carrying a teacher's soft targets (shape of the labels, values in [0, 1])."""
        out = self.subset(np.arange(len(self)))
        soft = _as_targets(soft_targets, "soft targets", len(self))
        if soft.shape != self.labels.shape:
            raise ValidationError(f"soft targets have shape {soft.shape}, labels {self.labels.shape}: they must match")
        out.soft_targets = soft
        return out

    def with_sample_weights(self, weights: Any) -> "TrainingDataset":
        """A copy whose samples count with the given weights in the loss."""
        out = TrainingDataset(self.features, self.labels, self.soft_targets, weights)
        out.normalization = self.normalization
        return out


def balanced_sample_weights(labels: Any) -> np.ndarray:
    """Weights that give each binary class (label >= 0.5 or not) the same total weight."""
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)[:, 0] >= 0.5
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return np.ones(y.size, dtype=np.float32)
    return np.where(y, y.size / (2.0 * n_pos), y.size / (2.0 * n_neg)).astype(np.float32)


@dataclass
class Batch:
    """One mini-batch, features as (B, T, D) and targets as (B, O)."""

    features: np.ndarray
    labels: np.ndarray
    soft_targets: np.ndarray | None
    weights: np.ndarray | None

    def __iter__(self) -> Iterator[Any]:
        # lets callers unpack like the seed: ``for features, labels, soft in BatchIterator(...)``
        return iter((self.features, self.labels, self.soft_targets))

    def __len__(self) -> int:
        return int(self.features.shape[0])


class BatchIterator:
    """Mini-batches over a dataset; each pass reshuffles (reproducibly, given ``seed``).

    The arrays are permuted once per pass and then sliced, so a batch is a view, not a gather.
    """

    def __init__(self, dataset: TrainingDataset, batch_size: int, shuffle: bool = True, seed: int | None = None) -> None:
        if batch_size < 1:
            raise ValidationError(f"batch_size must be at least 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValidationError("cannot iterate over an empty dataset")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._x = dataset.features_3d()
        self._y = dataset.labels_2d()
        self._soft = dataset.soft_targets_2d()
        self._w = dataset.sample_weights

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        x, y, soft, w = self._x, self._y, self._soft, self._w
        if self.shuffle:
            perm = self._rng.permutation(len(self.dataset))
            x, y = x[perm], y[perm]
            soft = None if soft is None else soft[perm]
            w = None if w is None else w[perm]
        bs = self.batch_size
        for start in range(0, len(self.dataset), bs):
            stop = start + bs
            yield Batch(
                x[start:stop],
                y[start:stop],
                None if soft is None else soft[start:stop],
                None if w is None else w[start:stop],
            )
