"""Faults of the decision log (issue 25): one bad row must not fail the rows committed with it
(finding 4), and a PostgreSQL that silently stops answering must be noticed within seconds
(finding 13, see ``test_pg_outage.py``).

Real SQLite and PostgreSQL (``tests/pg.py``: a schema per test, skipped when no server answers).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pg import fresh_schema, schema_url
from test_gateway import EMBEDDER, KEY, config_dict, router_dir  # noqa: F401 (router_dir: a fixture)
from tinydancer.demo import train_default_router_model
from tinydancer.server import ServiceSettings, create_app
from tinydancer.server.storage import CallRecord, DecisionWriter, SQLiteStorage, decision_record, new_request_id


def decision(request_id: str, latency_us: float = 12.0) -> tuple[Any, ...]:
    return decision_record(request_id, "query", "v1", ["strong", "weak"], np.zeros((2, 4), np.float32),
                           np.array([0.9, 0.2], np.float32), None, np.array([0, 1], np.uint8), latency_us)


def call(request_id: str, prompt_tokens: Any, completion_tokens: Any = 7, cost: Any = 0.001) -> tuple[Any, ...]:
    return CallRecord(request_id, 0, "up", "strong", "ok", 200, False, prompt_tokens, completion_tokens, cost, 3.0, 9.0,
                      time.time()).row()


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        s = SQLiteStorage(tmp_path / "d.db")
        yield s
        s.close()
        return
    from tinydancer.server.storage.postgres import PostgresStorage

    with fresh_schema() as schema:
        s = PostgresStorage(schema_url(schema))
        yield s
        s.close()


def group_commit(storage: Any, submit: Callable[[DecisionWriter], None]) -> DecisionWriter:
    """Submit rows from a running event loop (so they share one group commit) and wait for it."""
    async def run() -> DecisionWriter:
        writer = DecisionWriter(storage, max_delay_s=0.05)
        submit(writer)
        await writer.aflush()
        return writer

    return asyncio.run(run())


def test_an_impossible_token_count_is_logged_as_unknown_and_fails_no_other_row(storage: Any) -> None:
    """200 callers in one group commit; one upstream said usage = 10^30 (beyond SQLite's INTEGER
    and PostgreSQL's BIGINT).  Before: the commit failed and every decision of the group was lost."""
    ids = [new_request_id() for _ in range(200)]
    bad = ids[37]

    def submit(writer: DecisionWriter) -> None:
        for rid in ids:
            writer.submit([decision(rid)], [call(rid, 10**30 if rid == bad else 11, 10**30 if rid == bad else 7,
                                                 float("inf") if rid == bad else 0.001)])

    writer = group_commit(storage, submit)
    assert storage.count("decisions") == 200 and storage.count("calls") == 200
    logged = storage.calls(bad)[0]
    assert logged["prompt_tokens"] is None and logged["completion_tokens"] is None and logged["cost"] is None
    assert storage.calls(ids[0])[0]["prompt_tokens"] == 11
    assert writer.error is None and writer.dropped == 0


def test_a_row_the_database_refuses_is_lost_alone(storage: Any) -> None:
    """Defence in depth: a row that passes the checks but the database refuses (a request id logged
    twice) is retried alone; the 49 others of its group are written, the one refused is counted."""
    storage.insert_decision_rows([decision("dup")])
    ids = [new_request_id() for _ in range(49)]
    writer = group_commit(storage, lambda w: [w.submit([decision(rid)]) for rid in ids[:20] + ["dup"] + ids[20:]])
    assert storage.count("decisions") == 50
    assert writer.dropped == 1 and writer.error is None


def test_a_row_missing_a_required_value_is_refused_before_it_joins_a_group(storage: Any) -> None:
    """A NaN latency (SQLite stores it as NULL in a NOT NULL column) and a prompt holding a lone
    surrogate: the first row is refused alone, the second is kept with the surrogate replaced."""
    good, nan, text = new_request_id(), new_request_id(), new_request_id()

    def submit(writer: DecisionWriter) -> None:
        writer.submit([decision(good)])
        writer.submit([decision(nan, latency_us=float("nan"))])
        writer.submit([decision(text)], prompts=[(text, "bad \ud800 text", time.time())])

    writer = group_commit(storage, submit)
    assert storage.count("decisions") == 2 and storage.prompt_texts() == ["bad \ufffd text"]
    assert writer.dropped == 1 and writer.error is None


@pytest.fixture()
def served(tmp_path: Path) -> Path:
    path = tmp_path / "served.safetensors"
    train_default_router_model(path)
    return path


def test_a_poisoned_commit_leaves_the_service_ready_and_taking_feedback(served: Path, tmp_path: Path) -> None:
    """Before: after a gateway call with usage 10^30, readiness said 503 and feedback was refused
    until some later call was logged, though the database was fine."""
    app = create_app(ServiceSettings(model_path=served, database_path=tmp_path / "log.db", watch_interval_s=0))
    with TestClient(app) as client:
        service = app.state.service
        rid, bad = new_request_id(), new_request_id()

        def submit() -> None:  # on the service's loop, as the gateway logs a finished call
            service.writer.submit([decision(rid)], [call(rid, 5)])
            service.writer.submit([decision(bad)], [call(bad, 10**30)])

        client.portal.call(submit)
        time.sleep(0.2)  # the group commit (5 ms) is done
        assert client.get("/health/ready").status_code == 200
        assert client.post("/v1/feedback", json={"request_id": rid, "success": True}).status_code == 200
        assert client.post("/v1/feedback", json={"request_id": bad, "success": False}).status_code == 200


def liar_app() -> Any:
    """An upstream that answers every chat call, claiming usage of 10^30 tokens when the prompt
    says "poison" (beyond SQLite's INTEGER and PostgreSQL's BIGINT)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        tokens = 10**30 if "poison" in json.dumps(body["messages"]) else 3
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": tokens, "completion_tokens": tokens, "total_tokens": tokens}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_a_gateway_call_with_impossible_usage_loses_no_other_callers_row(router_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The finding as reported: 200 concurrent callers through the gateway, one upstream answer
    with usage 10^30.  Before: 24 of the 200 decisions were lost with the poisoned group commit."""
    import openai

    from tinydancer.gateway import create_gateway_app
    from tinydancer.gateway.config import parse_config
    from tinydancer.gateway.standin import running

    monkeypatch.setenv("TD_TEST_PROVIDER_KEY", "sk-provider-secret-123456")
    db = tmp_path / "gw.db"
    with running(liar_app()) as up:
        cfg = parse_config(config_dict(router_dir, {"strong": up, "weak": up}))
        app = create_gateway_app(cfg, ServiceSettings(database_path=db, api_keys=(KEY,), watch_interval_s=0),
                                 embedder=EMBEDDER)
        with running(app) as base:
            async def calls() -> list[str]:
                client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
                prompts = [f"question {i} about {'poison' if i == 100 else 'bananas'}" for i in range(200)]
                answers = await asyncio.gather(*(client.chat.completions.with_raw_response.create(
                    model="tinydancer", messages=[{"role": "user", "content": p}]) for p in prompts))
                await client.close()
                return [a.headers["x-tinydancer-decision-id"] for a in answers]

            ids = asyncio.run(calls())
            storage = SQLiteStorage(db)
            deadline = time.monotonic() + 20
            while storage.count("decisions") < 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert storage.count("decisions") == 200 and storage.count("calls") == 200
            assert storage.calls(ids[100])[0]["prompt_tokens"] is None  # logged as unknown
            import httpx

            assert httpx.get(f"{base}/health/ready").status_code == 200
            auth = {"Authorization": f"Bearer {KEY}"}
            assert httpx.post(f"{base}/v1/feedback", json={"request_id": ids[7], "success": True},
                              headers=auth).status_code == 200
            storage.close()
