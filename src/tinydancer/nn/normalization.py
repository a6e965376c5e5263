"""Per-feature z-score parameters, saved with the model or as the seed's JSON file.

A model trained on normalized features carries its :class:`Normalizer`; ``FastGRNN.predict``
folds it into the first layer, so raw features cost nothing extra (the seed's example trains on
normalized features and then predicts on raw ones).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import atomic_write_json
from .._validation import as_float_array
from ..errors import ValidationError


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
