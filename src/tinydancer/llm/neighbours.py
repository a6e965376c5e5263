"""Neighbour smoothing: the mean outcome of a query's nearest queries by cosine similarity.

Outcome labels are single noisy draws (did this model answer this question well?).  The mean
over a query's ``k`` nearest training queries is a smoothed estimate of the same thing; a
router's network is distilled from it, missing cells of a partial table are filled with it,
and cross-validation (:mod:`tinydancer.llm.selection`) uses it as a cheap predictor to choose
``k``.  One pass over the similarity matrix serves every ``k`` at once: the nearest ``max(ks)``
rows are sorted once and the means for smaller ``k`` are prefix sums of that order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import ValidationError


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _prefix_means(idx: np.ndarray, values: np.ndarray, observed: np.ndarray, partial: bool,
                  capped: dict[int, int], fallback: np.ndarray) -> dict[int, np.ndarray]:
    """For rows whose neighbours ``idx`` (b, k_max) are sorted nearest first: each k's mean of
    ``values`` over the first ``capped[k]`` of them (over those that observed the cell, when
    ``partial``; ``fallback`` where none did)."""
    sums = np.cumsum(values[idx], axis=1)  # (b, k_max, m)
    counts = np.cumsum(observed[idx], axis=1) if partial else None
    out = {}
    for k, kc in capped.items():
        if counts is None:
            out[k] = sums[:, kc - 1] / kc
        else:
            c = counts[:, kc - 1]
            out[k] = np.where(c > 0, sums[:, kc - 1] / np.maximum(c, 1), fallback)
    return out


def neighbour_means_by_k(x: np.ndarray, ref_x: np.ndarray, ref_y: np.ndarray, ks: Sequence[int],
                         exclude: np.ndarray | None = None, block: int = 1024) -> dict[int, np.ndarray]:
    """For each ``k`` in ``ks``, the mean of ``ref_y`` over each row of ``x``'s ``k`` nearest
    reference rows (NaN cells of ``ref_y`` are missing outcomes: each mean is over the neighbours
    that have one; a cell none of them has gets the column's observed mean).

    ``exclude[i]``, when given and >= 0, is row i's own position in the reference (a query is not
    its own neighbour).  A ``k`` larger than the reference allows is capped, so the key of the
    result is the ``k`` asked for.  Computed in blocks of ``block`` rows: memory stays
    ``block × len(ref_x)``.
    """
    n_ref = ref_x.shape[0]
    available = n_ref - (1 if exclude is not None and (exclude >= 0).any() else 0)
    if available <= 0 or not ks or min(ks) <= 0:
        raise ValidationError("neighbour means need k >= 1 and at least one reference row besides the excluded one")
    capped = {k: min(int(k), available) for k in ks}
    k_max = max(capped.values())
    xn, rn = _unit(x), _unit(ref_x)
    observed = ~np.isnan(ref_y)
    partial = not bool(observed.all())
    values = np.where(observed, ref_y, 0.0).astype(np.float64)
    fallback = values.sum(axis=0) / np.maximum(observed.sum(axis=0), 1)
    out = {k: np.empty((x.shape[0],) + ref_y.shape[1:], dtype=np.float32) for k in ks}
    for start in range(0, x.shape[0], block):
        sims = xn[start : start + block] @ rn.T
        if exclude is not None:
            own = exclude[start : start + block]
            rows = np.flatnonzero(own >= 0)
            sims[rows, own[rows]] = -np.inf
        idx = np.argpartition(-sims, k_max - 1, axis=1)[:, :k_max]
        if len(capped) > 1:  # nearest first, so that each k's neighbours are a prefix
            idx = np.take_along_axis(idx, np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1), axis=1)
        for k, means in _prefix_means(idx, values, observed, partial, capped, fallback).items():
            out[k][start : start + block] = means
    return out


def neighbour_means(x: np.ndarray, ref_x: np.ndarray, ref_y: np.ndarray, k: int, exclude: np.ndarray | None = None,
                    block: int = 1024) -> np.ndarray:
    """The mean of ``ref_y`` over each row of ``x``'s ``k`` nearest reference rows (see
    :func:`neighbour_means_by_k`)."""
    return neighbour_means_by_k(x, ref_x, ref_y, [k], exclude=exclude, block=block)[k]


class NeighbourIndex:
    """Every row's nearest other rows of one table, nearest first, found once.

    Cross-validation smooths many subsets of the same table (each fold's rows, each fold's
    training slice, the held-out rows against the others).  With the ``depth`` nearest rows of
    each row on file, the ``k`` nearest *within a subset* are the first ``k`` of that list that
    lie in the subset: a gather instead of a pass over the similarity matrix.  A row whose list
    holds too few subset rows (a small subset, or a large ``k``) is computed directly, so the
    result always equals :func:`neighbour_means_by_k`.
    """

    def __init__(self, x: np.ndarray, depth: int, block: int = 1024) -> None:
        self.x = x
        n = x.shape[0]
        self.depth = max(1, min(int(depth), n - 1))
        self.block = block
        xn = _unit(x)
        order = np.empty((n, self.depth), dtype=np.int32)
        # one BLAS thread, as in training, so that every product of a router's training runs the
        # same way (RESULTS.md's numbers were made so); two threads would save little here:
        # 0.63 s against 0.73 s for the 5,608 LLMRouter queries
        with threadpool_limits(limits=1, user_api="blas"):
            for start in range(0, n, block):
                sims = xn[start : start + block] @ xn.T
                rows = np.arange(start, min(start + block, n))
                sims[rows - start, rows] = -np.inf
                idx = np.argpartition(-sims, self.depth - 1, axis=1)[:, : self.depth]
                near = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1)
                order[start : start + block] = np.take_along_axis(idx, near, axis=1)
        self.order = order

    def means_by_k(self, rows: np.ndarray, ref_rows: np.ndarray, y: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
        """:func:`neighbour_means_by_k` of table rows ``rows`` over table rows ``ref_rows`` (a row
        is never its own neighbour); ``y`` holds one target row per table row."""
        rows, ref_rows = np.asarray(rows), np.asarray(ref_rows)
        n = self.order.shape[0]
        in_ref = np.zeros(n, dtype=bool)
        in_ref[ref_rows] = True
        available = len(ref_rows) - (1 if np.isin(rows, ref_rows).any() else 0)
        if available <= 0 or not ks or min(ks) <= 0:
            raise ValidationError("neighbour means need k >= 1 and at least one reference row besides the excluded one")
        capped = {k: min(int(k), available) for k in ks}
        k_max = max(capped.values())
        observed = ~np.isnan(y)
        partial = not bool(observed[ref_rows].all())
        values = np.where(observed, y, 0.0).astype(np.float64)
        fallback = values[ref_rows].sum(axis=0) / np.maximum(observed[ref_rows].sum(axis=0), 1)
        out = {k: np.empty((len(rows),) + y.shape[1:], dtype=np.float32) for k in ks}
        short: list[np.ndarray] = [np.arange(len(rows))] if k_max > self.depth else []
        for start in range(0, len(rows) if k_max <= self.depth else 0, self.block):
            part = rows[start : start + self.block]
            cand = self.order[part]
            ok = in_ref[cand]
            rank = np.cumsum(ok, axis=1)
            enough = rank[:, -1] >= k_max
            short.append(start + np.flatnonzero(~enough))
            # each row's first k_max candidates that are reference rows, nearest first (row-major order)
            keep = ok[enough] & (rank[enough] <= k_max)
            idx = cand[enough][keep].reshape(-1, k_max)
            at = start + np.flatnonzero(enough)
            for k, means in _prefix_means(idx, values, observed, partial, capped, fallback).items():
                out[k][at] = means
        missing = np.concatenate(short) if short else np.zeros(0, dtype=np.int64)
        if missing.size:  # rows whose nearest `depth` hold too few reference rows: the direct way
            position = np.full(n, -1)
            position[ref_rows] = np.arange(len(ref_rows))
            exact = neighbour_means_by_k(self.x[rows[missing]], self.x[ref_rows], y[ref_rows], ks,
                                         exclude=position[rows[missing]], block=self.block)
            for k in ks:
                out[k][missing] = exact[k]
        return out
