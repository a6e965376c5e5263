"""A PostgreSQL that goes silent (issue 25, finding 13): packets dropped, nothing refused.

The relay of ``tests/pg.py`` is put in :meth:`~pg.Relay.blackhole`: no byte passes and no socket is
closed, and the connections open then stay dead after the outage.  Before the fix readiness stayed
200 (its ``SELECT 1`` had no deadline), feedback hung until TCP gave up, the registry follower
listened on a dead connection and missed promotions, and shutdown waited on dead connections.

Every step that could hang runs in a thread with a generous limit (:func:`within`), so that the
tests fail rather than hang on code that waits forever; the limits check that things happen in
seconds, not how many.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from pg import Relay, fresh_schema, schema_url
from tinydancer import FastGRNN
from tinydancer.demo import train_default_router_model
from tinydancer.server import ServiceSettings, create_app
from tinydancer.server.registry import DatabaseRegistry

BODY = {"query_embedding": [1.0, 0.0], "candidates": [{"id": "a", "embedding": [1.0, 0.1]}]}


def within(limit_s: float, what: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()``'s result and how long it took; an AssertionError if it takes longer than ``limit_s``
    (it is left running in its daemon thread: the test's cleanup ends the outage that holds it)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test's thread
            out["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        raise AssertionError(f"{what}: no answer within {limit_s:.0f} s")
    if "error" in out:
        raise out["error"]
    return out.get("value"), time.monotonic() - started


def wait_until(condition: Callable[[], bool], what: str, limit_s: float) -> float:
    """Seconds until ``condition()`` holds (each try bounded too); an AssertionError past ``limit_s``."""
    started = time.monotonic()
    while True:
        if within(limit_s, what, condition)[0]:
            return time.monotonic() - started
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"{what}: did not happen within {limit_s:.0f} s")
        time.sleep(0.1)


@pytest.fixture()
def served(tmp_path: Path) -> Path:
    path = tmp_path / "served.safetensors"
    train_default_router_model(path)
    return path


@pytest.fixture()
def outage(served: Path) -> Iterator[tuple[Relay, str]]:
    """A relay to a fresh schema; closed (every socket, dead ones too) before the schema is dropped."""
    relay = Relay()
    with fresh_schema() as schema:
        try:
            yield relay, schema
        finally:
            relay.close()


class Replica:
    """A service on the relay, started and stopped by hand so that a stuck shutdown fails the test."""

    def __init__(self, app: Any) -> None:
        self.client = TestClient(app)
        self.client.__enter__()
        self.open = True

    def stop(self) -> None:
        if self.open:
            self.open = False
            self.client.__exit__(None, None, None)


def test_a_silent_database_is_seen_in_seconds_feedback_is_refused_and_the_service_recovers(
        served: Path, outage: tuple[Relay, str]) -> None:
    relay, schema = outage
    replica = Replica(create_app(ServiceSettings(model_path=served, database_url=relay.url(schema), watch_interval_s=0)))
    client = replica.client
    try:
        assert client.get("/health/ready").status_code == 200
        before = client.post("/v1/route", json=BODY).json()["request_id"]
        time.sleep(0.2)  # its decision is committed

        relay.blackhole()
        began = time.monotonic()
        # feedback sent as the outage begins, before anything noticed it: answered, not left hanging
        early: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: early.update(answer=within(
            20, "feedback at the start of the outage",
            lambda: client.post("/v1/feedback", json={"request_id": before, "success": True}))), daemon=True)
        sender.start()
        wait_until(lambda: client.get("/health/ready").status_code == 503, "readiness 503", 10)
        detected_s = time.monotonic() - began
        sender.join(25)
        assert "answer" in early, "feedback at the start of the outage: no answer within 20 s"
        (response, early_s) = early["answer"]
        print(f"outage seen by readiness {detected_s:.1f} s after it began; early feedback answered in {early_s:.1f} s")
        assert detected_s < 10 and response.status_code == 503 and early_s < 10
        assert "decision log cannot be written" in client.get("/health/ready").json()["reason"]
        during = client.post("/v1/route", json=BODY)  # routing goes on; its decision waits in memory
        assert during.status_code == 200
        refused, refused_s = within(5, "feedback during the outage",
                                    lambda: client.post("/v1/feedback", json={"request_id": before, "success": True}))
        assert refused.status_code == 503 and refused_s < 1.0  # at once: the outage is known

        relay.restore()  # the old connections stay dead: the service must notice and open new ones
        back_s = wait_until(lambda: client.get("/health/ready").status_code == 200, "readiness after the outage", 30)
        print(f"ready again {back_s:.1f} s after the network came back")
        wait_until(lambda: client.post("/v1/feedback", json={"request_id": during.json()["request_id"],
                                                             "success": False}).status_code == 200,
                   "the decision routed during the outage written, its feedback taken", 30)
        answer, _ = within(20, "feedback after the outage",
                           lambda: client.post("/v1/feedback", json={"request_id": before, "success": True}))
        assert answer.status_code in (200, 409)  # 409: the early 503's write reached the server after all
    finally:
        relay.close()
        within(30, "shutdown", replica.stop)


def test_a_replica_follows_a_promotion_made_while_its_connections_were_dead(
        served: Path, outage: tuple[Relay, str], tmp_path: Path) -> None:
    from tinydancer.server.storage.postgres import PostgresStorage

    relay, schema = outage
    admin = PostgresStorage(schema_url(schema))  # the promoting side reaches the database directly
    registry = DatabaseRegistry(admin, "model")
    model = FastGRNN.load(served)
    first = registry.add(model, {})
    registry.promote(first)
    local = tmp_path / "replica.safetensors"
    local.write_bytes(served.read_bytes())
    replica = Replica(create_app(ServiceSettings(model_path=local, database_url=relay.url(schema), watch_interval_s=0.2)))
    client = replica.client

    def serving() -> str:
        return str(client.get("/info").json()["model"]["version"])

    try:
        wait_until(lambda: serving() == first.version, "the replica serving the current version", 10)
        relay.blackhole()
        second = registry.add(model, {})
        registry.promote(second, expected=first.version)  # announced while the replica hears nothing
        time.sleep(4)
        relay.restore()  # its listening connection stays dead: it must find out and listen anew
        resync_s = wait_until(lambda: serving() == second.version, "the replica serving the promotion", 20)
        print(f"promotion served {resync_s:.1f} s after the network came back")
    finally:
        relay.close()
        within(30, "shutdown", replica.stop)
        admin.close()


def test_a_replica_told_to_stop_while_the_database_is_silent_stops_promptly(served: Path, outage: tuple[Relay, str],
                                                                              tmp_path: Path) -> None:
    """Before: the follower's and the health check's threads waited on dead connections (the
    shutdown took ~25 s, joins timing out one after the other)."""
    relay, schema = outage
    replica = Replica(create_app(ServiceSettings(model_path=served, database_url=relay.url(schema), watch_interval_s=0)))
    try:
        assert replica.client.post("/v1/route", json=BODY).status_code == 200
        relay.blackhole()
        time.sleep(1.5)  # the health check and the follower's ping are in flight on dead connections
        _, stop_s = within(40, "shutdown during a silent outage", replica.stop)
        print(f"shutdown took {stop_s:.1f} s during the outage")
        assert stop_s < 6
    finally:
        relay.close()
        within(30, "shutdown", replica.stop)


def test_the_timeouts_reach_libpq_and_the_server_and_the_url_wins(outage: tuple[Relay, str]) -> None:
    """The settings TCP and the server enforce (the relay above cannot exercise them: its kernel
    acknowledges every byte), on a real connection; a parameter the URL sets is kept."""
    from psycopg.conninfo import conninfo_to_dict

    from tinydancer.server.storage.postgres import PostgresStorage

    _, schema = outage
    storage = PostgresStorage(schema_url(schema) + "&connect_timeout=9", timeout_s=3.0, statement_timeout_s=3.0)
    try:
        params = conninfo_to_dict(storage.conninfo)
        assert params["connect_timeout"] == "9"  # the URL's own
        assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"],
                params["keepalives_count"], params["tcp_user_timeout"]) == ("1", "1", "1", "2", "3000")
        with storage._pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "3s"
            assert conn.execute("SELECT current_schema()").fetchone()[0] == schema  # the URL's options kept
            assert conn.info.get_parameters()["tcp_user_timeout"] == "3000"
        assert storage.statistics()["total_requests"] == 0  # a scan lifts the statement timeout for itself
    finally:
        storage.close()
