"""The HTTP service: API behaviour, auth, validation, schema conformance, reloads under load, durability."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client import generate_latest
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from progress_counter import Progress
from tinydancer import FastGRNN
from tinydancer.demo import train_default_router_model
from tinydancer.server import ServiceSettings, create_app

TOKEN = "correct horse battery staple"
_MODELS = Path(tempfile.mkdtemp(prefix="td-service-"))
MODEL = _MODELS / "model.safetensors"
train_default_router_model(MODEL)


def body(n: int = 3, dim: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "query_embedding": rng.normal(size=dim).tolist(),
        "candidates": [{"id": f"c{i}", "embedding": rng.normal(size=dim).tolist(), "access_count": 5, "success_rate": 0.8,
                        "created_at": time.time() - 60, "metadata": {"lang": "en"}} for i in range(n)],
        "metadata": {"lang": "en"},
    }


@pytest.fixture()
def client(tmp_path):
    app = create_app(ServiceSettings(model_path=MODEL, database_path=tmp_path / "t.db", watch_interval_s=0, auth_token=TOKEN))
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_route_feedback_and_stats(client) -> None:
    r = client.post("/v1/route", json=body(4))
    assert r.status_code == 200
    out = r.json()
    assert len(out["decisions"]) == 4 and out["calibrated"] and not out["fallback"]
    conf = [d["confidence"] for d in out["decisions"]]
    assert conf == sorted(conf, reverse=True)
    r = client.post("/v1/feedback", json={"request_id": out["request_id"], "success": True, "quality": 0.9})
    assert r.status_code == 200 and r.json()["target"] == out["decisions"][0]["candidate_id"]
    last = out["decisions"][-1]["candidate_id"]
    r = client.post("/v1/feedback", json={"request_id": out["request_id"], "candidate_id": last, "success": False})
    assert r.status_code == 200 and r.json()["target"] == last
    assert client.post("/v1/feedback", json={"request_id": "no-such-request", "success": True}).status_code == 404
    assert client.post("/v1/feedback", json={"request_id": out["request_id"], "candidate_id": "zz", "success": True}).status_code == 404
    stats = client.get("/admin/stats", headers=AUTH).json()
    assert stats["total_requests"] == 1 and stats["total_decisions"] == 4 and stats["outcomes"] == 2
    assert stats["p50_latency_us"] > 0 and stats["p99_latency_us"] >= stats["p50_latency_us"]


def test_metrics_are_prometheus_and_count(client) -> None:
    for seed in range(3):
        client.post("/v1/route", json=body(5, seed=seed))
    text = client.get("/metrics", headers=AUTH).text
    assert 'tiny_dancer_requests_total{endpoint="/v1/route"} 3.0' in text
    light = float(text.split('tiny_dancer_routes_total{decision="lightweight"} ')[1].split()[0])
    powerful = float(text.split('tiny_dancer_routes_total{decision="powerful"} ')[1].split()[0])
    assert light + powerful == 15
    for name in ("tiny_dancer_request_latency_seconds_bucket", "tiny_dancer_confidence_bucket", "tiny_dancer_uncertainty_bucket",
                 "tiny_dancer_circuit_breaker_state", "tiny_dancer_circuit_breaker_trips_total", "tiny_dancer_errors_total"):
        assert name in text, name
    assert 'tiny_dancer_request_latency_seconds_count{endpoint="/v1/route"} 3.0' in text
    assert 'tiny_dancer_inference_latency_seconds_count 3.0' in text
    assert 'tiny_dancer_confidence_count 15.0' in text and 'tiny_dancer_uncertainty_count 15.0' in text


def test_route_metrics_fold_in_batches_and_count_exactly() -> None:
    from tinydancer.server import Metrics

    m = Metrics()
    m.FOLD_EVERY = 3
    conf = np.array([0.95, 0.15, np.nan], dtype=np.float32)  # a NaN score is counted as a route, not binned
    m.route_done(3, 1, False, 2e-5, 4e-4, conf, None)
    m.route_done(3, 1, True, 3e-5, 6e-4, conf, np.array([0.01, 0.3, 0.5], dtype=np.float32))
    assert 'endpoint="/v1/route"' not in generate_latest(m.registry).decode()  # still buffered
    m.route_done(3, 0, False, 1e-5, 3e-3, conf, None)  # the third folds the batch
    text = generate_latest(m.registry).decode()
    assert 'tiny_dancer_requests_total{endpoint="/v1/route"} 3.0' in text
    assert 'tiny_dancer_routes_total{decision="lightweight"} 2.0' in text and 'tiny_dancer_routes_total{decision="powerful"} 7.0' in text
    assert "tiny_dancer_fallbacks_total 1.0" in text
    assert 'tiny_dancer_request_latency_seconds_bucket{endpoint="/v1/route",le="0.0005"} 1.0' in text
    assert 'tiny_dancer_request_latency_seconds_bucket{endpoint="/v1/route",le="0.001"} 2.0' in text
    assert 'tiny_dancer_request_latency_seconds_bucket{endpoint="/v1/route",le="+Inf"} 3.0' in text
    assert "tiny_dancer_confidence_count 6.0" in text and "tiny_dancer_uncertainty_count 3.0" in text
    assert 'tiny_dancer_confidence_bucket{le="0.2"} 3.0' in text


@pytest.mark.parametrize("headers, status", [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                             ({"Authorization": "Basic " + TOKEN}, 401), (AUTH, 200)])
def test_admin_auth(client, headers: dict, status: int) -> None:
    for method, path in (("get", "/admin/config"), ("get", "/admin/circuit-breaker"), ("post", "/admin/circuit-breaker/reset"),
                         ("post", "/admin/reload"), ("get", "/admin/stats")):
        kwargs = {"json": {}} if method == "post" else {}
        assert getattr(client, method)(path, headers=headers, **kwargs).status_code == status, path


def test_admin_is_open_without_a_token(tmp_path) -> None:
    app = create_app(ServiceSettings(model_path=MODEL, database_path=tmp_path / "t.db", watch_interval_s=0, auth_token=None))
    with TestClient(app) as c:
        assert c.get("/admin/config").status_code == 200


def test_live_config_is_validated_and_applied(client) -> None:
    assert client.put("/admin/config", json={"confidence_threshold": 1.5}, headers=AUTH).status_code == 422
    assert client.put("/admin/config", json={"max_uncertainty": "lots"}, headers=AUTH).status_code == 422
    r = client.put("/admin/config", json={"confidence_threshold": 0.0, "max_uncertainty": 1.0}, headers=AUTH)
    assert r.status_code == 200 and r.json()["confidence_threshold"] == 0.0
    assert all(d["use_lightweight"] for d in client.post("/v1/route", json=body(5)).json()["decisions"])
    client.put("/admin/config", json={"confidence_threshold": 1.0}, headers=AUTH)
    assert not any(d["use_lightweight"] for d in client.post("/v1/route", json=body(5)).json()["decisions"])


@pytest.mark.parametrize(
    "payload, status",
    [
        (b'{"query_embedding": [NaN], "candidates": [{"id": "a", "embedding": [1]}]}', 422),
        (b'{"query_embedding": [Infinity], "candidates": [{"id": "a", "embedding": [1]}]}', 422),
        (b'{"query_embedding": [1e999], "candidates": [{"id": "a", "embedding": [1]}]}', 422),
        (b'{"query_embedding": [1, 2', 422),
        (b'{"query_embedding": [1, 2], "candidates": []}', 422),
        (b'{"query_embedding": [1, 2], "candidates": [{"id": "a", "embedding": [1, 2, 3]}]}', 422),
        (b'{"query_embedding": [1], "candidates": [{"id": "a", "embedding": [1], "created_at": 1.7e12}]}', 422),
        (b'{"query_embedding": [1], "candidates": [{"id": "a", "embedding": [1], "success_rate": 2}]}', 422),
        (b'{"query_embedding": [1], "candidates": [{"id": "a", "embedding": [1], "bogus": 1}]}', 422),
        (b"[" + b"1," * 1_200_000 + b"1]", 413),
    ],
)
def test_bad_requests_get_4xx_never_5xx(client, payload: bytes, status: int) -> None:
    r = client.post("/v1/route", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text


def test_route_answers_the_same_with_or_without_the_fast_decoder(client, monkeypatch) -> None:
    import types

    import tinydancer.candidates.features as features
    import tinydancer.server.wire as wire

    frozen = time.time()  # recency reads the clock: both requests read the same instant
    monkeypatch.setattr(features, "time", types.SimpleNamespace(time=lambda: frozen))
    payload = body(6, dim=16, seed=3)

    def decisions() -> tuple[list, np.ndarray]:
        r = client.post("/v1/route", json=payload)
        assert r.status_code == 200, r.text
        out = r.json()["decisions"]
        return ([(d["candidate_id"], d["use_lightweight"]) for d in out],
                np.array([[d["confidence"], d["uncertainty"]] for d in out]))

    fast_choices, fast_values = decisions()
    monkeypatch.setattr(wire, "fast_route_body", lambda raw: None)
    slow_choices, slow_values = decisions()
    assert slow_choices == fast_choices
    np.testing.assert_allclose(slow_values, fast_values, rtol=1e-6)
    stats = client.get("/admin/stats", headers=AUTH).json()
    assert stats["total_requests"] == 2  # both logged


def test_not_ready_until_a_model_is_loaded(tmp_path) -> None:
    missing = tmp_path / "later.safetensors"
    app = create_app(ServiceSettings(model_path=missing, database_path=tmp_path / "t.db", watch_interval_s=0, auth_token=TOKEN))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/health/ready")
        assert r.status_code == 503 and "make demo" in r.json()["reason"]
        assert c.post("/v1/route", json=body()).status_code == 503
        missing.write_bytes(MODEL.read_bytes())
        assert c.post("/admin/reload", json={}, headers=AUTH).status_code == 200
        assert c.get("/health/ready").status_code == 200
        assert c.post("/v1/route", json=body()).status_code == 200


def test_bad_reload_is_422_and_keeps_serving(client, tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    version = client.get("/info", headers=AUTH).json()["model"]["version"]
    r = client.post("/admin/reload", json={"model_path": str(bad)}, headers=AUTH)
    assert r.status_code == 422 and "previous model keeps serving" in r.json()["detail"][0]["msg"]
    assert client.get("/info", headers=AUTH).json()["model"]["version"] == version
    assert client.post("/v1/route", json=body()).status_code == 200


@pytest.mark.parametrize("path", ["\u0000", "x" * 5000, "/", "/dev/null"])
def test_reload_with_an_impossible_path_is_422(client, path: str) -> None:
    r = client.post("/admin/reload", json={"model_path": path}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert client.post("/v1/route", json=body()).status_code == 200


def test_query_route_needs_a_query_router(client) -> None:
    assert client.post("/v1/route/query", json={"query": "hello"}).status_code == 503


def test_query_routing_endpoint(tmp_path) -> None:
    from test_query_router import EMBEDDER, pair_table

    from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig

    router = QueryRouter.fit(pair_table(400, 0), QueryRouterConfig(hidden_dims=(8,), epochs=10), embedder=EMBEDDER)
    router.save(tmp_path / "qr")
    app = create_app(ServiceSettings(model_path=MODEL, database_path=tmp_path / "t.db", query_router_path=tmp_path / "qr",
                                     watch_interval_s=0))
    with TestClient(app) as c:
        r = c.post("/v1/route/query", json={"query": "question about cohomology please"})
        assert r.status_code == 200 and r.json()["model"] in ("big", "small")
        emb = EMBEDDER.embed(["question about apples"])[0].tolist()
        r2 = c.post("/v1/route/query", json={"embedding": emb})
        assert r2.status_code == 200
        assert c.post("/v1/route/query", json={"embedding": [1.0, 2.0]}).status_code == 422
        assert c.post("/v1/route/query", json={}).status_code == 422
        assert c.post("/v1/feedback", json={"request_id": r.json()["request_id"], "success": True}).status_code == 200


# ---------------------------------------------------------------------- schemathesis
def _small_query_router() -> Path:
    from test_query_router import EMBEDDER, pair_table

    from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig

    QueryRouter.fit(pair_table(300, 0), QueryRouterConfig(hidden_dims=(8,), epochs=5), embedder=EMBEDDER).save(_MODELS / "qr")
    return _MODELS / "qr"


_APP = create_app(ServiceSettings(model_path=MODEL, database_path=_MODELS / "schema.db", watch_interval_s=0, auth_token=TOKEN,
                                  query_router_path=_small_query_router()))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP, headers=AUTH)  # the schema is an operator route


@schema.parametrize()
@settings(max_examples=int(os.environ.get("TD_SCHEMA_EXAMPLES", "25")), deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_no_5xx_and_responses_match_the_schema(case) -> None:
    case.call_and_validate(headers=AUTH, checks=[not_a_server_error, response_schema_conformance, content_type_conformance])


# ---------------------------------------------------------------------- a real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tinydancer serve`` in a subprocess on a free loopback port."""

    def __init__(self, tmp: Path, model: Path, extra_env: dict | None = None, extra_args: list[str] | None = None) -> None:
        self.port = _free_port()
        self.db = tmp / "served.db"
        env = {**os.environ, "TINY_DANCER_AUTH_TOKEN": TOKEN, **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinydancer", "serve", "--model-path", str(model), "--database-path", str(self.db),
             "--port", str(self.port), "--watch-interval", "0", *(extra_args or [])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode())
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_reloads_during_concurrent_traffic_lose_no_request(tmp_path) -> None:
    served = tmp_path / "served.safetensors"
    served.write_bytes(MODEL.read_bytes())
    other = FastGRNN.load(MODEL)
    other.extra_metadata["version"] = "v2"
    v2 = other.save(tmp_path / "v2.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    server = Server(tmp_path, served)
    results: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()
    progress = Progress(4)

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/v1/route", json=body(10, seed=k * 1000 + i))
                results.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])
                i += 1
                progress.tick(k)

    expected = {str(served): "default-demo-1", str(v2): "v2"}
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        progress.wait_past([0] * 4)
        statuses = []
        with httpx.Client(base_url=server.url, timeout=10, headers=AUTH) as admin:
            for i in range(30):
                path = [str(served), str(v2), str(bad)][i % 3]
                statuses.append(admin.post("/admin/reload", json={"model_path": path}).status_code)
                if statuses[-1] == 200:  # read your writes, then let every client route on it
                    assert admin.post("/v1/route", json=body(3, seed=i)).json()["model_version"] == expected[path]
                    progress.wait_past(progress.marks())
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert statuses.count(200) == 20 and statuses.count(422) == 10
    assert set(results) == {200}, f"non-200 answers: {set(results)}"
    assert versions == {"default-demo-1", "v2"}


def test_acknowledged_feedback_survives_sigkill(tmp_path) -> None:
    server = Server(tmp_path, MODEL)
    acked: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for i in range(40):
                rid = c.post("/v1/route", json=body(3, seed=i)).json()["request_id"]
                if c.post("/v1/feedback", json={"request_id": rid, "success": i % 2 == 0}).status_code == 200:
                    acked.append(rid)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop()
    assert server.proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(server.db)
    stored = {row[0] for row in conn.execute("SELECT request_id FROM outcomes")}
    conn.close()
    assert len(acked) == 40 and set(acked) <= stored
