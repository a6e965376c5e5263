"""Promises that had no test failing when they break (issue 32): each test here was checked by
breaking the code as the issue describes and seeing it fail.

- an upstream's error body never carries the provider key to the client, on every status;
- a stream that ends cleanly but without ``[DONE]`` ends with the error event;
- a query-router retrain that is worse is kept, not promoted;
- retention by age removes exactly the decisions older than ``retention_days`` (both backends);
- a registry version whose bytes do not match its sha256 is not served;
- the conformal p-value counts the new point itself: ``(#{scores >= s} + 1) / (n + 1)``.

Upstreams are real servers on loopback; storage is real SQLite and PostgreSQL (``tests/pg.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import numpy as np
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pg import fresh_schema, schema_url
from test_gateway import EMBEDDER, HARD_Q, config_dict, router_dir, wait_calls  # noqa: F401 (router_dir: a fixture)
from test_query_learning import EMBEDDER as EMBEDDER_64
from test_query_learning import BEFORE, MODELS, questions, served_router  # noqa: F401 (served_router: a fixture)
from test_storage_contract import query_row
from tinydancer import FastGRNN
from tinydancer.candidates import ConformalCalibrator
from tinydancer.demo import train_default_router_model
from tinydancer.gateway import create_gateway_app
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.standin import running
from tinydancer.llm import ROUTER_FILE
from tinydancer.server import ServiceSettings
from tinydancer.server.learning import RetrainConfig, retrain_query_router
from tinydancer.server.registry import DatabaseRegistry, ModelRegistry, RegistryFollower
from tinydancer.server.storage import DecisionRow, SQLiteStorage

#: a provider key that does not *look* like a key (no sk-/key- prefix): only the gateway's knowledge
#: of its own secret can take it out of an upstream's echo
SECRET = "Zq9providerSecretValue7731"


class EchoingUpstream:
    """An OpenAI-compatible server on loopback that misbehaves as real providers do: it answers
    ``status`` with an error body echoing the credentials it was sent, or streams an answer that
    stops cleanly without ``data: [DONE]``."""

    def __init__(self, status: int = 200, done: bool = True) -> None:
        self.status = status
        self.done = done

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> Response:
        await request.body()
        if self.status >= 400:
            given = request.headers.get("authorization", "")
            return JSONResponse({"error": {"message": f"internal failure while serving {given}", "type": "server_error"}},
                                status_code=self.status)
        return StreamingResponse(self._chunks(), media_type="text/event-stream")

    async def _chunks(self) -> AsyncIterator[bytes]:
        base = '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
        yield f'data: {base}"delta":{{"role":"assistant","content":"half"}},"finish_reason":null}}]}}\n\n'.encode()
        yield f'data: {base}"delta":{{"content":" an answer"}},"finish_reason":null}}]}}\n\n'.encode()
        if self.done:
            yield b"data: [DONE]\n\n"


# ---------------------------------------------------------------------- 1. keys never reach the client
@pytest.mark.parametrize("status", [500, 503, 400, 404])
def test_an_upstream_error_that_echoes_the_key_is_scrubbed_on_every_status(router_dir: Path, tmp_path: Path,  # noqa: F811
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           status: int) -> None:
    monkeypatch.setenv("TD_TEST_PROVIDER_KEY", SECRET)
    up = EchoingUpstream(status=status)
    with running(up.app()) as url:
        cfg = parse_config(config_dict(router_dir, {"strong": url, "weak": "http://127.0.0.1:9"}))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            for stream in (False, True):
                with pytest.raises(openai.APIStatusError) as caught:
                    out = client.chat.completions.create(model="strong", messages=[{"role": "user", "content": HARD_Q}],
                                                         stream=stream)
                    if stream:
                        list(out)
                text = caught.value.response.text
                assert f"answered {status}" in text and "internal failure while serving" in text  # the detail is kept
                assert SECRET not in text and "[redacted]" in text  # the key is not


# ---------------------------------------------------------------------- 2. a stream without [DONE]
def test_a_stream_that_ends_without_done_ends_with_an_error_event(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    up = EchoingUpstream(done=False)
    with running(up.app()) as url:
        cfg = parse_config(config_dict(router_dir, {"strong": url, "weak": "http://127.0.0.1:9"}))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            got: list[str] = []
            with pytest.raises(openai.APIError, match=r"without \[DONE\]"):
                with client.chat.completions.with_streaming_response.create(
                        model="strong", messages=[{"role": "user", "content": HARD_Q}], stream=True) as raw:
                    rid = raw.headers["x-tinydancer-decision-id"]
                    for chunk in raw.parse():
                        got.append(chunk.choices[0].delta.content or "")
            assert "".join(got) == "half an answer"  # what came is relayed, then the error: never a silent cut
            assert [c["status"] for c in wait_calls(tmp_path / "g.db", rid)] == ["broken"]
            assert app.state.gateway.upstreams["strong"].breaker.status()["consecutive_failures"] == 1  # a broken stream counts against it


# ---------------------------------------------------------------------- 4. a worse query router is not promoted
def test_a_worse_query_router_is_kept_but_not_promoted(served_router: Path, tmp_path: Path) -> None:  # noqa: F811
    before = (served_router / ROUTER_FILE).read_bytes()
    storage = SQLiteStorage(tmp_path / "logs.db")
    # feedback from the world the router was trained on: the served router is about right already
    rng = np.random.default_rng(3)
    texts, kinds = questions(300, rng)
    for i, (emb, kind) in enumerate(zip(EMBEDDER_64.embed(texts), kinds)):
        model = int(rng.integers(3))
        storage.record_decisions(f"w{i}", "query", "v1", [DecisionRow(MODELS[model], 0, emb, None, None, model == 0)], 50.0)
        storage.record_outcome(f"w{i}", None, bool(rng.random() < BEFORE[kind][model]), None, None)
    registry = ModelRegistry(tmp_path / "registry")
    # a step size this large wrecks the network: the held-out error rises (the mix gate is lifted,
    # so the error comparison is the only thing that can say no)
    report = retrain_query_router(storage, served_router, registry,
                                  RetrainConfig(min_samples=200, allow_mix_shift=True, learning_rate=3.0, epochs=5))
    storage.close()
    assert report.new["squared_error"] > report.old["squared_error"]
    assert not report.promoted and "(worse)" in report.reason and "kept the current router" in report.reason
    assert (served_router / ROUTER_FILE).read_bytes() == before  # the served file is untouched
    assert [v.promoted for v in registry.versions()] == [False] and registry.current() is None


# ---------------------------------------------------------------------- 7. retention by age
@pytest.fixture(params=["sqlite", "postgres"])
def aged_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A storage keeping 5 days (no row limit)."""
    if request.param == "sqlite":
        storage = SQLiteStorage(tmp_path / "s.db", retention_days=5)
        yield storage
        storage.close()
        return
    from tinydancer.server.storage.postgres import PostgresStorage

    with fresh_schema() as schema:
        storage = PostgresStorage(schema_url(schema), retention_days=5)
        try:
            yield storage
        finally:
            storage.close()


def test_retention_by_age_removes_exactly_what_is_older_than_retention_days(aged_storage: Any) -> None:
    now = 1_800_000_000.0
    day = 86400.0
    ages = {"10d": 10 * day, "5d+1m": 5 * day + 60, "5d-1m": 5 * day - 60, "2d": 2 * day, "1h": 3600.0}
    for name, age in ages.items():
        aged_storage.insert_decision_rows([query_row(name, ["m"], created_at=now - age)])
        aged_storage.record_outcome(name, None, True, None, None)
    assert aged_storage.prune(now=now) == 2  # 10 days and 5 days + a minute: older than 5 days
    assert aged_storage.count("decisions") == 3 and aged_storage.count("outcomes") == 3  # their outcomes went too
    assert sorted(aged_storage.labelled("query").created_at.tolist()) == sorted(now - ages[k] for k in ("5d-1m", "2d", "1h"))
    assert aged_storage.prune(now=now) == 0  # nothing more is old


# ---------------------------------------------------------------------- 8. a corrupt registry version
def test_a_registry_version_whose_bytes_do_not_match_its_sha256_is_not_served(tmp_path: Path) -> None:
    import psycopg

    from tinydancer.server.storage.postgres import PostgresStorage

    served = tmp_path / "served.safetensors"
    train_default_router_model(served)
    model = FastGRNN.load(served)
    with fresh_schema() as schema:
        storage = PostgresStorage(schema_url(schema))
        try:
            registry = DatabaseRegistry(storage, "model")
            good = registry.add(model, {})
            registry.promote(good)
            replica = tmp_path / "replica.safetensors"
            follower = RegistryFollower(storage, {"model": replica})
            assert follower.sync() == ["model"]
            served_bytes = replica.read_bytes()
            bad = registry.add(model, {})
            # the stored file is altered after its sha256 was recorded (a bit flip, a bad copy, tampering)
            with psycopg.connect(schema_url(schema), autocommit=True) as conn:
                data = bytes(conn.execute("SELECT data FROM model_versions WHERE version = %s", (bad.version,)).fetchone()[0])
                corrupt = data[:-8] + bytes(8)
                conn.execute("UPDATE model_versions SET data = %s WHERE version = %s", (corrupt, bad.version))
            registry.promote(bad, expected=good.version)
            assert follower.sync() == [] and follower.sync() == []  # refused, and again on the next look
            assert replica.read_bytes() == served_bytes  # the replica keeps serving the good version
            fixed = registry.add(model, {})
            registry.promote(fixed, expected=bad.version)
            assert follower.sync() == ["model"]
            assert FastGRNN.load(replica).extra_metadata["version"] == fixed.version
        finally:
            storage.close()


# ---------------------------------------------------------------------- 9. the conformal +1
def test_conformal_p_values_count_the_new_point_itself() -> None:
    cal = ConformalCalibrator(np.array([0.1, 0.2, 0.3, 0.4]))  # n = 4
    # label 1 at P = 0.95: s = 0.05, all 4 scores >= s -> (4 + 1) / 5; at P = 0.45: s = 0.55, none -> 1 / 5
    np.testing.assert_allclose(cal.p_values(np.array([0.95, 0.75, 0.45]), 1), [1.0, 3 / 5, 1 / 5])
    np.testing.assert_allclose(cal.p_values(np.array([0.05, 0.75]), 0), [1.0, 1 / 5])
    # the uncertainty (the p-value of the label not predicted) uses the same count
    wide = ConformalCalibrator(np.array([0.6, 0.7, 0.8, 0.9]))
    p = np.array([0.95, 0.75, 0.25, 0.5], dtype=np.float32)
    np.testing.assert_allclose(wide.uncertainty(p), [1 / 5, 3 / 5, 3 / 5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(wide.p_values(p[:2], 0), [1 / 5, 3 / 5], rtol=1e-6)
    # the finite-sample guarantee: with n scores no p-value is below 1 / (n + 1), so at alpha < 1/5
    # no label is ever ruled out, and the router is never "certain" at max_uncertainty < 1/5
    assert cal.prediction_sets(np.array([0.0, 0.5, 1.0]), 0.19).all()
    assert cal.certainty_cut(0.19) == np.inf and cal.certainty_cut(0.2) == pytest.approx(0.4)
