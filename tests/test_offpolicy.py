"""The off-policy promotion gate and propensity-weighted retraining (issue 27, item 4), on
simulated logged exploration whose ground truth is known: easy prompts, which both models answer
well, and hard ones, which only the strong model answers well."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from test_gateway import EASY, EMBEDDER, HARD
from tinydancer.cli import app
from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.server.learning import RetrainConfig, bandit_targets, ips_weights, retrain_query_router
from tinydancer.server.offpolicy import (LoggedExploration, bootstrap_interval, offpolicy_gate, policy_choices,
                                         simulated_log)
from tinydancer.server.registry import ModelRegistry
from tinydancer.server.storage import SQLiteStorage, decision_record

#: the true chance that each model (strong, weak) answers well, by kind (easy, hard)
TRUTH = np.array([[0.9, 0.9], [0.9, 0.2]])
SHARE = 0.5


def prompts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.5
    return [f"question {rng.integers(10**6)} about {rng.choice(HARD if h else EASY)}" for h in hard], hard.astype(int)


def table(n: int, seed: int, shuffle: bool = False) -> RoutingTable:
    rng = np.random.default_rng(seed)
    queries, kind = prompts(n, seed)
    scores = (rng.random((n, 2)) < TRUTH[kind]).astype(float)
    if shuffle:  # the labels of other prompts: a router that learns nothing true
        scores = scores[rng.permutation(n)]
    return RoutingTable(queries, ["strong", "weak"], scores, np.tile([10.0, 1.0], (n, 1)))


def fit(t: RoutingTable) -> QueryRouter:
    router = QueryRouter.fit(t, QueryRouterConfig(hidden_dims=(8,), epochs=20, memory=False), embedder=EMBEDDER)
    router.calibrate(SHARE)
    return router


@pytest.fixture(scope="module")
def routers() -> dict[str, QueryRouter]:
    return {"current": fit(table(60, seed=5)), "better": fit(table(500, seed=1)), "shuffled": fit(table(500, seed=2, shuffle=True))}


def logged(router: QueryRouter, n: int, seed: int, share: float = 0.2) -> tuple[LoggedExploration, np.ndarray, list[str]]:
    """``router`` at SHARE with ``share`` exploration (two models: the other one at share / 1)."""
    texts, kind = prompts(n, seed)
    x = EMBEDDER.embed(texts)
    data = simulated_log(x, policy_choices(router, x, SHARE), TRUTH[kind], share, np.random.default_rng(seed + 100))
    return data, kind, texts


def truth(router: QueryRouter, x: np.ndarray, kind: np.ndarray) -> float:
    """The router's true mean quality at SHARE on these prompts."""
    return float(TRUTH[kind, policy_choices(router, x, SHARE)].mean())


def test_the_gate_accepts_a_better_router_and_refuses_a_shuffled_one(routers: dict[str, QueryRouter]) -> None:
    data, kind, _ = logged(routers["current"], 2000, seed=7)
    values = {name: truth(r, data.x, kind) for name, r in routers.items()}
    assert values["better"] > values["current"] + 0.02 and values["shuffled"] < values["current"] - 0.05, values
    better = offpolicy_gate(routers["current"], routers["better"], data, strong_share=SHARE)
    worse = offpolicy_gate(routers["current"], routers["shuffled"], data, strong_share=SHARE)
    assert better.passed is True and worse.passed is False, (better.summary, worse.summary)
    # the estimate of the promoted router's quality is near the truth, and its interval says so
    low, high = better.evidence["new"]["ci95"]
    assert low <= values["better"] <= high, (better.evidence["new"], values["better"])
    assert better.evidence["n"] == 2000 and 300 < better.evidence["explored"] < 500
    # too few logged decisions: the gate does not decide
    few = LoggedExploration(data.x[:50], data.action[:50], data.reward[:50], data.propensity[:50])
    assert offpolicy_gate(routers["current"], routers["better"], few).passed is None


def test_bootstrap_interval_covers_a_known_mean() -> None:
    terms = np.random.default_rng(0).normal(0.5, 1.0, 4000)
    low, high = bootstrap_interval(terms)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 / np.sqrt(4000), rel=0.15)


def test_inverse_propensity_weights_move_the_targets_towards_explored_outcomes() -> None:
    assert ips_weights(np.array([0.02, 0.8, np.nan]), clip=10.0).tolist() == [10.0, 1.25, 1.0]
    rng = np.random.default_rng(0)
    x = (np.ones((25, 8)) + rng.normal(0, 0.01, (25, 8))).astype(np.float32)  # one neighbourhood
    chosen = np.zeros(25, dtype=np.int64)
    observed = np.r_[np.ones(20), np.zeros(5)].astype(np.float32)  # the router's own picks did well; explored ones not
    propensity = np.r_[np.full(20, 0.9), np.full(5, 0.05)]
    fallback = np.full((25, 3), 0.5, np.float32)
    plain = bandit_targets(x, chosen, observed, fallback, k=10, pair=(0, 1))
    weighted = bandit_targets(x, chosen, observed, fallback, k=10, pair=(0, 1), weights=ips_weights(propensity, 10.0))
    # a row's ten nearest others hold about 8 good and 2 explored bad outcomes: ~0.8 unweighted;
    # weighted by 1/0.9 against 10, the explored ones dominate
    assert plain[:, 0].mean() > 0.7 and weighted[:, 0].mean() < 0.45
    assert np.allclose(weighted[:, 2], (1 + weighted[:, 0] - weighted[:, 1]) / 2)


def test_retraining_keeps_its_off_policy_evidence_in_the_registry(routers: dict[str, QueryRouter], tmp_path: Path) -> None:
    current = routers["current"]
    current.save(tmp_path / "router")
    data, _kind, texts = logged(current, 600, seed=9)
    storage = SQLiteStorage(tmp_path / "log.db")
    names = current.models
    rows, outcomes = [], []
    for i in range(len(data)):
        a = int(data.action[i])
        rows.append(decision_record(f"r{i}", "query", "v0", [names[a]], data.x[i:i + 1], np.array([0.5], np.float32), None,
                                    np.array([a == current.weak], np.uint8), 10.0, propensity=float(data.propensity[i]),
                                    explored=bool(data.propensity[i] < 0.5)))
        outcomes.append((f"r{i}", names[a], 0, int(data.reward[i]), None, None, 1.0))
    storage.insert_log(rows, [], outcomes)
    logs = storage.labelled("query")
    assert np.allclose(logs.propensity, data.propensity) and logs.explored.sum() == (data.propensity < 0.5).sum()
    registry = ModelRegistry(tmp_path / "registry")
    report = retrain_query_router(storage, tmp_path / "router", registry,
                                  RetrainConfig(epochs=5, offpolicy_min_rows=50, strong_share=SHARE))
    storage.close()
    evidence = report.registry_entry["metrics"]["offpolicy"]
    assert evidence["n"] == 120 and set(evidence) >= {"current", "new", "difference", "passed", "rule"}
    assert "off-policy (DR, n=120" in report.reason
    out = CliRunner().invoke(app, ["registry", "list", "--registry", str(tmp_path / "registry"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["metrics"]["offpolicy"]["n"] == 120
    table = CliRunner().invoke(app, ["registry", "list", "--registry", str(tmp_path / "registry")], env={"COLUMNS": "300"})
    assert "n=120" in table.output and ("passed" in table.output or "refused" in table.output)
