"""Query routers learn from /v1/route/query feedback: partial (bandit) outcomes → fine-tune → promote."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tinydancer.cli import app as cli
from tinydancer.demo import train_default_router_model
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.errors import TinyDancerError
from tinydancer.server.learning import RetrainConfig, bandit_targets, retrain_query_router
from tinydancer.server.registry import ModelRegistry
from tinydancer.llm.query_router import ROUTER_FILE, QueryRouter, QueryRouterConfig
from tinydancer.server import ServiceSettings, create_app
from tinydancer.server.storage import DecisionRow, SQLiteStorage
from tinydancer.server.storage.base import decision_tuples
from tinydancer.llm.tables import RoutingTable

EMBEDDER = HashingEmbedder(64)
FRUIT = ["apples", "bananas", "cherries", "grapes", "melons", "pears"]
MATHS = ["topology", "cohomology", "spectral sequences", "sheaves", "homotopy", "galois theory"]
MODELS = ["cheap", "mid", "top"]
#: P(success) per model, for fruit and maths questions
BEFORE = {"fruit": [0.9, 0.3, 0.9], "maths": [0.1, 0.85, 0.9]}
AFTER = {"fruit": [0.9, 0.3, 0.9], "maths": [0.9, 0.85, 0.9]}  # the cheap model learned maths


def questions(n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    kinds = ["maths" if rng.random() < 0.5 else "fruit" for _ in range(n)]
    return [f"item {i}: tell me about {rng.choice(MATHS if k == 'maths' else FRUIT)}" for i, k in enumerate(kinds)], kinds


@pytest.fixture()
def served_router(tmp_path):
    rng = np.random.default_rng(0)
    texts, kinds = questions(1200, rng)
    scores = np.array([[rng.random() < p for p in BEFORE[k]] for k in kinds], dtype=float)
    table = RoutingTable(texts, MODELS, scores, np.tile([1.0, 3.0, 10.0], (len(texts), 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(16,), epochs=40), embedder=EMBEDDER)
    folder = tmp_path / "router"
    router.save(folder)
    return folder


def log_feedback(storage: SQLiteStorage, n: int, seed: int) -> None:
    """Queries routed to a model chosen at random (exploration), with the drifted world's outcome."""
    rng = np.random.default_rng(seed)
    texts, kinds = questions(n, rng)
    embeddings = EMBEDDER.embed(texts)
    for i, (emb, kind) in enumerate(zip(embeddings, kinds)):
        model = int(rng.integers(3))
        rid = f"q{seed}-{i}"
        storage.record_decisions(rid, "query", "v1", [DecisionRow(MODELS[model], 0, emb, None, None, model == 0)], 50.0)
        storage.record_outcome(rid, None, bool(rng.random() < AFTER[kind][model]), None, None)


def cheap_quality_on_maths(router: QueryRouter) -> float:
    texts, _ = questions(200, np.random.default_rng(7))
    maths = [t for t in texts if any(m in t for m in MATHS)]
    return float(router.predicted_quality(EMBEDDER.embed(maths))[:, 0].mean())


def test_bandit_targets_learn_each_model_from_its_own_outcomes() -> None:
    # four queries on two topics (x), two models + the advantage column; model 0 answered queries
    # 0-2, model 1 only query 3 (too few to impute from: its column keeps the fallback)
    x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=np.float32)
    chosen = np.array([0, 0, 0, 1])
    observed = np.array([1.0, 0.0, 1.0, 0.2], dtype=np.float32)
    fallback = np.full((4, 3), 0.5, dtype=np.float32)
    t = bandit_targets(x, chosen, observed, fallback, k=1, pair=(1, 0))
    # model 0: the outcome of each query's nearest *other* query that model 0 answered:
    # 0 → 1, 1 → 0, 2 → 1 (cosine 0.1 beats 0), 3 → 2
    np.testing.assert_allclose(t[:, 0], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(t[:, 1], [0.5, 0.5, 0.5, 0.2])
    np.testing.assert_allclose(t[:, 2], (1 + t[:, 1] - t[:, 0]) / 2)
    assert (fallback == 0.5).all()  # the input is not modified


def test_a_drifted_world_is_learned_from_feedback_and_promoted(served_router, tmp_path) -> None:
    before = QueryRouter.load(served_router)
    assert cheap_quality_on_maths(before) < 0.3
    storage = SQLiteStorage(tmp_path / "logs.db")
    log_feedback(storage, 900, seed=1)
    registry = ModelRegistry(tmp_path / "registry")
    held = retrain_query_router(storage, served_router, registry, RetrainConfig(min_samples=200))
    assert not held.promoted and "--allow-mix-shift" in held.reason  # a drift this large waits for review
    assert held.registry_entry["metrics"]["gate"]["shift"] > 0.25
    registry = ModelRegistry(tmp_path / "registry2")
    report = retrain_query_router(storage, served_router, registry, RetrainConfig(min_samples=200, allow_mix_shift=True))
    storage.close()
    assert report.samples == 900 and report.skipped == 0 and report.promoted
    assert report.new["squared_error"] < report.old["squared_error"]
    after = QueryRouter.load(served_router)  # the served file was replaced
    assert after.model.extra_metadata["version"] == report.version and report.parent is None
    assert cheap_quality_on_maths(after) > 0.8  # the drifted world's truth: 0.9
    assert after.models == MODELS and after.cost_weight == before.cost_weight and after.embedder_id == EMBEDDER.id
    assert [v.version for v in registry.versions()] == [report.version] and registry.current() == report.version


def test_too_little_feedback_is_a_clear_error(served_router, tmp_path) -> None:
    storage = SQLiteStorage(tmp_path / "logs.db")
    log_feedback(storage, 30, seed=2)
    with pytest.raises(TinyDancerError, match="only 30 routed queries have feedback"):
        retrain_query_router(storage, served_router, ModelRegistry(tmp_path / "r"), RetrainConfig(min_samples=200))
    with pytest.raises(TinyDancerError, match="fine-tuning"):
        retrain_query_router(storage, served_router, ModelRegistry(tmp_path / "r"), RetrainConfig(mode="fresh"))
    storage.close()


def serving(router_folder, tmp_path, watch_interval_s: float, **settings):
    """An app serving ``router_folder`` (and a default candidate model), and its database path."""
    model = tmp_path / "candidates.safetensors"
    train_default_router_model(model)
    db = tmp_path / "t.db"
    return create_app(ServiceSettings(model_path=model, database_path=db, query_router_path=router_folder,
                                      watch_interval_s=watch_interval_s, auth_token=None, **settings)), db


def test_cli_retrains_and_the_service_hot_reloads_the_router(served_router, tmp_path) -> None:
    app, db = serving(served_router, tmp_path, 0)
    with TestClient(app) as client:
        service = app.state.service
        first = service.query_router
        emb = EMBEDDER.embed(["item 1: tell me about cohomology"])[0].tolist()
        before = client.post("/v1/route/query", json={"embedding": emb}).json()
        # the service's own logs feed retraining: route and report outcomes over HTTP ...
        texts, kinds = questions(50, np.random.default_rng(4))
        for text, kind in zip(texts, kinds):
            routed = client.post("/v1/route/query", json={"embedding": EMBEDDER.embed([text])[0].tolist()}).json()
            p = AFTER[kind][MODELS.index(routed["model"])]
            assert client.post("/v1/feedback", json={"request_id": routed["request_id"], "success": p > 0.5}).status_code == 200
        # ... though a router only learns about the models it sends traffic to: the cheap model's new
        # skill shows only in explored traffic, logged here directly
        storage = SQLiteStorage(db)
        log_feedback(storage, 600, seed=3)
        storage.close()
        result = CliRunner().invoke(cli, ["retrain", "--database-path", str(db), "--query-router", str(served_router), "--allow-mix-shift",
                                          "--registry", str(tmp_path / "registry"), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["promoted"] and report["samples"] == 650 and report["skipped"] == 0
        assert client.portal.call(service.check_files) == ["query router: reloaded"]
        assert service.query_router is not first
        after = client.post("/v1/route/query", json={"embedding": emb}).json()
        assert after["model"] == "cheap" and before["model"] != "cheap"
        (served_router / ROUTER_FILE).write_bytes(b"broken")  # a bad file keeps the router serving
        assert client.portal.call(service.check_files) == ["query router: failed"]
        assert 'tiny_dancer_model_reloads_total{result="failed"} 1.0' in client.get("/metrics").text
        assert client.post("/v1/route/query", json={"embedding": emb}).status_code == 200


def test_a_two_model_router_keeps_its_share_of_strong_calls(tmp_path) -> None:
    rng = np.random.default_rng(5)
    texts, kinds = questions(800, rng)
    # before: the small model fails maths; after: it fails fruit instead
    p_small = {"fruit": 0.9, "maths": 0.1}
    scores = np.array([[rng.random() < 0.9, rng.random() < p_small[k]] for k in kinds], dtype=float)
    table = RoutingTable(texts, ["big", "small"], scores, np.tile([10.0, 1.0], (len(texts), 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(16,), epochs=40), embedder=EMBEDDER)
    router.calibrate(0.3)
    router.save(tmp_path / "pair")
    storage = SQLiteStorage(tmp_path / "logs.db")
    texts, kinds = questions(600, np.random.default_rng(6))
    embeddings = EMBEDDER.embed(texts)
    for i, (emb, kind) in enumerate(zip(embeddings, kinds)):
        model = int(rng.integers(2))
        ok = rng.random() < (0.9 if model == 0 else {"fruit": 0.1, "maths": 0.9}[kind])
        storage.record_decisions(f"p{i}", "query", "v1", [DecisionRow(["big", "small"][model], 0, emb, None, None, model == 1)], 5.0)
        storage.record_outcome(f"p{i}", None, bool(ok), None, None)
    report = retrain_query_router(storage, tmp_path / "pair", ModelRegistry(tmp_path / "registry"), RetrainConfig())
    storage.close()
    assert report.promoted
    after = QueryRouter.load(tmp_path / "pair")
    strong = lambda r: r.predict(embeddings)[:, 2] >= r.threshold  # noqa: E731
    assert abs(strong(after).mean() - strong(router).mean()) < 0.02  # same share of strong calls ...
    fruit = np.array([k == "fruit" for k in kinds])
    assert fruit[strong(router)].mean() < 0.1 and fruit[strong(after)].mean() > 0.9  # ... now spent on fruit


def test_exploration_lets_the_service_learn_from_its_own_traffic(served_router, tmp_path) -> None:
    """With every query explored, HTTP traffic and feedback alone teach the router the drift."""
    app, db = serving(served_router, tmp_path, 0, query_exploration=1.0, exploration_seed=11)
    texts, kinds = questions(600, np.random.default_rng(8))
    outcomes = np.random.default_rng(9).random(len(texts))
    with TestClient(app) as client:
        chosen = []
        for text, kind, u in zip(texts, kinds, outcomes):
            routed = client.post("/v1/route/query", json={"embedding": EMBEDDER.embed([text])[0].tolist()}).json()
            assert routed["explored"] and routed["runner_up"] in MODELS
            chosen.append(routed["model"])
            ok = bool(u < AFTER[kind][MODELS.index(routed["model"])])
            assert client.post("/v1/feedback", json={"request_id": routed["request_id"], "success": ok}).status_code == 200
        assert 'tiny_dancer_query_explorations_total 600.0' in client.get("/metrics").text
    assert min(chosen.count(name) for name in MODELS) > 150  # drawn uniformly
    storage = SQLiteStorage(db)
    report = retrain_query_router(storage, served_router, ModelRegistry(tmp_path / "registry"), RetrainConfig(allow_mix_shift=True))
    storage.close()
    assert report.promoted and cheap_quality_on_maths(QueryRouter.load(served_router)) > 0.8


def test_exploration_draws_replay_with_their_seed(served_router, tmp_path) -> None:
    emb = EMBEDDER.embed(["what is 7 times 8?"])[0].tolist()

    def explored_models(seed: int, folder: str) -> list[str]:
        (tmp_path / folder).mkdir()
        app, _db = serving(served_router, tmp_path / folder, 0, query_exploration=0.5, exploration_seed=seed)
        with TestClient(app) as client:
            return [client.post("/v1/route/query", json={"embedding": emb}).json()["model"] for _ in range(40)]

    first, again, other = explored_models(3, "a"), explored_models(3, "b"), explored_models(4, "c")
    assert first == again
    assert first != other
    assert len(set(first)) > 1  # half the queries go to a model drawn at random


def test_exploration_share_is_validated(tmp_path) -> None:
    with pytest.raises(TinyDancerError, match="query_exploration"):
        ServiceSettings(model_path=tmp_path / "m.safetensors", query_exploration=1.5)


def test_feedback_on_a_text_query_reaches_the_outcome_memory_once(served_router, tmp_path) -> None:
    from tinydancer.server.learning import remembered_feedback
    from tinydancer.llm.memory import query_key

    app, db = serving(served_router, tmp_path, 0)
    repeat = "tell me about apples, the ones of the hesperides"
    with TestClient(app) as client:
        first = client.post("/v1/route/query", json={"query": repeat}).json()
        failed = []
        for _ in range(3):  # the model it goes to fails on this very query, three times
            routed = client.post("/v1/route/query", json={"query": repeat}).json()
            assert routed["model"] == first["model"]
            client.post("/v1/feedback", json={"request_id": routed["request_id"], "success": False})
            failed.append(routed["request_id"])
    storage = SQLiteStorage(db)
    log_feedback(storage, 300, seed=3)  # sent as embeddings: no key, so not remembered
    logs = storage.labelled("query")
    assert sum(k is not None for k in logs.query_keys) == 3 and query_key(repeat) in logs.query_keys
    report = retrain_query_router(storage, served_router, ModelRegistry(tmp_path / "registry"),
                                  RetrainConfig(min_samples=50, allow_mix_shift=True))
    assert report.promoted and "3 outcomes of text queries are now in the served router's outcome memory" in report.reason
    new = QueryRouter.load(served_router)
    assert len(new.memory) == 1200 + 1
    row = new.memory.find(np.array([query_key(repeat)], np.uint64))[0]
    answered = MODELS.index(first["model"])
    assert new.memory.counts[row].tolist() == [3.0 if j == answered else 0.0 for j in range(3)]
    net = new.estimate(EMBEDDER.embed([repeat]))[0]
    decision = new.route(repeat)
    quality = new.predicted_quality(repeat)[0]
    np.testing.assert_allclose(quality[answered], net[answered] / 4, rtol=1e-5)  # (1·net + 0 + 0 + 0) / 4
    assert decision.model != first["model"]
    # what was merged is marked: the same logs add nothing a second time
    usable = np.ones(len(logs.targets), dtype=bool)
    chosen = np.array([MODELS.index(t) for t in logs.targets])
    observed = logs.labels.astype(np.float32)
    memory, merged, _ = remembered_feedback(new, logs, usable, chosen, observed)
    assert merged == 0 and memory is new.memory

    # a failure corrected to a success replaces the failure the memory counted: 1 of 3, not 1 of 4
    storage.record_outcome(failed[0], None, True, None, None, correction=True)
    # a fourth outcome, recorded and corrected after that retrain, counts once, as corrected
    emb = EMBEDDER.embed([repeat])[0]
    storage.insert_decision_rows(decision_tuples("late", "query", "v1", [DecisionRow(first["model"], 0, emb, None, None, False)],
                                                 50.0, query_key=query_key(repeat)))
    storage.record_outcome("late", None, True, None, None)
    storage.record_outcome("late", None, False, None, None, correction=True)
    logs = storage.labelled("query")
    usable = np.ones(len(logs.targets), dtype=bool)
    chosen = np.array([MODELS.index(t) for t in logs.targets])
    memory, merged, _ = remembered_feedback(new, logs, usable, chosen, logs.labels.astype(np.float32),
                                            storage.corrections(new.info["memory_feedback_until"]))
    row = memory.find(np.array([query_key(repeat)], np.uint64))[0]
    assert merged == 2 and len(memory) == len(new.memory)
    assert memory.counts[row].tolist() == [4.0 if j == answered else 0.0 for j in range(3)]
    assert memory.sums[row, answered] == 1.0  # the corrected success; the late failure adds 0
    storage.close()


def test_a_query_router_without_its_embedder_says_so_and_never_answers_500(served_router, tmp_path) -> None:
    """Issue 16, item 4: `serve --query-router` without the router's embedder reported ready, then
    answered every text query with a 500."""
    r = QueryRouter.load(served_router)
    QueryRouter(r.model, r.models, r.costs, "not-installed-embedder", threshold=r.threshold, cost_weight=r.cost_weight,
                quality_bar=r.quality_bar).save(tmp_path / "broken")
    app, _db = serving(tmp_path / "broken", tmp_path, 0)
    with TestClient(app) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "make embed" in ready.json()["reason"]
        text = client.post("/v1/route/query", json={"query": "what is 7 times 8?"})
        assert text.status_code == 503 and "not-installed-embedder" in text.json()["detail"]
        by_embedding = client.post("/v1/route/query", json={"embedding": EMBEDDER.embed(["what is 7 times 8?"])[0].tolist()})
        assert by_embedding.status_code == 200  # embeddings still route
    result = CliRunner().invoke(cli, ["serve", "--query-router", str(tmp_path / "broken"), "--database-path",
                                      str(tmp_path / "cli.db"), "--model-path", str(tmp_path / "candidates.safetensors")])
    assert result.exit_code == 1 and "refusing to serve a query router" in result.output


def test_operating_points_from_serve_and_per_request(served_router, tmp_path) -> None:
    """Issue 16, item 3: serve and each /v1/route/query request choose the point, with the knob
    that fits the router, and the answer shows the point used."""
    emb = EMBEDDER.embed(["what is 7 times 8?"])[0].tolist()
    # cost dominates: the cheapest model (the weight counts each cost as a share of the dearest's)
    app, _db = serving(served_router, tmp_path, 0, query_cost_weight=10.0)
    with TestClient(app) as client:
        served = client.post("/v1/route/query", json={"embedding": emb}).json()
        assert served["model"] == "cheap" and served["operating_point"]["cost_weight"] == 10.0
        free = client.post("/v1/route/query", json={"embedding": emb, "cost_weight": 0.0}).json()
        assert free["operating_point"]["cost_weight"] == 0.0 and free["predicted_quality"] >= served["predicted_quality"]
        bar = client.post("/v1/route/query", json={"embedding": emb, "quality_bar": 0.0}).json()
        assert bar["model"] == "cheap" and bar["operating_point"]["quality_bar"] == 0.0
        wrong = client.post("/v1/route/query", json={"embedding": emb, "strong_share": 0.3})
        assert wrong.status_code == 422 and "cost_weight" in wrong.text  # the knob that fits, by name
        assert client.post("/v1/route/query", json={"embedding": emb}).json()["operating_point"]["cost_weight"] == 10.0
    with pytest.raises(TinyDancerError, match="--strong-share, --cost-weight, --quality-bar"):
        serving(served_router, tmp_path / "x", 0, query_strong_share=0.3)


def test_a_pair_router_serves_at_its_strong_share(tmp_path) -> None:
    from test_query_router import pair_table

    router = QueryRouter.fit(pair_table(600, 0), QueryRouterConfig(hidden_dims=(8,), epochs=10), embedder=EMBEDDER)
    router.save(tmp_path / "pair")
    texts = pair_table(200, 1).queries
    app, _db = serving(tmp_path / "pair", tmp_path, 0, query_strong_share=0.0)
    with TestClient(app) as client:
        never = [client.post("/v1/route/query", json={"embedding": e.tolist()}).json() for e in EMBEDDER.embed(texts[:40])]
        assert {r["model"] for r in never} == {"small"}
        always = client.post("/v1/route/query", json={"embedding": EMBEDDER.embed(texts[:1])[0].tolist(), "strong_share": 1.0}).json()
        assert always["model"] == "big" and always["operating_point"]["threshold"] <= always["strong_score"]
        assert client.post("/v1/route/query", json={"embedding": EMBEDDER.embed(texts[:1])[0].tolist(),
                                                    "cost_weight": 0.5}).status_code == 422


def test_a_pair_routers_corrected_outcome_moves_its_quality_and_advantage_not_its_counts() -> None:
    from test_query_router import pair_table
    from tinydancer.llm.memory import query_key
    from tinydancer.server.learning import remembered_feedback
    from tinydancer.server.storage import LabelledLogs

    emb = HashingEmbedder(64)
    table = pair_table(200, 0)
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(4,), epochs=2, folds=1), embedder=emb)
    router.info["memory_feedback_until"] = 100.0
    text = table.queries[0]  # remembered from training: one observation of each model and the advantage
    row = router.memory.find(np.array([query_key(text)], np.uint64))[0]
    before_sums, before_counts = router.memory.sums[row].copy(), router.memory.counts[row].copy()
    # the strong model's outcome 0, merged before the mark (at 90), corrected to 1 after it (at 150)
    logs = LabelledLogs(inputs=emb.embed([text]), labels=np.array([1.0], np.float32), quality=np.array([np.nan]),
                        created_at=np.array([80.0]), model_versions=["v1"], targets=[router.models[router.strong]],
                        query_keys=[query_key(text)], feedback_at=np.array([150.0]), request_ids=["r1"])
    corrections = [("r1", router.models[router.strong], 0, None, 90.0, 150.0)]
    memory, merged, until = remembered_feedback(router, logs, np.array([True]), np.array([router.strong]),
                                                np.array([1.0], np.float32), corrections)
    assert merged == 1 and until == 150.0
    np.testing.assert_array_equal(memory.counts[row], before_counts)
    change = np.zeros(3)
    change[router.strong], change[2] = 1.0, 0.5  # a better strong model: the advantage rises by half
    np.testing.assert_allclose(memory.sums[row], before_sums + change, rtol=1e-6)
    # had the replaced outcome been recorded after the mark (at 120), the memory never counted it
    corrections = [("r1", router.models[router.strong], 0, None, 120.0, 150.0)]
    memory, merged, _ = remembered_feedback(router, logs, np.array([True]), np.array([router.strong]),
                                            np.array([1.0], np.float32), corrections)
    assert merged == 1 and memory.counts[row, router.strong] == before_counts[router.strong] + 1


def test_retraining_since_a_time_still_remembers_older_queries_outcomes(served_router, tmp_path) -> None:
    """``--since`` narrows what the network trains on; the outcome memory still takes every
    outcome it has not seen, or its mark would move past the older ones for good."""
    import time

    from tinydancer.llm.memory import query_key

    storage = SQLiteStorage(tmp_path / "since.db")
    old_texts = [f"an old question about {f}, asked last year" for f in FRUIT[:3]]
    for i, (text, emb) in enumerate(zip(old_texts, EMBEDDER.embed(old_texts))):
        (row,) = decision_tuples(f"old{i}", "query", "v1", [DecisionRow("cheap", 0, emb, None, None, True)], 50.0,
                                 query_key=query_key(text))
        storage.insert_decision_rows([(*row[:13], 1000.0, *row[14:])])  # decided long before --since
        storage.record_outcome(f"old{i}", None, False, None, None)  # its feedback arrives now
    log_feedback(storage, 300, seed=3)
    registry = ModelRegistry(tmp_path / "registry")
    report = retrain_query_router(storage, served_router, registry,
                                  RetrainConfig(min_samples=50, allow_mix_shift=True, since=time.time() - 3600))
    assert report.samples == 300  # the network trained on the recent decisions only
    (entry,) = [v for v in registry.versions() if v.version == report.version]
    new = QueryRouter.load(entry.model_path)
    rows = new.memory.find(np.array([query_key(t) for t in old_texts], np.uint64))
    assert (rows >= 0).all() and new.memory.counts[rows, 0].tolist() == [1.0, 1.0, 1.0]
    storage.close()


def test_retrain_prints_its_summary_once_and_says_how_many_queries_moved(served_router, tmp_path) -> None:
    """Issue 26 #3: the summary was printed twice (progress and result) and said only 'routing mix
    moved 0.000' when queries swapped models at the same mix."""
    storage = SQLiteStorage(tmp_path / "logs.db")
    log_feedback(storage, 300, seed=3)
    storage.close()
    r = CliRunner().invoke(cli, ["retrain", "--database-path", str(tmp_path / "logs.db"), "--query-router", str(served_router),
                                 "--registry", str(tmp_path / "registry"), "--min-samples", "100", "--allow-mix-shift"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # the console wraps long lines
    assert text.count("held-out squared error") == 1, r.output
    moved = re.search(r"(\d+) of (\d+) held-out queries now go to another model", text)
    assert moved is not None, r.output
    assert 0 < int(moved[1]) <= int(moved[2])  # the cheap model learned maths: some held-out queries move to it
