"""A linear readout of the query embedding, to blend with the router's FastGRNN.

On some tables a ridge regression from the embedding to the outcomes routes as well as any
network (the embedding already separates what matters linearly), and averaging the two lowers
the variance of both.  Cross-validation (:mod:`tinydancer.llm.selection`) decides whether to
blend and how much; the head is stored next to the network in the same router file.

Ridge is solved in closed form from the centred Gram matrix (inputs × inputs, a few hundred
square), one linear solve per ``alpha``.  Fine-tuning shrinks towards the earlier
weights instead of towards zero, so a small log of new outcomes moves the head without making
it forget the table it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ModelFileError, ValidationError

HEAD_WEIGHT = "head.weight"
HEAD_BIAS = "head.bias"


@dataclass
class LinearHead:
    """``clip(x @ weight + bias, 0, 1)``: one column per router output."""

    weight: np.ndarray  # (input_dim, outputs)
    bias: np.ndarray  # (outputs,)
    alpha: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x, dtype=np.float32) @ self.weight + self.bias, 0.0, 1.0).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.weight.nbytes + self.bias.nbytes)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float, prior: "LinearHead | None" = None) -> "LinearHead":
        """Ridge regression of ``y`` on ``x`` (the intercept is not penalized); with ``prior``, the
        penalty is on the distance to its weights."""
        return cls.fit_path(x, y, [alpha], prior=prior)[0]

    @classmethod
    def fit_path(cls, x: np.ndarray, y: np.ndarray, alphas: Sequence[float],
                 prior: "LinearHead | None" = None) -> list["LinearHead"]:
        """One head per ``alpha``, sharing the Gram matrix."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
            raise ValidationError(f"a linear head needs (n, d) inputs and (n, k) targets with n >= 2, got {x.shape} and {y.shape}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValidationError("a linear head's inputs and targets must be finite (fill missing outcomes first)")
        if any(not a > 0 for a in alphas):
            raise ValidationError(f"ridge alphas must be > 0, got {list(alphas)}")
        if prior is not None and prior.weight.shape != (x.shape[1], y.shape[1]):
            raise ValidationError(f"the earlier head maps {prior.weight.shape}; these data need {(x.shape[1], y.shape[1])}")
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        xc = x - x_mean
        gram = xc.T @ xc
        xty = xc.T @ (y - y_mean)
        eye = np.eye(gram.shape[0])
        heads = []
        for alpha in alphas:
            rhs = xty if prior is None else xty + alpha * prior.weight.astype(np.float64)
            w = np.linalg.solve(gram + alpha * eye, rhs)
            heads.append(cls(w.astype(np.float32), (y_mean - x_mean @ w).astype(np.float32), float(alpha)))
        return heads

    # ------------------------------------------------------------------ files
    def to_tensors(self) -> dict[str, np.ndarray]:
        return {HEAD_WEIGHT: self.weight, HEAD_BIAS: self.bias}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], alpha: float, input_dim: int, outputs: int) -> "LinearHead":
        try:
            weight = np.asarray(tensors[HEAD_WEIGHT], dtype=np.float32)
            bias = np.asarray(tensors[HEAD_BIAS], dtype=np.float32)
        except KeyError as exc:
            raise ModelFileError(f"the router file names a linear head but lacks its tensor {exc}") from None
        if weight.shape != (input_dim, outputs) or bias.shape != (outputs,):
            raise ModelFileError(f"the linear head is {weight.shape} + {bias.shape}; this router needs "
                                 f"{(input_dim, outputs)} + {(outputs,)}")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ModelFileError("the router file's linear head holds NaN or infinite values")
        return cls(weight, bias, float(alpha))
