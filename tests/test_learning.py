"""The learning loop: logs → retrain → versioned → promoted only if not worse → hot reload."""

from __future__ import annotations


import numpy as np
import pytest
from fastapi.testclient import TestClient

from tinydancer import FastGRNN
from tinydancer.demo import traffic_dataset, train_default_router_model
from tinydancer.errors import TinyDancerError
from tinydancer.candidates import FeatureEngineer
from tinydancer.server.learning import RetrainConfig, retrain
from tinydancer.server.registry import ModelRegistry
from tinydancer.candidates import Router, RouterConfig
from tinydancer.server import ServiceSettings, create_app
from tinydancer.server.storage import DecisionRow, SQLiteStorage
from tinydancer.synthetic import candidate_requests, drifted_lightweight_ok_probability


def log_traffic(storage: SQLiteStorage, router: Router, n_requests: int, seed: int, truth=None) -> None:
    """Route simulated requests and record every candidate's outcome, as a service would."""
    for k, (request, _raw, outcomes) in enumerate(candidate_requests(n_requests, 8, seed=seed, truth=truth)):
        response = router.route(request)
        ranked = list(response.decisions)
        index = {cid: i for i, cid in enumerate(request.ids)}
        rid = f"s{seed}-{k}"
        storage.record_decisions(rid, "candidate", response.model_version,
                                 [DecisionRow(d.candidate_id, r, response.features[index[d.candidate_id]], d.confidence,
                                              d.uncertainty, d.use_lightweight) for r, d in enumerate(ranked)], 10.0)
        for cid, y in zip(request.ids, outcomes):
            storage.record_outcome(rid, cid, bool(y), None, None)


def accuracy_against(model_path, truth, seed: int = 99) -> float:
    engineer = FeatureEngineer()
    model = FastGRNN.load(model_path)
    hits = total = 0
    for request, raw, _ in candidate_requests(150, 8, seed=seed):
        p = model.predict(engineer.compute(request))[:, 0]
        hits += int(((p >= 0.5) == (truth(raw) >= 0.5)).sum())
        total += len(p)
    return hits / total


@pytest.fixture()
def world(tmp_path):
    served = tmp_path / "served.safetensors"
    train_default_router_model(served)
    storage = SQLiteStorage(tmp_path / "logs.db")
    yield served, storage, ModelRegistry(tmp_path / "registry")
    storage.close()


def test_retrain_learns_a_drifted_world_and_is_promoted(world) -> None:
    served, storage, registry = world
    before_sha = served.read_bytes()
    before = accuracy_against(served, drifted_lightweight_ok_probability)
    log_traffic(storage, Router(RouterConfig(model_path=served)), 400, seed=1, truth=drifted_lightweight_ok_probability)
    report = retrain(storage, served, registry, RetrainConfig(seed=0))
    assert report.samples == 3200 and report.train + report.calibration + report.holdout == 3200
    assert report.promoted and report.new["log_loss"] <= report.old["log_loss"]
    assert served.read_bytes() != before_sha
    after = accuracy_against(served, drifted_lightweight_ok_probability)
    assert after > before + 0.05
    entry = registry.versions()[-1]
    assert entry.promoted and entry.parent == "default-demo-1" and registry.current() == entry.version
    assert FastGRNN.load(served).extra_metadata["version"] == entry.version
    assert "conformal_scores" in FastGRNN.load(served).aux_tensors


def test_a_worse_model_is_kept_but_not_promoted(world) -> None:
    served, storage, registry = world
    before = served.read_bytes()
    log_traffic(storage, Router(RouterConfig(model_path=served)), 60, seed=2)
    # a fresh model trained for one epoch at a negligible learning rate is barely better than random
    report = retrain(storage, served, registry, RetrainConfig(mode="fresh", epochs=1, learning_rate=1e-6, min_samples=100))
    assert not report.promoted and report.new["log_loss"] > report.old["log_loss"]
    assert served.read_bytes() == before
    assert [v.promoted for v in registry.versions()] == [False] and registry.current() is None


def test_retrain_needs_enough_outcomes(world) -> None:
    served, storage, registry = world
    with pytest.raises(TinyDancerError, match="feedback"):
        retrain(storage, served, registry)


def test_service_hot_reloads_a_promoted_file(tmp_path) -> None:
    """One watcher step at a time (no sleeps): a promoted file is picked up, a broken one is read,
    refused and counted, and the previous model keeps serving."""
    served = tmp_path / "served.safetensors"
    train_default_router_model(served)
    app = create_app(ServiceSettings(model_path=served, database_path=tmp_path / "t.db", watch_interval_s=0))
    service = app.state.service
    with TestClient(app) as client:
        assert client.portal.call(service.check_files) == []  # nothing changed since start
        assert client.get("/info").json()["model"]["version"] == "default-demo-1"
        model = FastGRNN.load(served)
        model.extra_metadata["version"] = "promoted-2"
        model.save(served)  # atomic replace, as a promotion does
        assert client.portal.call(service.check_files) == ["model: reloaded"]
        assert client.get("/info").json()["model"]["version"] == "promoted-2"
        served.write_bytes(b"broken")  # a bad file must not take the service down
        assert client.portal.call(service.check_files) == ["model: failed"]
        assert 'tiny_dancer_model_reloads_total{result="failed"} 1.0' in client.get("/metrics").text
        assert client.portal.call(service.check_files) == []  # the same broken file is not retried
        assert client.get("/info").json()["model"]["version"] == "promoted-2"
        body = {"query_embedding": [1.0, 0.0], "candidates": [{"id": "a", "embedding": [1.0, 0.1]}]}
        assert client.post("/v1/route", json=body).status_code == 200


def test_storage_migrates_and_reports_percentiles(tmp_path) -> None:
    storage = SQLiteStorage(tmp_path / "s.db")
    assert storage.schema_version == 12 and storage.migrate() == 12  # idempotent
    for i in range(100):
        storage.record_decisions(f"r{i}", "candidate", "v", [DecisionRow("a", 0, np.zeros(5), 0.5, 0.1, True)], float(i + 1))
    stats = storage.statistics()
    assert stats["total_requests"] == 100
    assert stats["p50_latency_us"] == pytest.approx(50.5) and stats["p99_latency_us"] == pytest.approx(99.01)
    storage.close()


def test_candidate_catalogue_upserts(tmp_path) -> None:
    from tinydancer.candidates import Candidate

    storage = SQLiteStorage(tmp_path / "c.db")
    assert storage.upsert_candidates([Candidate("a", [1.0, 0.0], {"k": "v"}, None, 3, 0.5)]) == 1
    storage.upsert_candidates([Candidate("a", [0.0, 1.0], {}, None, 4, 0.7), Candidate("b", [1.0, 1.0])])
    assert storage.count("candidates") == 2
    row = storage._conn().execute("SELECT access_count, success_rate FROM candidates WHERE id='a'").fetchone()
    assert row[0] == 4 and row[1] == pytest.approx(0.7)
    storage.close()


def test_cli_retrain_model_path_promotes_and_the_service_reports_the_new_sha256(world, tmp_path) -> None:
    """`tinydancer retrain --model-path` on logged candidate outcomes, then /info names the file's sha256."""
    import hashlib
    import json

    from typer.testing import CliRunner

    from tinydancer.cli import app as cli

    served, storage, _registry = world
    log_traffic(storage, Router(RouterConfig(model_path=served)), 400, seed=1, truth=drifted_lightweight_ok_probability)
    before = hashlib.sha256(served.read_bytes()).hexdigest()
    result = CliRunner().invoke(cli, ["retrain", "--database-path", str(tmp_path / "logs.db"), "--model-path", str(served),
                                      "--registry", str(tmp_path / "reg"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["promoted"] and report["samples"] == 3200 and report["new"]["log_loss"] <= report["old"]["log_loss"]
    after = hashlib.sha256(served.read_bytes()).hexdigest()
    assert after != before
    assert (tmp_path / "reg" / "versions" / report["version"] / "model.safetensors").read_bytes() == served.read_bytes()
    app = create_app(ServiceSettings(model_path=served, database_path=tmp_path / "svc.db", watch_interval_s=0))
    with TestClient(app) as client:
        model = client.get("/info").json()["model"]
        assert model["sha256"] == after and model["version"] == report["version"]


def test_breaker_reset_closes_an_open_breaker(tmp_path) -> None:
    served = tmp_path / "served.safetensors"
    train_default_router_model(served)
    app = create_app(ServiceSettings(model_path=served, database_path=tmp_path / "b.db", watch_interval_s=0, auth_token=None))
    body = {"query_embedding": [1.0, 0.0], "candidates": [{"id": "a", "embedding": [1.0, 0.1]}]}
    with TestClient(app) as client:
        breaker = app.state.service.router.breaker
        for _ in range(breaker.failure_threshold):
            breaker.record_failure()  # as failed inferences would
        status = client.get("/admin/circuit-breaker").json()
        assert status["state"] == "open" and status["trips"] == 1
        assert client.post("/v1/route", json=body).json()["fallback"] is True
        reset = client.post("/admin/circuit-breaker/reset", json={}).json()
        assert reset["state"] == "closed" and reset["consecutive_failures"] == 0
        routed = client.post("/v1/route", json=body).json()
        assert routed["fallback"] is False and routed["fallback_reason"] is None
        assert "tiny_dancer_circuit_breaker_state 0.0" in client.get("/metrics").text


def test_a_flood_of_forged_outcomes_cannot_promote_a_model_by_itself(world, tmp_path) -> None:
    """Issue 12, finding 4: 4,000 forged 'success' outcomes took a routine retrain from a
    lightweight share of 0.000 to 1.000 on a fixed evaluation set, and it was promoted."""
    served, storage, registry = world
    router = Router(RouterConfig(model_path=served))
    log_traffic(storage, router, 500, seed=4, truth=lambda raw: np.ones(len(raw)))  # every candidate 'succeeded'
    before = served.read_bytes()
    report = retrain(storage, served, registry, RetrainConfig())
    assert not report.promoted and served.read_bytes() == before
    assert "lightweight share on held-out decisions" in report.reason and "--allow-mix-shift" in report.reason
    shares = report.registry_entry["metrics"]["gate"]["lightweight share on held-out decisions"]
    assert shares["new"] - shares["old"] > 0.25
    # an operator who reviewed the change can still take it, deliberately
    allowed = retrain(storage, served, registry, RetrainConfig(allow_mix_shift=True))
    assert allowed.promoted and "(allowed)" in allowed.reason


def test_a_trusted_reference_set_vetoes_what_the_logs_approve(world, tmp_path) -> None:
    served, storage, registry = world
    router = Router(RouterConfig(model_path=served))
    log_traffic(storage, router, 400, seed=5, truth=lambda raw: np.ones(len(raw)))
    x, y = traffic_dataset(100, seed=21)  # outcomes from the real world, kept by the operator
    np.savez(tmp_path / "reference.npz", features=x, labels=y)
    report = retrain(storage, served, registry, RetrainConfig(allow_mix_shift=True, reference=tmp_path / "reference.npz"))
    assert not report.promoted and "worse on the reference set" in report.reason
