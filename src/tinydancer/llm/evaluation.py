"""Routing-quality metrics, computed exactly as the reference code does.

Two models (RouteLLM, ``routellm/evals/evaluate.py`` and ``benchmarks.py``)
    A router gives each query a score (higher = more likely to need the strong model).  The
    thresholds are the edges of ``pd.qcut(scores, num_results)`` — the 0, 10, ..., 100 %
    quantiles with linear interpolation, duplicates kept.  Threshold i sends a query to the strong
    model when ``score >= t_i``, except the last edge, where it is ``score > t_i`` (so 0 % strong).
    Each threshold gives (% strong calls, quality in %).  Sorted by % strong:
    AUC = trapz(quality, strong_pct / 100); APGR = (AUC - weak_auc) / (strong_auc - weak_auc) with
    weak/strong_auc the same integral of the constant weak/strong quality; CPT(x) =
    ``np.interp(weak + x (strong - weak), quality, strong_pct)``, in percent of strong calls.

N models (RouterBench's AIQ, as issue 3 defines it)
    Sweep the router's cost knob to get (mean cost, mean quality) points; take their upper convex
    hull, made non-decreasing and extended flat to the right; AIQ is its average height over
    [cheapest single model's mean cost, dearest single model's mean cost], counting zero left of
    the router's cheapest point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ValidationError

_trapz = getattr(np, "trapezoid", None) or getattr(np, "trapz")


# ---------------------------------------------------------------------- two models
@dataclass(frozen=True)
class RoutingCurve:
    """RouteLLM's curve: % strong calls and quality (in %) per threshold, sorted by % strong."""

    thresholds: np.ndarray
    strong_pct: np.ndarray
    quality: np.ndarray
    weak_quality: float
    strong_quality: float

    @property
    def auc(self) -> float:
        return float(_trapz(self.quality, self.strong_pct / 100))

    @property
    def apgr(self) -> float:
        x = self.strong_pct / 100
        weak_auc = float(_trapz(np.full(len(x), self.weak_quality), x))
        strong_auc = float(_trapz(np.full(len(x), self.strong_quality), x))
        return (self.auc - weak_auc) / (strong_auc - weak_auc)

    def cpt(self, pgr: float) -> float:
        """% of strong calls needed to reach a performance gap recovered of ``pgr`` (0..1)."""
        target = pgr * (self.strong_quality - self.weak_quality) + self.weak_quality
        return float(np.interp(target, self.quality, self.strong_pct))


def routellm_curve(
    scores: np.ndarray, strong_quality: np.ndarray, weak_quality: np.ndarray, num_results: int = 10
) -> RoutingCurve:
    """The curve RouteLLM's ``Benchmark.evaluate`` yields for a router's per-query scores."""
    scores = np.asarray(scores, dtype=np.float64)
    s = np.asarray(strong_quality, dtype=np.float64)
    w = np.asarray(weak_quality, dtype=np.float64)
    if not (scores.shape == s.shape == w.shape) or scores.ndim != 1 or scores.size == 0:
        raise ValidationError("scores and the two quality arrays must be equal-length, non-empty vectors")
    if not np.isfinite(scores).all():
        raise ValidationError("router scores contain NaN or Inf")
    thresholds = np.quantile(scores, np.linspace(0, 1, num_results + 1))
    pct, quality = [], []
    for i, t in enumerate(thresholds):
        selection = scores >= t if i != len(thresholds) - 1 else scores > t
        pct.append(selection.mean() * 100)
        quality.append(np.where(selection, s, w).mean() * 100)
    order = np.argsort(pct, kind="stable")
    return RoutingCurve(
        thresholds=thresholds[order],
        strong_pct=np.asarray(pct)[order],
        quality=np.asarray(quality)[order],
        weak_quality=float(w.mean() * 100),
        strong_quality=float(s.mean() * 100),
    )


def pgr(quality: float, weak_quality: float, strong_quality: float) -> float:
    """Performance gap recovered: (q_router - q_weak) / (q_strong - q_weak)."""
    return (quality - weak_quality) / (strong_quality - weak_quality)


def oracle_scores(strong_quality: np.ndarray, weak_quality: np.ndarray) -> np.ndarray:
    """The oracle's ranking: the strong model's true advantage on each query."""
    return np.asarray(strong_quality, dtype=np.float64) - np.asarray(weak_quality, dtype=np.float64)


# ---------------------------------------------------------------------- N models
def upper_hull(costs: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Upper convex hull of the points, then cut at its highest point (non-decreasing part)."""
    pts = sorted(set(zip(map(float, costs), map(float, qualities))))
    if not pts:
        raise ValidationError("no (cost, quality) points")
    hull: list[tuple[float, float]] = []
    for p in pts:
        # keep only right turns (upper hull); equal costs keep the better quality via sort order
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        if hull and hull[-1][0] == p[0]:
            hull[-1] = p if p[1] > hull[-1][1] else hull[-1]
            continue
        hull.append(p)
    xs = np.array([p[0] for p in hull])
    ys = np.array([p[1] for p in hull])
    top = int(np.argmax(ys))
    return xs[: top + 1], ys[: top + 1]


def aiq(costs: Sequence[float], qualities: Sequence[float], cost_min: float, cost_max: float) -> float:
    """Average quality of the non-decreasing upper hull over [cost_min, cost_max]."""
    if not cost_max > cost_min:
        raise ValidationError(f"AIQ needs cost_max > cost_min, got [{cost_min}, {cost_max}]")
    xs, ys = upper_hull(costs, qualities)
    lo = max(cost_min, float(xs[0]))  # zero to the left of the router's cheapest point
    if lo >= cost_max:
        return 0.0
    grid = np.unique(np.concatenate([[lo, cost_max], xs[(xs > lo) & (xs < cost_max)]]))
    heights = np.interp(grid, xs, ys, right=float(ys[-1]))
    return float(_trapz(heights, grid) / (cost_max - cost_min))


def sweep_points(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """(mean cost, mean quality) of routing query i to model ``choices[i]``."""
    rows = np.arange(len(choices))
    return float(costs[rows, choices].mean()), float(scores[rows, choices].mean())


def sweep_curve(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean cost, mean quality), each (K,), of a (K, N) sweep of choices (:func:`sweep_choices`)."""
    rows = np.arange(scores.shape[0])[None, :]
    return costs[rows, choices].mean(axis=1), scores[rows, choices].mean(axis=1)


def oracle_points(scores: np.ndarray, costs: np.ndarray, n_settings: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's frontier: per query, argmax(true quality - λ cost) over a sweep of λ."""
    return sweep_curve(sweep_choices(scores, costs, n_settings=n_settings), scores, costs)


def cost_weight_for_budget(quality: np.ndarray, costs: np.ndarray, budget: float) -> tuple[float, float, float] | None:
    """The cost weight whose choices (``argmax(quality - weight * costs)`` per row) keep the mean
    predicted cost within ``budget`` with the best mean predicted quality: (weight, quality, cost),
    or None when no weight does.  ``quality`` is (N, M) predicted, ``costs`` (M,) per model in
    dollars.  The weight multiplies each cost as a share of the dearest model's, as
    :meth:`QueryRouter.choose` does, so the weight found is the router's own ``cost_weight``."""
    costs = np.asarray(costs, dtype=np.float64)
    dearest = float(costs.max()) if costs.size else 0.0
    relative = costs / dearest if dearest > 0 else np.zeros_like(costs)
    rows = np.arange(len(quality))
    best: tuple[float, float, float] | None = None
    for lam in sorted(set(lambda_grid(quality, relative).tolist()) | {0.0}):
        choice = np.argmax(quality - lam * relative, axis=1)
        q, c = float(quality[rows, choice].mean()), float(costs[choice].mean())
        if c <= budget and (best is None or (q, -c) > (best[1], -best[2])):
            best = (float(lam), q, c)
    return best


def lambda_grid(quality: np.ndarray, costs: np.ndarray, n_settings: int = 201) -> np.ndarray:
    """Cost weights from ~0 (quality only) to one that makes the cheapest model win everywhere.

    ``costs`` is (N, M) per query or (M,) per model; the grid's top is set by the smallest
    price step between models, so every switch between two models happens inside the sweep.
    """
    spread = float(np.ptp(quality)) if quality.size else 1.0
    # the largest useful weight makes even the smallest price step outweigh any quality gap
    levels = np.unique(np.asarray(costs, dtype=np.float64).mean(axis=0) if np.ndim(costs) == 2 else costs)
    gaps = np.diff(levels)
    min_gap = float(gaps[gaps > 1e-12].min()) if (gaps > 1e-12).any() else 1.0
    top = 4.0 * max(spread, 1e-6) / min_gap
    # geometric spacing resolves the knee; the smallest weight is ~0 (quality only) but still
    # positive, so among equally good models the cheaper one wins (argmax alone takes the first)
    return np.concatenate([[top * 1e-9], np.geomspace(top * 1e-4, top, n_settings - 1)])


def sweep_choices(outputs: np.ndarray, costs: np.ndarray, pair: tuple[int, int] | None = None,
                  n_settings: int = 201, prices: np.ndarray | None = None,
                  lambdas: np.ndarray | None = None) -> np.ndarray:
    """(K, N): the model each query goes to at each of K settings of a router's knob.

    ``outputs`` are a router's (N, M) predicted qualities, plus for a ``pair`` = (strong, weak)
    the advantage score in column M; the knob is then the threshold on that score (its
    quantiles, and one above every score: all weak), else the cost weight λ of
    ``argmax(quality - λ cost)`` over :func:`lambda_grid`.  The cost there is ``costs`` (N, M),
    or ``prices`` (M,) where given: a router weighs the per-model prices it was trained with,
    since a query's own cost is known only after the call.  ``lambdas``: the cost weights to
    sweep instead of :func:`lambda_grid`'s.
    """
    m = costs.shape[1]
    if pair is not None:
        score = outputs[:, m]
        thresholds = np.concatenate([np.quantile(score, np.linspace(0, 1, n_settings)), [np.inf]])
        return np.where(score[None, :] >= thresholds[:, None], pair[0], pair[1])
    quality = outputs[:, :m]
    lambdas = lambda_grid(quality, costs, n_settings) if lambdas is None else np.asarray(lambdas, dtype=np.float64)
    step = max(1, 250_000 // max(quality.size, 1))  # settings per block: cache-sized blocks (2x faster than 4M cells)
    weighed = (costs if prices is None else np.asarray(prices, dtype=np.float64)[None, :])[None]
    return np.concatenate([np.argmax(quality[None] - lambdas[i : i + step, None, None] * weighed, axis=2)
                           for i in range(0, len(lambdas), step)])


def choices_aiq(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> float:
    """AIQ of a (K, N) sweep of choices (:func:`sweep_choices`) on these scores and costs."""
    cost, quality = sweep_curve(choices, scores, costs)
    mean_costs = costs.mean(axis=0)
    return aiq(cost, quality, float(mean_costs.min()), float(mean_costs.max()))


def router_aiq(outputs: np.ndarray, scores: np.ndarray, costs: np.ndarray, pair: tuple[int, int] | None = None) -> float:
    """AIQ of routing by ``outputs`` (see :func:`sweep_choices`): the cost-aware criterion a
    router's settings are chosen by, whichever model is dearer or better."""
    return choices_aiq(sweep_choices(outputs, costs, pair), scores, costs)


def random_point(scores: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """Expected (cost, quality) of picking a model uniformly at random per query."""
    return float(costs.mean()), float(scores.mean())


# ---------------------------------------------------------------------- calibration
def brier_score(probs: np.ndarray, outcomes: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(probs: np.ndarray, outcomes: np.ndarray, n_bins: int = 10) -> float:
    """Equal-width bins on [0, 1]; the count-weighted |observed rate − mean prediction|."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(outcomes, dtype=np.float64).ravel()
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    # count · |mean outcome − mean prediction| per bin is |Σ outcome − Σ prediction|
    gap = np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins)
    return float(np.abs(gap).sum() / p.size)


def savings(curve_costs: Sequence[float], curve_quality: Sequence[float], best_cost: float, best_quality: float,
            fractions: Sequence[float] = (0.9, 0.95, 1.0)) -> dict[str, dict[str, float] | None]:
    """Money saved against always calling the best single model, at fractions of its quality.

    For each fraction f: the cheapest operating point of the router's sweep whose mean quality
    reaches ``f × best_quality``, its mean cost, and what it saves per query against
    ``best_cost`` (also as a share of it).  None where no point of the sweep reaches the bar.
    """
    costs = np.asarray(curve_costs, dtype=np.float64)
    quality = np.asarray(curve_quality, dtype=np.float64)
    out: dict[str, dict[str, float] | None] = {}
    for f in fractions:
        ok = quality >= f * best_quality - 1e-12
        key = f"{f:.0%}"
        if not ok.any():
            out[key] = None
            continue
        i = int(np.flatnonzero(ok)[np.argmin(costs[ok])])
        saved = best_cost - float(costs[i])
        out[key] = {"mean_quality": float(quality[i]), "mean_cost": float(costs[i]), "saved_per_query": saved,
                    "saved_share": saved / best_cost if best_cost > 0 else 0.0}
    return out
