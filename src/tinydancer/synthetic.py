"""The seed example's synthetic routing data, so demos and benchmarks need no download.

Five features in [0, 1] — similarity, recency, popularity, success rate, complexity — and the
label rule of the crate's ``train-model`` example: lightweight (1) when
``0.4*similarity + 0.3*success_rate + 0.3*(1 - complexity) + noise > 0.6`` with noise uniform in
[-0.1, 0.1].  Recency and popularity are distractors.  Because of the noise no classifier can
beat about 90.4 % accuracy on this data (the Bayes rate, measured on 2M samples).
"""

from __future__ import annotations

import numpy as np

FEATURE_NAMES = ("similarity", "recency", "popularity", "success_rate", "complexity")


def seed_example_data(n_samples: int, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 5) float32, labels (N,) float32 with 1.0 = lightweight is good enough)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_samples, 5), dtype=np.float32)
    score = 0.4 * x[:, 0] + 0.3 * x[:, 3] + 0.3 * (1.0 - x[:, 4])
    noise = rng.uniform(-0.1, 0.1, n_samples).astype(np.float32)
    y = (score + noise > 0.6).astype(np.float32)
    return x, y
