"""Adam (Kingma & Ba, 2015) with bias correction, over one flat parameter vector.

One vector means one update expression for the whole model, whatever its number of tensors.
"""

from __future__ import annotations

import math

import numpy as np


class Adam:
    """theta -= lr * m_hat / (sqrt(v_hat) + eps), with m_hat, v_hat the bias-corrected moments."""

    def __init__(self, size: int, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8, dtype: type = np.float32):
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.m = np.zeros(size, dtype=dtype)
        self.v = np.zeros(size, dtype=dtype)
        self.t = 0
        self._buf = np.zeros(size, dtype=dtype)

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update ``params`` in place."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        self.m *= b1
        self.m += (1.0 - b1) * grad
        self.v *= b2
        np.multiply(grad, grad, out=self._buf)
        self._buf *= 1.0 - b2
        self.v += self._buf
        # lr * (m / bc1) / (sqrt(v / bc2) + eps)  ==  step * m / (sqrt(v) + eps * sqrt(bc2))
        bc1 = 1.0 - b1**self.t
        bc2 = 1.0 - b2**self.t
        step = lr * math.sqrt(bc2) / bc1
        np.sqrt(self.v, out=self._buf)
        self._buf += self.epsilon * math.sqrt(bc2)
        np.divide(self.m, self._buf, out=self._buf)
        self._buf *= step
        params -= self._buf


def clip_by_global_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale ``grad`` in place so its L2 norm is at most ``max_norm``; return the norm before."""
    norm = float(np.sqrt(np.dot(grad, grad)))
    if max_norm > 0 and norm > max_norm:
        grad *= max_norm / (norm + 1e-12)
    return norm
