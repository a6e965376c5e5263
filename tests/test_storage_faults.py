"""Faults of the decision log (issue 25): one bad row must not fail the rows committed with it
(finding 4), and a PostgreSQL that silently stops answering must be noticed within seconds
(finding 13, see ``test_pg_outage.py``).

Real SQLite and PostgreSQL (``tests/pg.py``: a schema per test, skipped when no server answers).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pg import fresh_schema, schema_url
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
