"""The Storage contract, run against every backend: SQLite (a file) and PostgreSQL (a schema of its own).

PostgreSQL tests use the server on 127.0.0.1:5432 (``TINY_DANCER_TEST_PG`` overrides the URL),
each in a fresh schema that is dropped afterwards; they skip, saying why, when no server answers
or psycopg is not installed.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from pg import require_postgres
from tinydancer.server.storage import (CallRecord, DecisionRow, OutcomeExistsError, SQLiteStorage, UnknownRequestError,
                                       decision_record)

PG_URL = os.environ.get("TINY_DANCER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres(schema: str) -> Any:
    require_postgres()  # skips, saying why, or fails where the services are required
    from tinydancer.server.storage.postgres import PostgresStorage

    return PostgresStorage(PG_URL, schema=schema, retention_rows=3)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    if request.param == "sqlite":
        storage = SQLiteStorage(tmp_path / "s.db", retention_rows=3)
        yield "sqlite", storage
        storage.close()
        return
    schema = f"td_test_{uuid.uuid4().hex[:12]}"
    storage = _postgres(schema)
    try:
        yield schema, storage
    finally:
        storage.drop_schema()


def query_row(request_id: str, targets: list[str], dim: int = 4, created_at: float | None = None) -> tuple[Any, ...]:
    row = decision_record(request_id, "query", "v1", targets, np.arange(len(targets) * dim, dtype=np.float32).reshape(-1, dim),
                          np.full(len(targets), 0.5, np.float32), None, np.ones(len(targets), np.uint8), 12.0, query_key=7)
    return row if created_at is None else (*row[:13], created_at, *row[14:])


def test_the_schema_is_current_and_migrating_again_changes_nothing(backend: tuple[str, Any]) -> None:
    _, storage = backend
    version = storage.schema_version
    assert version >= 3 and storage.migrate() == version


def test_decisions_outcomes_and_their_rules(backend: tuple[str, Any]) -> None:
    _, storage = backend
    storage.record_decisions("r1", "candidate", "v1", [DecisionRow("a", 0, np.ones(5), 0.9, 0.1, True),
                                                       DecisionRow("b", 1, np.zeros(5), 0.2, 0.3, False)], 40.0)
    assert storage.record_outcome("r1", None, True, 0.8, 0.01) == "a"  # the top-ranked target by default
    assert storage.record_outcome("r1", "b", False, None, None) == "b"
    with pytest.raises(UnknownRequestError):
        storage.record_outcome("nope", None, True, None, None)
    with pytest.raises(UnknownRequestError):
        storage.record_outcome("r1", "c", True, None, None)
    with pytest.raises(OutcomeExistsError):
        storage.record_outcome("r1", "a", False, 0.1, None)
    first_at = storage.labelled("candidate").feedback_at[0]
    storage.record_outcome("r1", "a", False, 0.1, None, correction=True, by="key:abc")
    logs = storage.labelled("candidate")
    assert logs.targets == ["a", "b"] and logs.labels.tolist() == [0.0, 0.0] and logs.request_ids == ["r1", "r1"]
    # the correction keeps the value it replaced and when that was recorded (retraining's memory needs both)
    (correction,) = storage.corrections(first_at - 1.0)
    assert correction[:5] == ("r1", "a", 1, 0.8, first_at) and correction[5] == logs.feedback_at[0] >= first_at
    assert storage.corrections(correction[5]) == []
    np.testing.assert_allclose(logs.quality, [0.1, np.nan])
    np.testing.assert_array_equal(logs.inputs, [np.ones(5), np.zeros(5)])
    stats = storage.statistics()
    assert stats["total_requests"] == 1 and stats["total_decisions"] == 2 and stats["outcomes"] == 2
    assert stats["p50_latency_us"] == pytest.approx(40.0) and stats["lightweight_share"] == pytest.approx(0.5)


def test_gateway_calls_failures_and_prompts_in_one_transaction(backend: tuple[str, Any]) -> None:
    _, storage = backend
    now = time.time()
    failed = CallRecord("g1", 0, "up-strong", "strong", "http_5xx", 500, False, None, None, None, None, 3.0, now)
    served = CallRecord("g1", 1, "up-weak", "weak", "ok", 200, True, 12, 30, 0.004, 80.0, 120.0, now)
    storage.insert_log([query_row("g1", ["weak", "strong"])], [failed.row(), served.row()], [failed.failure_outcome(1)],
                       [("g1", "What is 2+2?", now)])
    calls = storage.calls("g1")
    assert [(c["upstream"], c["status"], c["stream"]) for c in calls] == [("up-strong", "http_5xx", 0), ("up-weak", "ok", 1)]
    assert calls[1]["cost"] == pytest.approx(0.004) and calls[1]["completion_tokens"] == 30
    logs = storage.labelled("query")
    assert logs.targets == ["strong"] and logs.labels.tolist() == [0.0] and logs.query_keys == [7]
    np.testing.assert_array_equal(logs.inputs[0], [4, 5, 6, 7])  # the failed target's row
    assert storage.prompt_texts() == ["What is 2+2?"]
    assert storage.logged_inputs("query").shape == (1, 4)
    assert storage.record_outcome("g1", None, True, 0.9, None) == "weak"  # feedback goes to the model that answered


def test_each_outcome_says_who_recorded_it_and_feedback_replaces_a_judges_grade(backend: tuple[str, Any]) -> None:
    _, storage = backend
    now = time.time()
    failed = CallRecord("s1", 0, "up-strong", "strong", "http_5xx", 500, False, None, None, None, None, 3.0, now)
    storage.insert_log([query_row("s1", ["weak", "strong"]), query_row("s2", ["weak"]), query_row("s3", ["weak"])],
                       [failed.row()], [failed.failure_outcome(1), ("s1", "weak", 0, 1, 0.9, 0.001, now, "judge")])
    storage.record_outcome("s2", None, True, None, None)
    logs = storage.labelled("query")
    assert dict(zip(zip(logs.request_ids, logs.targets), logs.sources)) == {
        ("s1", "weak"): "judge", ("s1", "strong"): "failure", ("s2", "weak"): "feedback"}
    # a person overrules the judge without saying "correction" (the grade replaced is audited) ...
    assert storage.record_outcome("s1", "weak", False, 0.2, None) == "weak"
    (audit,) = storage.corrections(now - 1.0)
    assert audit[:4] == ("s1", "weak", 1, 0.9)
    # ... but the judge never overrules a person, nor a person another person, unasked
    storage.record_outcome("s3", None, True, None, None)
    for source in ("judge", "feedback"):
        with pytest.raises(OutcomeExistsError):
            storage.record_outcome("s3", None, False, None, None, source=source)
    logs = storage.labelled("query")
    assert dict(zip(zip(logs.request_ids, logs.targets), logs.sources))[("s1", "weak")] == "feedback"


def test_exploration_propensities_reach_retraining(backend: tuple[str, Any]) -> None:
    """The gateway's exploration logs a propensity and flag per decision (NULL: deterministic)."""
    _, storage = backend
    for rid, p, explored in (("e1", 0.05, True), ("e2", 0.95, False), ("e3", None, None)):
        row = decision_record(rid, "query", "v1", ["m"], np.ones((1, 4), np.float32), np.array([0.5], np.float32), None,
                              np.ones(1, np.uint8), 1.0, propensity=p, explored=explored)
        storage.insert_log([row], [], [])
        storage.record_outcome(rid, None, True, None, None)
    logs = storage.labelled("query")
    assert logs.request_ids == ["e1", "e2", "e3"]
    np.testing.assert_allclose(logs.propensity, [0.05, 0.95, np.nan])
    assert logs.explored.tolist() == [True, False, False]


def test_a_fallen_back_decisions_propensity_is_its_planned_models_outcomes_only(backend: tuple[str, Any]) -> None:
    """A call that fell back from its planned model logs the propensity at that model's rank: its
    failure carries it; the answer of the model it fell back to (rank 0) does not."""
    _, storage = backend
    row = decision_record("f1", "query", "v1", ["weak", "strong"], np.ones((2, 4), np.float32),
                          np.array([0.5, 0.5], np.float32), None, np.array([1, 0], np.uint8), 1.0, propensity=0.01,
                          explored=True, propensity_rank=1)
    storage.insert_log([row], [], [("f1", "strong", 1, 0, None, None, 1.0, "failure")])
    storage.record_outcome("f1", "weak", True, 0.9, None)
    logs = storage.labelled("query")
    got = {t: (p, e, f) for t, p, e, f in zip(logs.targets, logs.propensity, logs.explored, logs.fell_back)}
    assert got["strong"] == (pytest.approx(0.01), True, True)
    assert np.isnan(got["weak"][0]) and not got["weak"][1] and not got["weak"][2]
    with pytest.raises(ValueError, match="propensity_rank"):
        decision_record("f2", "query", "v1", ["weak"], np.ones((1, 4), np.float32), np.array([0.5], np.float32), None,
                        np.ones(1, np.uint8), 1.0, propensity=0.5, propensity_rank=1)


def test_spend_per_key_name_since_a_time(backend: tuple[str, Any]) -> None:
    """What budgets are rebuilt from after a restart: known costs since a time, per key name."""
    _, storage = backend
    rows = [CallRecord("k1", 0, "up", "strong", "ok", 200, False, 1, 1, 0.25, 1.0, 2.0, 100.0, "alice"),
            CallRecord("k2", 0, "up", "strong", "ok", 200, False, 1, 1, 0.5, 1.0, 2.0, 200.0, "alice"),
            CallRecord("k3", 0, "up", "strong", "http_5xx", 500, False, None, None, None, None, 2.0, 200.0, "alice"),
            CallRecord("k4", 0, "up", "weak", "ok", 200, True, 1, 1, 0.125, 1.0, 2.0, 300.0, "bob"),
            CallRecord("k5", 0, "up", "weak", "ok", 200, True, 1, 1, 9.0, 1.0, 2.0, 300.0, None)]
    storage.insert_log([query_row(r.request_id, ["strong"]) for r in rows], [r.row() for r in rows], [])
    assert storage.spend_by_key(150.0) == {"alice": pytest.approx(0.5), "bob": pytest.approx(0.125)}
    assert storage.spend_by_key(0.0)["alice"] == pytest.approx(0.75)
    assert [c["key_name"] for c in storage.calls("k4")] == ["bob"]


def test_retention_keeps_the_newest_rows_with_their_outcomes(backend: tuple[str, Any]) -> None:
    _, storage = backend
    for i in range(6):
        storage.insert_decision_rows([query_row(f"r{i}", ["m"], created_at=1000.0 + i)])
        storage.record_outcome(f"r{i}", None, True, None, None)
    assert storage.prune() == 3  # retention_rows=3: the three newest stay
    assert storage.count("decisions") == 3 and storage.count("outcomes") == 3
    assert storage.labelled("query").created_at.tolist() == [1003.0, 1004.0, 1005.0]


def test_replicas_opening_at_once_and_racing_feedback(backend: tuple[str, Any], tmp_path: Path) -> None:
    """Two storages on one database migrate once; two feedbacks for one decision: exactly one wins."""
    name, storage = backend
    storage.insert_decision_rows([query_row("race", ["m"])])
    if name == "sqlite":
        others = [SQLiteStorage(tmp_path / "s.db") for _ in range(2)]
    else:
        others = []
        threads = [threading.Thread(target=lambda: others.append(_postgres(name))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(o.schema_version == storage.schema_version for o in others)
    results: list[str] = []

    def send(s: Any) -> None:
        try:
            s.record_outcome("race", None, True, 0.5, None)
            results.append("ok")
        except OutcomeExistsError:
            results.append("exists")

    threads = [threading.Thread(target=send, args=(o,)) for o in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists", "ok"]
    for o in others:
        if name == "sqlite":
            o.close()
        else:
            o._pool.close()


def test_storage_copy_moves_a_sqlite_log_into_postgresql(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tinydancer.cli import app
    from tinydancer.server.storage import open_storage

    source = SQLiteStorage(tmp_path / "old.db")
    now = time.time()
    call = CallRecord("g1", 0, "up", "strong", "http_5xx", 500, False, None, None, None, None, 3.0, now)
    source.insert_log([query_row("g1", ["strong"])], [call.row()], [call.failure_outcome(0)], [("g1", "hello", now)])
    source.record_decisions("c1", "candidate", "v1", [DecisionRow("a", 0, np.ones(3), 0.9, None, True)], 5.0)
    source.record_outcome("c1", None, True, 0.5, None)
    source.record_outcome("c1", None, False, 0.1, None, correction=True, by="key:x")
    source.close()
    schema = f"td_test_{uuid.uuid4().hex[:12]}"
    target = _postgres(schema)
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        for _ in range(2):  # a second run copies nothing twice
            result = CliRunner().invoke(app, ["storage", "copy", "--from", str(tmp_path / "old.db"), "--to", url, "-q"])
            assert result.exit_code == 0, result.output
        moved = open_storage(url)
        assert {t: moved.count(t) for t in ("decisions", "outcomes", "outcome_corrections", "calls", "prompts")} == {
            "decisions": 2, "outcomes": 2, "outcome_corrections": 1, "calls": 1, "prompts": 1}
        logs = moved.labelled("query")
        assert logs.targets == ["strong"] and logs.labels.tolist() == [0.0] and logs.query_keys == [7]
        assert moved.labelled("candidate").quality.tolist() == [pytest.approx(0.1)]
        moved.close()
    finally:
        target.drop_schema()


def test_one_postgresql_replica_holds_the_learning_lock_at_a_time() -> None:
    """The scheduled retrain runs on one replica at a time (gateway/scheduled_learning.py)."""
    import uuid

    schema = f"td_test_{uuid.uuid4().hex[:12]}"
    a = _postgres(schema)
    b = _postgres(schema)
    other = _postgres(schema + "_x")  # another schema is another lock
    try:
        with a.exclusive("learning") as first:
            with b.exclusive("learning") as second, other.exclusive("learning") as elsewhere:
                assert first and not second and elsewhere
        with b.exclusive("learning") as again:  # released when the holder's block ended
            assert again
    finally:
        for s in (a, b, other):
            s.drop_schema()
