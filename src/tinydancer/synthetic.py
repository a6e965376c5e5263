"""The seed example's synthetic routing data, so demos and benchmarks need no download.

Five features in [0, 1] — similarity, recency, popularity, success rate, complexity — and the
label rule of the crate's ``train-model`` example: lightweight (1) when
``0.4*similarity + 0.3*success_rate + 0.3*(1 - complexity) + noise > 0.6`` with noise uniform in
[-0.1, 0.1].  Recency and popularity are distractors.  Because of the noise no classifier can
beat about 90.4 % accuracy on this data (the Bayes rate, measured on 2M samples).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np

from .candidates import Candidate, RoutingRequest

FEATURE_NAMES = ("similarity", "recency", "popularity", "success_rate", "complexity")


def seed_example_data(n_samples: int, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 5) float32, labels (N,) float32 with 1.0 = lightweight is good enough)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_samples, 5), dtype=np.float32)
    score = 0.4 * x[:, 0] + 0.3 * x[:, 3] + 0.3 * (1.0 - x[:, 4])
    noise = rng.uniform(-0.1, 0.1, n_samples).astype(np.float32)
    y = (score + noise > 0.6).astype(np.float32)
    return x, y


# ---------------------------------------------------------------------- candidate traffic
def lightweight_ok_probability(raw: np.ndarray) -> np.ndarray:
    """Ground truth of the simulated traffic: P(the lightweight model is good enough).

    ``raw`` holds the router's five *unweighted* features (similarity, recency, frequency,
    success rate, metadata overlap).  Similar, proven, fresh candidates are easy.
    """
    score = 0.45 * raw[:, 0] + 0.30 * raw[:, 3] + 0.15 * raw[:, 1] + 0.10 * raw[:, 4]
    return 1.0 / (1.0 + np.exp(-14.0 * (score - 0.5)))


def drifted_lightweight_ok_probability(raw: np.ndarray) -> np.ndarray:
    """A changed world for the learning-loop demo: track record and shared context now matter
    more than raw similarity, and freshness no longer matters."""
    score = 0.20 * raw[:, 0] + 0.50 * raw[:, 3] + 0.30 * raw[:, 4]
    return 1.0 / (1.0 + np.exp(-14.0 * (score - 0.5)))


def candidate_requests(n_requests: int, candidates_per_request: int = 8, dim: int = 64, seed: int | None = 0,
                       now: float | None = None, truth: Callable[[np.ndarray], np.ndarray] | None = None,
                       ) -> list[tuple["object", np.ndarray, np.ndarray]]:
    """Simulated routing traffic: (RoutingRequest, raw features (N, 5), 0/1 outcomes (N,)).

    Candidate embeddings are mixed from the query and noise to spread cosine similarity over
    [-0.2, 1]; ages up to two hours, access counts log-uniform up to 10,000, success rates
    uniform, metadata sharing 0-4 of the request's 4 entries.  Outcomes are drawn from ``truth``
    (default :func:`lightweight_ok_probability`).
    """
    return [(RoutingRequest(q, cands, meta), raw, outcomes)
            for q, cands, meta, raw, outcomes in _simulated(n_requests, candidates_per_request, dim, seed, now, truth)]


def candidate_bodies(n_requests: int, candidates_per_request: int = 8, dim: int = 64, seed: int | None = 0,
                     now: float | None = None, truth: Callable[[np.ndarray], np.ndarray] | None = None,
                     ) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The same traffic as :func:`candidate_requests`, as ``POST /v1/route`` bodies with their outcomes."""
    return [({"query_embedding": q.tolist(), "metadata": meta,
              "candidates": [{"id": c.id, "embedding": c.embedding.tolist(), "metadata": c.metadata,
                              "created_at": c.created_at, "access_count": c.access_count, "success_rate": c.success_rate}
                             for c in cands]}, outcomes)
            for q, cands, meta, _raw, outcomes in _simulated(n_requests, candidates_per_request, dim, seed, now, truth)]


def _simulated(n_requests: int, candidates_per_request: int, dim: int, seed: int | None, now: float | None,
               truth: Callable[[np.ndarray], np.ndarray] | None) -> Iterator[tuple[np.ndarray, list[Candidate],
                                                                                dict[str, str], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    now = time.time() if now is None else now
    keys = ("domain", "language", "tenant", "tier")
    for r in range(n_requests):
        q = rng.normal(size=dim).astype(np.float32)
        q /= np.linalg.norm(q)
        meta = {k: f"{k}-{rng.integers(3)}" for k in keys}
        cands, raw = [], np.empty((candidates_per_request, 5))
        for i in range(candidates_per_request):
            target = rng.uniform(-0.2, 1.0)
            noise = rng.normal(size=dim)
            noise -= (noise @ q) * q
            noise /= np.linalg.norm(noise)
            emb = target * q + np.sqrt(max(0.0, 1 - target**2)) * noise
            age = rng.uniform(0, 7200)
            count = int(np.expm1(rng.uniform(0, np.log1p(10000))))
            success = float(rng.uniform(0, 1))
            shared = int(rng.integers(0, 5))
            cmeta = {k: (meta[k] if j < shared else "other") for j, k in enumerate(keys)}
            cands.append(Candidate(f"r{r}-c{i}", emb.astype(np.float32), cmeta, now - age, count, success))
            raw[i] = [target, np.exp(-0.001 * age), min(np.log1p(count) / np.log1p(10000), 1.0), success, shared / 4]
        outcomes = (rng.random(candidates_per_request) < (truth or lightweight_ok_probability)(raw)).astype(np.float32)
        yield q, cands, meta, raw, outcomes
