"""Routing metrics on hand-made cases whose answers are known, and against RouteLLM's own recipe."""

from __future__ import annotations

import numpy as np
import pytest

from tinydancer.llm.evaluation import (
    aiq,
    brier_score,
    lambda_grid,
    oracle_points,
    expected_calibration_error,
    oracle_scores,
    pgr,
    routellm_curve,
    sweep_choices,
    sweep_curve,
    upper_hull,
)


def test_curve_apgr_and_cpt_by_hand() -> None:
    # thresholds (2 bins): 0.1, 0.25, 0.4 → 100 %, 50 %, 0 % strong
    curve = routellm_curve(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 1, 1]), np.array([1, 0, 1, 0]), num_results=2)
    np.testing.assert_allclose(curve.thresholds, [0.4, 0.25, 0.1])
    np.testing.assert_allclose(curve.strong_pct, [0, 50, 100])
    np.testing.assert_allclose(curve.quality, [50, 75, 100])
    assert curve.auc == pytest.approx(75.0)
    assert curve.apgr == pytest.approx(0.5)
    assert curve.cpt(0.5) == pytest.approx(50.0)
    assert curve.cpt(0.8) == pytest.approx(80.0)
    assert pgr(75, 50, 100) == 0.5


def test_oracle_ranking_recovers_everything_early() -> None:
    strong = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    weak = np.array([1, 0, 1, 0, 1, 1, 1, 1, 1, 1])
    curve = routellm_curve(oracle_scores(strong, weak), strong, weak)
    assert curve.apgr > 0.95
    assert curve.cpt(0.5) <= 20.0


def test_random_router_is_about_half() -> None:
    rng = np.random.default_rng(0)
    strong = (rng.random(20000) < 0.8).astype(float)
    weak = (rng.random(20000) < 0.65).astype(float)
    curve = routellm_curve(rng.random(20000), strong, weak)
    assert curve.apgr == pytest.approx(0.5, abs=0.03)


def test_matches_routellm_pandas_recipe() -> None:
    """The literal reference code: pd.qcut thresholds, ``>=`` except ``>`` at the last, trapz, interp."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(1)
    n = 997
    scores = np.round(rng.random(n), 2)  # ties included
    strong = rng.random(n) < 0.8
    weak = rng.random(n) < 0.65
    _, thresholds = pd.qcut(pd.Series(scores), 10, retbins=True, duplicates="drop")
    # pandas' default refuses duplicate edges; with few ties the edges coincide with np.quantile's
    assert len(thresholds) == 11
    rows = []
    for i, t in enumerate(thresholds):
        sel = scores >= t if i != len(thresholds) - 1 else scores > t
        rows.append({"strong_percentage": sel.mean() * 100, "accuracy": np.where(sel, strong, weak).mean() * 100})
    df = pd.DataFrame(rows).sort_values(by=["strong_percentage"])
    weak_acc, strong_acc = weak.mean() * 100, strong.mean() * 100
    auc = np.trapezoid(df["accuracy"], df["strong_percentage"] / 100)
    x = df["strong_percentage"] / 100
    apgr = (auc - np.trapezoid(np.full(len(x), weak_acc), x)) / (
        np.trapezoid(np.full(len(x), strong_acc), x) - np.trapezoid(np.full(len(x), weak_acc), x)
    )
    cpt50 = np.interp(0.5 * (strong_acc - weak_acc) + weak_acc, df["accuracy"], df["strong_percentage"])
    ours = routellm_curve(scores, strong, weak)
    assert ours.auc == pytest.approx(auc, rel=1e-12)
    assert ours.apgr == pytest.approx(apgr, rel=1e-12)
    assert ours.cpt(0.5) == pytest.approx(cpt50, rel=1e-12)


def test_aiq_by_hand() -> None:
    # hull (1,.5) → (2,.8), then flat at .8 (the point (3,.7) is below the flat extension)
    assert aiq([1, 2, 3, 1.5], [0.5, 0.8, 0.7, 0.55], 1.0, 3.0) == pytest.approx((0.65 + 0.8) / 2)
    # nothing left of the router's cheapest point counts
    assert aiq([1.5, 2], [0.6, 0.8], 1.0, 3.0) == pytest.approx((0.35 + 0.8) / 2)
    # a single point: flat to the right of it, zero to the left
    assert aiq([2], [0.5], 1.0, 3.0) == pytest.approx(0.25)
    # a convex dent is bridged by the hull
    assert aiq([0, 1, 2], [0.0, 0.1, 1.0], 0.0, 2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        aiq([1], [1], 2.0, 2.0)


def test_upper_hull_is_non_decreasing() -> None:
    rng = np.random.default_rng(2)
    xs, ys = upper_hull(rng.random(200), rng.random(200))
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)


def test_calibration_by_hand() -> None:
    assert brier_score([0.2, 0.8], [0, 1]) == pytest.approx(0.04)
    assert expected_calibration_error([0.2, 0.8], [0, 1]) == pytest.approx(0.2)
    assert expected_calibration_error([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0)


def test_savings_against_the_best_single_model_by_hand() -> None:
    from tinydancer.llm.evaluation import savings

    # a sweep from cheap to dear; the best single model has quality 0.80 at $10 a query
    costs, quality = [1.0, 2.0, 4.0, 8.0, 12.0], [0.50, 0.70, 0.76, 0.80, 0.81]
    out = savings(costs, quality, best_cost=10.0, best_quality=0.80)
    assert out["90%"] == {"mean_quality": 0.76, "mean_cost": 4.0, "saved_per_query": 6.0, "saved_share": 0.6}
    assert out["95%"]["mean_cost"] == 4.0  # 0.76 = 95 % of 0.80
    assert out["100%"] == {"mean_quality": 0.80, "mean_cost": 8.0, "saved_per_query": 2.0, "saved_share": 0.2}
    assert savings(costs, quality, 10.0, 0.90)["100%"] is None  # never reached


def test_a_sweep_by_hand_prices_and_the_oracle_equal_setting_by_setting() -> None:
    # three queries, two models: at cost weight ~0 the better-predicted model wins, at the top
    # of the grid the cheaper one everywhere
    quality = np.array([[0.9, 0.2], [0.1, 0.3], [0.6, 0.5]])
    costs = np.array([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    choices = sweep_choices(quality, costs, n_settings=5)
    assert choices[0].tolist() == [0, 1, 0] and choices[-1].tolist() == [1, 1, 1]
    cost, mean_quality = sweep_curve(choices, quality, costs)
    np.testing.assert_allclose([cost[0], mean_quality[0]], [5 / 3, 1.8 / 3])
    # per-query costs that vary, weighed by per-model prices instead: one setting at a time
    rng = np.random.default_rng(0)
    quality, costs = rng.random((50, 4)), rng.random((50, 4)) + 0.1
    prices = np.array([0.5, 0.2, 0.9, 0.1])
    lambdas = lambda_grid(quality, costs, 21)
    by_prices = sweep_choices(quality, costs, n_settings=21, prices=prices)
    for lam, row in zip(lambdas, by_prices):
        assert row.tolist() == np.argmax(quality - lam * prices, axis=1).tolist()
    oracle_cost, oracle_quality = oracle_points(quality, costs, 21)
    for lam, c, q in zip(lambdas, oracle_cost, oracle_quality):
        pick = np.argmax(quality - lam * costs, axis=1)
        assert c == pytest.approx(costs[np.arange(50), pick].mean()) and q == pytest.approx(quality[np.arange(50), pick].mean())
