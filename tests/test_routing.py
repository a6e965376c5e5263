"""The candidate-scoring Router: validation, features, conformal coverage, decisions, breaker, reload."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import types

import numpy as np
import pytest

from tinydancer import FastGRNN, FastGRNNConfig
from tinydancer.circuit import BreakerState, CircuitBreaker
from tinydancer.demo import train_default_router_model, traffic_dataset
from tinydancer.errors import ModelFileError, ValidationError
from tinydancer.candidates import FeatureConfig, FeatureEngineer
from tinydancer.candidates import Candidate, CircuitOpenError, Router, RouterConfig, RoutingRequest
from progress_counter import Progress
from tinydancer.synthetic import candidate_requests
from tinydancer.candidates import ConformalCalibrator

NOW = time.time()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "default.safetensors"
    train_default_router_model(path)
    return str(path)


def cand(cid: str = "a", emb=(1.0, 0.0, 0.0), **kw) -> Candidate:
    return Candidate(id=cid, embedding=np.array(emb, dtype=np.float32), **kw)


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embedding": [1.0, float("nan")]}, "non-finite"),
        ({"embedding": [1.0, float("inf")]}, "non-finite"),
        ({"embedding": []}, "empty"),
        ({"access_count": -1}, "access_count"),
        ({"access_count": True}, "access_count"),
        ({"success_rate": 1.5}, "success_rate"),
        ({"success_rate": -0.1}, "success_rate"),
        ({"created_at": NOW * 1000}, "milliseconds"),
        ({"created_at": NOW + 3600}, "future"),
        ({"created_at": float("nan")}, "finite"),
        ({"id": ""}, "id"),
        ({"metadata": ["a"]}, "metadata"),
    ],
)
def test_candidate_rejects_bad_fields(kwargs: dict, message: str) -> None:
    base = dict(id="a", embedding=[1.0, 0.0], metadata={}, created_at=NOW - 10, access_count=1, success_rate=0.5)
    base.update(kwargs)
    with pytest.raises(ValidationError, match=message):
        Candidate(**base)


def test_request_rejects_bad_shapes() -> None:
    with pytest.raises(ValidationError, match="at least one candidate"):
        RoutingRequest(np.ones(3), [])
    with pytest.raises(ValidationError, match="4-d embedding but the query is 3-d"):
        RoutingRequest(np.ones(3), [cand("a", (1, 0, 0, 0))])
    with pytest.raises(ValidationError, match="non-finite"):
        RoutingRequest(np.array([1.0, np.nan, 0]), [cand()])
    with pytest.raises(ValidationError, match="twice"):
        RoutingRequest(np.ones(3), [cand("a"), cand("a")])


def test_features_by_hand() -> None:
    q = np.array([1.0, 0.0, 0.0])
    request = RoutingRequest(q, [
        cand("same", (2.0, 0.0, 0.0), created_at=NOW - 1000, access_count=10000, success_rate=0.9,
             metadata={"lang": "en", "tier": "gold"}),
        cand("orth", (0.0, 3.0, 0.0), created_at=NOW, access_count=0, success_rate=0.0, metadata={"lang": "fr"}),
        cand("zero", (0.0, 0.0, 0.0)),
    ], metadata={"lang": "en", "tier": "gold"})
    cfg = FeatureConfig()
    f = FeatureEngineer(cfg).compute(request, now=NOW) / cfg.weights
    np.testing.assert_allclose(f[0], [1.0, math.exp(-1.0), 1.0, 0.9, 1.0], rtol=1e-5)
    np.testing.assert_allclose(f[1], [0.0, 1.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert f[2, 0] == 0.0  # a zero vector against a non-zero query
    zero_q = RoutingRequest(np.zeros(3), [cand("z", (0.0, 0.0, 0.0)), cand("n")])
    np.testing.assert_allclose(FeatureEngineer().compute(zero_q, now=NOW)[:, 0] / cfg.weights[0], [1.0, 0.0])


def reference_features(request: RoutingRequest, cfg: FeatureConfig, now: float) -> np.ndarray:
    """The five weighted features computed the plain way: candidate by candidate, in float64, from
    the raw embeddings and fields (the crate's definitions)."""
    q = np.asarray(request.query_embedding, dtype=np.float64)
    qn = np.linalg.norm(q)
    rows = []
    for c in request.candidates:
        e = np.asarray(c.embedding, dtype=np.float64)
        en = np.linalg.norm(e)
        sim = float(qn == en == 0) if qn == 0 or en == 0 else float(e @ q / (en * qn))
        recency = math.exp(-cfg.recency_decay * max(now - c.created_at, 0.0))
        frequency = min(math.log1p(c.access_count) / math.log1p(10000), 1.0)
        meta = request.metadata or {}
        overlap = sum(1 for k, v in meta.items() if c.metadata.get(k, object()) == v) / len(meta) if meta and c.metadata else 0.0
        rows.append([sim, recency, frequency, c.success_rate, overlap])
    return np.array(rows) * cfg.weights.astype(np.float64)


def test_the_fast_features_and_scores_equal_plain_computations(model_path: str) -> None:
    """The hot path builds features as contiguous rows and runs the cell with hidden units along rows:
    its features match the plain float64 computation, equal bit for bit the same float32 operations
    in (candidate, feature) layout, and the scores equal the model's checked predict()."""
    rng = np.random.default_rng(7)
    n, dim = 60, 384
    embs = rng.normal(size=(n, dim)).astype(np.float32)
    embs[3] = 0.0
    cands = [Candidate(f"c{i}", embs[i], {"lang": rng.choice(["en", "fr"]), "tier": "gold"} if i % 4 else {},
                       NOW - float(rng.uniform(0, 5000)), int(rng.integers(0, 20000)), float(rng.uniform(0, 1)))
             for i in range(n)]
    request = RoutingRequest(rng.normal(size=dim).astype(np.float32), cands, {"lang": "en", "tier": "gold"})
    cfg = FeatureConfig(recency_decay=0.0005)
    fast = FeatureEngineer(cfg).compute(request, now=NOW)
    assert fast.shape == (n, 5) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference_features(request, cfg, NOW), rtol=2e-6, atol=2e-7)
    # the same float32 operations in the (N, 5) layout the router used before
    rowwise = np.empty((n, 5), dtype=np.float32)
    rowwise[:, 0] = request.candidate_units @ request.query_unit
    rowwise[:, 1] = np.exp(np.maximum(np.subtract(NOW, request.created_at), 0.0) * -cfg.recency_decay)
    rowwise[:, 2:] = np.stack([request.frequency, request.success_rate, request.metadata_overlap], axis=1)
    rowwise *= cfg.weights
    assert np.array_equal(fast, rowwise)
    model = Router(RouterConfig(model_path=model_path)).served.model
    assert np.array_equal(model.predict_trusted(fast), model.predict(np.ascontiguousarray(fast)))


# ---------------------------------------------------------------------- uncertainty
@pytest.mark.parametrize("alpha", [0.1, 0.15, 0.2])
def test_conformal_coverage_on_fresh_data_is_nominal(model_path: str, alpha: float) -> None:
    model = FastGRNN.load(model_path)
    x_cal, y_cal = traffic_dataset(400, seed=11)  # 3,200 calibration outcomes
    x_new, y_new = traffic_dataset(2500, seed=12)  # 20,000 fresh outcomes
    cal = ConformalCalibrator.fit(model.predict(x_cal)[:, 0], y_cal)
    sets = cal.prediction_sets(model.predict(x_new)[:, 0], alpha)
    coverage = sets[np.arange(len(y_new)), y_new.astype(int)].mean()
    assert abs(coverage - (1 - alpha)) <= 0.02


def test_uncertainty_means_the_alternative_is_ruled_out(model_path: str) -> None:
    cal = ConformalCalibrator.from_model(FastGRNN.load(model_path))
    assert cal is not None
    p = np.linspace(0.001, 0.999, 200)
    unc = cal.uncertainty(p)
    sets = cal.prediction_sets(p, 0.15)
    singleton = sets.sum(axis=1) == 1
    np.testing.assert_array_equal(unc <= 0.15, singleton)
    # the router's decision is the same test, to the last float32 bit: probe every calibration
    # score, and its float32 neighbours, on both sides of 0.5
    s32 = cal.scores.astype(np.float32)
    edges = np.concatenate([s32, np.nextafter(s32, np.float32(0)), np.nextafter(s32, np.float32(1))])
    probes = np.clip(np.concatenate([edges, np.float32(1) - edges, p.astype(np.float32)]), 0, 1).astype(np.float32)
    for m in (0.01, 0.05, 0.15, 0.3, 0.6):
        for thr in (0.3, 0.6):
            router = Router(RouterConfig(model_path=model_path, confidence_threshold=thr, max_uncertainty=m))
            light = router._lightweight(probes, router.served)
            np.testing.assert_array_equal(light, (probes >= thr) & (cal.uncertainty(probes) <= m), err_msg=f"m={m} thr={thr}")
    assert unc[100] > unc[-1]  # a 50/50 score is more uncertain than a confident one


# ---------------------------------------------------------------------- routing
def test_issue_example_works_as_written(model_path: str) -> None:
    router = Router(RouterConfig(model_path=model_path))
    response = router.route(RoutingRequest(
        query_embedding=np.ones(8, dtype=np.float32),
        candidates=[Candidate(id="mem-1", embedding=np.ones(8), metadata={}, created_at=NOW - 60, access_count=3,
                              success_rate=0.9)],
        metadata=None,
    ))
    assert response.candidates_processed == 1 and response.decisions[0].candidate_id == "mem-1"
    router.reload_model()
    assert router.circuit_breaker_status() is True


@pytest.mark.parametrize("threshold", [0.6, 0.3])  # >= 0.5 and < 0.5 take different code paths
def test_decisions_follow_the_rule_and_are_sorted(model_path: str, threshold: float) -> None:
    router = Router(RouterConfig(model_path=model_path, confidence_threshold=threshold, max_uncertainty=0.15))
    for request, _raw, _y in candidate_requests(20, 10, seed=5):
        response = router.route(request)
        conf = [d.confidence for d in response.decisions]
        assert conf == sorted(conf, reverse=True)
        assert sorted(d.candidate_id for d in response.decisions) == sorted(request.ids)
        for d in response.decisions:
            assert d.use_lightweight == (d.confidence >= threshold and d.uncertainty <= 0.15)
        assert response.calibrated and not response.fallback and response.feature_time_us > 0


def test_routing_agrees_with_the_ground_truth(model_path: str) -> None:
    router = Router(RouterConfig(model_path=model_path, confidence_threshold=0.5, max_uncertainty=1.0))
    hits = total = 0
    for request, raw, _y in candidate_requests(100, 8, seed=6):
        from tinydancer.synthetic import lightweight_ok_probability

        truth = dict(zip(request.ids, lightweight_ok_probability(raw) >= 0.5))
        for d in router.route(request).decisions:
            hits += d.use_lightweight == truth[d.candidate_id]
            total += 1
    assert hits / total > 0.9


def test_the_router_uses_the_calibration_stored_in_the_model_file(tmp_path, model_path: str, monkeypatch) -> None:
    """Uncertainty comes from the file's conformal scores, and different stored scores route differently."""
    import tinydancer.candidates.features as features

    frozen = time.time()  # recency moves with the clock: both routes read the same instant
    monkeypatch.setattr(features, "time", types.SimpleNamespace(time=lambda: frozen))
    request = candidate_requests(1, 60, seed=4)[0][0]
    config = dict(confidence_threshold=0.5, max_uncertainty=0.15, enable_quantization=False)
    stored = ConformalCalibrator.from_model(FastGRNN.load(model_path))
    assert stored is not None
    decisions = list(Router(RouterConfig(model_path=model_path, **config)).route(request).decisions)
    conf = np.array([d.confidence for d in decisions], dtype=np.float32)
    np.testing.assert_allclose([d.uncertainty for d in decisions], stored.uncertainty(conf))
    assert any(d.use_lightweight for d in decisions)
    # the same network with calibration scores of 1.0 (every calibration outcome was a surprise):
    # the alternative is never ruled out, so nothing may go to the lightweight model
    doubtful = FastGRNN.load(model_path)
    ConformalCalibrator(np.ones(200)).attach(doubtful)
    path = doubtful.save(tmp_path / "doubtful.safetensors")
    response = Router(RouterConfig(model_path=path, **config)).route(request)
    assert response.calibrated
    # the same network at the same instant: the same scores
    np.testing.assert_allclose(sorted(d.confidence for d in response.decisions), sorted(conf), rtol=1e-6)
    assert all(d.uncertainty == 1.0 and not d.use_lightweight for d in response.decisions)


def test_uncalibrated_model_says_so(tmp_path, model_path: str) -> None:
    model = FastGRNN.load(model_path)
    model.aux_tensors.clear()
    path = model.save(tmp_path / "plain.safetensors")
    response = Router(RouterConfig(model_path=path)).route(candidate_requests(1, 4, seed=1)[0][0])
    assert response.calibrated is False
    assert all(d.uncertainty is None for d in response.decisions)


class NaNModel:
    """A model double whose scores are NaN for every other candidate."""

    def __init__(self, inner: FastGRNN) -> None:
        self.inner = inner

    def predict_trusted(self, x: np.ndarray) -> np.ndarray:
        out = self.inner.predict_trusted(x).copy()
        out[::2] = np.nan
        return out


def test_non_finite_scores_sort_last_and_route_powerful(model_path: str) -> None:
    router = Router(RouterConfig(model_path=model_path, confidence_threshold=0.0, max_uncertainty=1.0))
    router._served = dataclasses.replace(router._served, model=NaNModel(router._served.model))
    response = router.route(candidate_requests(1, 6, seed=2)[0][0])
    tail = response.decisions[3:]
    assert all(math.isnan(d.confidence) and not d.use_lightweight for d in tail)
    assert all(not math.isnan(d.confidence) and d.use_lightweight for d in response.decisions[:3])


class FailingModel:
    def predict_trusted(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("accelerator on fire")


def test_breaker_opens_on_failures_and_the_router_falls_back(model_path: str) -> None:
    router = Router(RouterConfig(model_path=model_path, circuit_breaker_threshold=3, circuit_breaker_timeout_s=60))
    good = router._served
    router._served = dataclasses.replace(good, model=FailingModel())
    request = candidate_requests(1, 4, seed=3)[0][0]
    for _ in range(5):
        response = router.route(request)
        assert response.fallback and all(not d.use_lightweight for d in response.decisions)
    assert router.breaker.state is BreakerState.OPEN and router.breaker.trips == 1
    assert router.circuit_breaker_status() is False
    assert "open" in router.route(request).fallback_reason
    router._served = good
    router.breaker.reset()
    assert not router.route(request).fallback
    strict = Router(RouterConfig(model_path=model_path, circuit_breaker_threshold=1, fallback_on_open=False))
    strict._served = dataclasses.replace(strict._served, model=FailingModel())
    with pytest.raises(RuntimeError, match="fire"):
        strict.route(request)
    with pytest.raises(CircuitOpenError, match="retry"):
        strict.route(request)


def test_breaker_state_machine() -> None:
    now = [0.0]
    cb = CircuitBreaker(failure_threshold=2, reset_timeout_s=10, half_open_max_probes=2, clock=lambda: now[0])
    cb.record_failure()
    cb.record_success()  # a success resets the count
    cb.record_failure()
    assert cb.state is BreakerState.CLOSED
    cb.record_failure()
    assert cb.state is BreakerState.OPEN and not cb.allow()
    now[0] = 10.0
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.allow() and cb.allow() and not cb.allow()  # two probes only
    cb.record_failure()
    assert cb.state is BreakerState.OPEN and cb.trips == 2
    now[0] = 25.0
    assert cb.allow()
    cb.record_success()
    assert cb.state is BreakerState.CLOSED and cb.status()["trips"] == 2


# ---------------------------------------------------------------------- models and reload
def test_no_silent_random_model(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="make demo"):
        Router(RouterConfig(model_path=tmp_path / "missing.safetensors"))
    FastGRNN(FastGRNNConfig(input_dim=7)).save(tmp_path / "wrong.safetensors")
    with pytest.raises(ModelFileError, match="5 router features"):
        Router(RouterConfig(model_path=tmp_path / "wrong.safetensors"))


def test_bad_reload_keeps_the_old_model_serving(tmp_path, model_path: str) -> None:
    router = Router(RouterConfig(model_path=model_path))
    before = router.served.version
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        router.reload_model(bad)
    assert router.served.version == before and router.model_path.name == "default.safetensors"
    assert not router.route(candidate_requests(1, 3, seed=4)[0][0]).fallback


def test_route_never_fails_during_concurrent_reloads(tmp_path, model_path: str) -> None:
    other = FastGRNN.load(model_path)
    other.extra_metadata["version"] = "v2"
    v2 = other.save(tmp_path / "v2.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    router = Router(RouterConfig(model_path=model_path))
    requests = [r for r, _, _ in candidate_requests(20, 8, seed=8)]
    errors: list[BaseException] = []
    versions: set[str] = set()
    stop = threading.Event()
    progress = Progress(4)

    def worker(k: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                response = router.route(requests[i % len(requests)])
                assert not response.fallback and len(response.decisions) == 8
                versions.add(response.model_version)
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                errors.append(exc)
            i += 1
            progress.tick(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    progress.wait_past([0] * 4)
    reload_errors = 0
    expected = {model_path: "default-demo-1", v2: "v2"}
    try:
        for i in range(60):
            target = [model_path, v2, bad][i % 3]
            try:
                router.reload_model(target)
            except ModelFileError:
                reload_errors += 1
                continue
            # read your writes: once reload_model returns, every new route() serves that version
            assert router.route(requests[0]).model_version == expected[target]
            progress.wait_past(progress.marks())  # every worker routed on this version too
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert reload_errors == 20
    assert versions == {"default-demo-1", "v2"}


def test_columns_hold_every_decision_in_rank_order(tmp_path, model_path: str) -> None:
    request = candidate_requests(1, 30, seed=9)[0][0]
    response = Router(RouterConfig(model_path=model_path)).route(request)
    cols = response.columns()
    decisions = list(response.decisions)
    assert cols.candidate_ids == [d.candidate_id for d in decisions]
    assert [request.ids[i] for i in cols.order] == cols.candidate_ids
    np.testing.assert_array_equal(cols.confidence, np.array([d.confidence for d in decisions], dtype=np.float32))
    assert cols.use_lightweight.tolist() == [d.use_lightweight for d in decisions]
    assert cols.uncertainty is not None and cols.uncertainty.tolist() == [d.uncertainty for d in decisions]
    assert response.decisions[3] == decisions[3] and response.decisions[-1] == decisions[-1]
    assert response.decisions[2:5] == decisions[2:5]
    assert response.columns() is cols  # computed once
    plain = FastGRNN.load(model_path)
    plain.aux_tensors.clear()
    path = plain.save(tmp_path / "plain.safetensors")
    assert Router(RouterConfig(model_path=path)).route(request).columns().uncertainty is None
