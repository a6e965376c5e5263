"""Losses and their gradients with respect to the logits, including knowledge distillation.

Distillation (Hinton et al. 2015) with temperature T and weight alpha:

    L = alpha * T^2 * L_soft(student_logits / T, teacher_probs_T) + (1 - alpha) * L_hard(student_logits, y)

where ``teacher_probs_T`` are the teacher's *logits* divided by T and passed through the output
activation (sigmoid or softmax).  The T^2 factor keeps the soft gradient's scale independent of T.
The seed's ``generate_teacher_predictions`` applies a sigmoid to an already-sigmoided probability
before dividing by T; that double squashing makes every soft target ~0.5-0.6 whatever the teacher
said, which is a bug.  Here the temperature acts on logits, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ValidationError


def sigmoid(x: Any) -> np.ndarray:
    """Logistic function, stable for any input (no overflow warnings)."""
    x = np.asarray(x)
    return 0.5 * np.tanh(0.5 * x) + 0.5


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = x.astype(np.float32)
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def temperature_softmax(logits: Any, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature`` along the last axis (higher T = softer)."""
    if not temperature > 0:
        raise ValidationError(f"temperature must be positive, got {temperature}")
    return softmax(np.asarray(logits) / temperature)


def binary_cross_entropy(pred: Any, target: Any, eps: float = 1e-7) -> Any:
    """Elementwise BCE between probabilities ``pred`` and targets in [0, 1] (the seed's API)."""
    p = np.clip(np.asarray(pred, dtype=np.float64), eps, 1.0 - eps)
    t = np.asarray(target, dtype=np.float64)
    out = -(t * np.log(p) + (1.0 - t) * np.log1p(-p))
    return float(out) if out.ndim == 0 else out


def bce_with_logits(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Elementwise BCE computed from logits, exact for any logit magnitude."""
    return np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))


def cross_entropy_with_logits(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy between softmax(logits) and target distributions."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(target * log_probs).sum(axis=-1)


def output_probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    return sigmoid(logits) if activation == "sigmoid" else softmax(logits)


def soft_targets_from_logits(logits: Any, temperature: float, activation: str = "sigmoid") -> np.ndarray:
    """Teacher logits → soft targets at temperature T (sigmoid or softmax of logits / T)."""
    if not temperature > 0:
        raise ValidationError(f"temperature must be positive, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    return (sigmoid(scaled) if activation == "sigmoid" else softmax(scaled)).astype(np.float32)


def generate_teacher_predictions(teacher: Any, features: Any, temperature: float) -> np.ndarray:
    """Soft targets from a teacher: its logits divided by T, through its output activation.

    ``teacher`` is a :class:`~tinydancer.nn.FastGRNN` (anything with ``logits`` and
    ``config.output_activation``) or a callable returning logits.  For one output the result has
    shape (N,), otherwise (N, O).
    """
    if hasattr(teacher, "logits"):
        logits = teacher.logits(np.asarray(features, dtype=teacher.dtype))
        activation = teacher.config.output_activation
    elif callable(teacher):
        logits = np.asarray(teacher(features))
        activation = "sigmoid" if logits.ndim == 1 or logits.shape[-1] == 1 else "softmax"
    else:
        raise ValidationError("teacher must be a FastGRNN or a callable returning logits")
    soft = soft_targets_from_logits(logits, temperature, activation)
    return soft[:, 0] if soft.ndim == 2 and soft.shape[1] == 1 else soft


@dataclass(frozen=True)
class LossSpec:
    """What the objective needs to know besides the data."""

    activation: str  # "sigmoid" or "softmax"
    distillation: bool = False
    temperature: float = 3.0
    alpha: float = 0.5


def objective(
    logits: np.ndarray,
    labels: np.ndarray,
    spec: LossSpec,
    soft_targets: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Mean (sample-weighted) loss of a batch and its gradient w.r.t. the logits.

    ``labels`` and ``soft_targets`` have the logits' shape (B, O).  For sigmoid outputs the
    per-sample loss is the mean BCE over outputs; for softmax, the cross-entropy.
    """
    b, o = logits.shape
    if weights is None:
        scale = np.full((b, 1), 1.0 / b, dtype=logits.dtype)
    else:
        scale = (weights / weights.sum()).astype(logits.dtype)[:, None]
    if spec.activation == "sigmoid":
        per_elem = bce_with_logits(logits, labels)
        hard = per_elem.mean(axis=1)
        d_hard = (sigmoid(logits) - labels) / o
    else:
        hard = cross_entropy_with_logits(logits, labels)
        d_hard = softmax(logits) - labels
    if spec.distillation and soft_targets is not None:
        t, a = spec.temperature, spec.alpha
        scaled = logits / t
        if spec.activation == "sigmoid":
            soft = bce_with_logits(scaled, soft_targets).mean(axis=1)
            d_soft = (sigmoid(scaled) - soft_targets) / (o * t)
        else:
            soft = cross_entropy_with_logits(scaled, soft_targets)
            d_soft = (softmax(scaled) - soft_targets) / t
        per_sample = a * t * t * soft + (1.0 - a) * hard
        dlogits = a * t * t * d_soft + (1.0 - a) * d_hard
    else:
        per_sample = hard
        dlogits = d_hard
    loss = float((per_sample * scale[:, 0]).sum())
    return loss, (dlogits * scale).astype(logits.dtype, copy=False)


def accuracy(probs: np.ndarray, labels: np.ndarray, activation: str) -> float:
    """Share of correct decisions: thresholded at 0.5 for sigmoid outputs, argmax for softmax."""
    if activation == "softmax":
        return float((probs.argmax(axis=1) == labels.argmax(axis=1)).mean())
    return float(((probs >= 0.5) == (labels >= 0.5)).mean())

