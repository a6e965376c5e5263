"""The model registry: a folder beside SQLite, rows in PostgreSQL; promotion as a compare-and-set;
replicas that follow promotions; retention and readiness of the shared database.

PostgreSQL tests use the server on 127.0.0.1:5432 in a schema of their own (see ``tests/pg.py``)
and skip, saying why, when none answers.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pg import Relay, fresh_schema, schema_url
from test_learning import log_traffic
from tinydancer import FastGRNN
from tinydancer.candidates import Router, RouterConfig
from tinydancer.cli import app as cli
from tinydancer.demo import train_default_router_model
from tinydancer.server import ServiceSettings, create_app
from tinydancer.server.learning import RetrainConfig, retrain
from tinydancer.server.registry import DatabaseRegistry, ModelRegistry, PromotionRefused, RegistryFollower
from tinydancer.server.storage import DecisionRow, SQLiteStorage
from tinydancer.synthetic import drifted_lightweight_ok_probability


def wait_for(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Wait for something a background thread does (a generous limit: this checks that it happens,
    not how fast)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: did not happen within {limit_s:.0f} s")
        time.sleep(0.05)


def version_of(path: Path) -> str:
    return FastGRNN.load(path).extra_metadata["version"]


@pytest.fixture()
def served(tmp_path: Path) -> Path:
    path = tmp_path / "served.safetensors"
    train_default_router_model(path)
    return path


@pytest.fixture()
def pg(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    from tinydancer.server.storage.postgres import PostgresStorage

    with fresh_schema() as schema:
        storage = PostgresStorage(schema_url(schema))
        try:
            yield schema_url(schema), storage
        finally:
            storage.close()


# ---------------------------------------------------------------------- the folder registry
def test_folder_promotion_is_a_compare_and_set(tmp_path: Path, served: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    model = FastGRNN.load(served)
    first, second = registry.add(model, {"n": 1}), registry.add(model, {"n": 2})
    assert first.version != second.version
    registry.promote(first, served, expected=None, by="test")  # both retrains started with nothing current
    with pytest.raises(PromotionRefused, match=f"{first.version} was promoted"):
        registry.promote(second, served, expected=None)
    assert registry.current() == first.version and version_of(served) == first.version
    registry.promote(second, served)  # unchecked: an operator's choice
    assert registry.current() == second.version and version_of(served) == second.version


# ---------------------------------------------------------------------- the database registry
def test_database_versions_pointer_and_compare_and_set(pg: tuple[str, Any], served: Path) -> None:
    _, storage = pg
    registry = DatabaseRegistry(storage, "model")
    assert registry.current() is None and registry.current_data() is None and registry.versions() == []
    model = FastGRNN.load(served)
    first = registry.add(model, {"holdout": {"log_loss": 0.5}}, parent="seed")
    second = registry.add(model, {}, parent=first.version)
    registry.promote(first, expected=None, by="alice@host")
    with pytest.raises(PromotionRefused):  # it started from "nothing current" too: refused
        registry.promote(second, expected=None, by="bob@host")
    listed = {v.version: v for v in registry.versions()}
    assert listed[first.version].promoted and listed[first.version].promoted_by == "alice@host"
    assert not listed[second.version].promoted and listed[first.version].metrics == {"holdout": {"log_loss": 0.5}}
    assert FastGRNN.from_bytes(registry.current_data()).extra_metadata["version"] == first.version
    assert DatabaseRegistry(storage, "query_router").current() is None  # one pointer per kind
    with pytest.raises(Exception, match="no model version"):
        registry.promote("v-nope")


def test_a_promotion_reaches_a_listening_follower(pg: tuple[str, Any], served: Path, tmp_path: Path) -> None:
    _, storage = pg
    registry = DatabaseRegistry(storage, "model")
    model = FastGRNN.load(served)
    first = registry.add(model, {})
    registry.promote(first)
    replica_file = tmp_path / "replica" / "model.safetensors"  # no shared file system: its own copy
    follower = RegistryFollower(storage, {"model": replica_file})
    assert follower.sync() == ["model"] and version_of(replica_file) == first.version
    assert follower.sync() == []  # nothing new
    follower.start()
    try:
        second = registry.add(model, {})
        registry.promote(second, expected=first.version)
        wait_for(lambda: version_of(replica_file) == second.version, "the follower writing the promoted version")
    finally:
        follower.stop()


def test_retrain_reads_the_shared_log_and_cannot_promote_over_another(pg: tuple[str, Any], served: Path) -> None:
    url, storage = pg
    log_traffic(storage, Router(RouterConfig(model_path=served)), 120, seed=1, truth=drifted_lightweight_ok_probability)
    registry = DatabaseRegistry(storage, "model")
    report = retrain(storage, served, registry, RetrainConfig(seed=0, min_samples=200, promoted_by="test"))
    assert report.promoted and report.parent == "default-demo-1" and registry.current() == report.version
    # the next retrain starts from the registry's current version, not the local file, and learns
    # the world drifting back
    served.write_bytes(b"not used")
    since = time.time()
    log_traffic(storage, Router(RouterConfig(model_path=served), model_bytes=registry.current_data()), 120, seed=2)
    cut_in: list[str] = []

    def another_promotion(message: str) -> None:  # between reading the current version and promoting
        if not cut_in:
            other = registry.add(FastGRNN.from_bytes(registry.current_data()), {})
            registry.promote(other, expected=report.version)
            cut_in.append(other.version)

    second = retrain(storage, served, registry, RetrainConfig(seed=1, min_samples=200, allow_mix_shift=True,
                                                                           since=since),
                     progress=another_promotion)
    assert second.parent == report.version
    assert not second.promoted and "refused" in second.reason and registry.current() == cut_in[0]
    assert second.version in {v.version for v in registry.versions()}  # kept, not served


def test_a_replica_starts_on_the_current_version_and_reloads_promotions(pg: tuple[str, Any], served: Path,
                                                                         tmp_path: Path) -> None:
    url, storage = pg
    registry = DatabaseRegistry(storage, "model")
    model = FastGRNN.load(served)
    model.extra_metadata["version"] = "ignored"
    first = registry.add(model, {})
    registry.promote(first)
    local = tmp_path / "replica.safetensors"
    local.write_bytes(served.read_bytes())  # an older file on the replica's disk
    settings = ServiceSettings(model_path=local, database_url=url, watch_interval_s=0.2)
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()
        assert info["model"]["version"] == first.version  # the current one, from the start
        assert info["database"].startswith("postgresql://")
        second = registry.add(model, {})
        registry.promote(second, expected=first.version)
        wait_for(lambda: client.get("/info").json()["model"]["version"] == second.version, "the replica reloading")
        body = {"query_embedding": [1.0, 0.0], "candidates": [{"id": "a", "embedding": [1.0, 0.1]}]}
        assert client.post("/v1/route", json=body).json()["model_version"] == second.version


def test_cli_copies_a_registry_folder_and_rolls_back(pg: tuple[str, Any], served: Path, tmp_path: Path) -> None:
    url, storage = pg
    folder = ModelRegistry(tmp_path / "registry")
    model = FastGRNN.load(served)
    old, new = folder.add(model, {"n": 1}), folder.add(model, {"n": 2})
    folder.promote(new, served)
    log = SQLiteStorage(tmp_path / "t.db")
    log.record_decisions("r1", "candidate", "v", [DecisionRow("a", 0, np.ones(5), 0.9, 0.1, True)], 5.0)
    log.close()
    runner = CliRunner()
    result = runner.invoke(cli, ["storage", "copy", "--from", str(tmp_path / "t.db"), "--to", url,
                                 "--registry", str(tmp_path / "registry"), "-q"])
    assert result.exit_code == 0, result.output
    assert "2 registry versions" in result.output and "1 decisions" in result.output
    listed = json.loads(runner.invoke(cli, ["registry", "list", "--database-url", url, "--json"]).output)
    assert [(v["version"], v["promoted"]) for v in listed] == [(old.version, False), (new.version, True)]
    result = runner.invoke(cli, ["registry", "promote", old.version, "--database-url", url])
    assert result.exit_code == 0, result.output
    assert DatabaseRegistry(storage, "model").current() == old.version
    again = runner.invoke(cli, ["storage", "copy", "--from", str(tmp_path / "t.db"), "--to", url,
                                "--registry", str(tmp_path / "registry"), "-q"])
    assert "0 registry versions" in again.output  # run twice: nothing doubled, the rollback stands
    assert DatabaseRegistry(storage, "model").current() == old.version
    refused = runner.invoke(cli, ["registry", "list", "--database-url", str(tmp_path / "t.db")])
    assert refused.exit_code != 0 and "PostgreSQL registry" in refused.output


# ---------------------------------------------------------------------- operations
def test_retention_runs_in_the_background(served: Path) -> None:
    from tinydancer.server.storage.postgres import PostgresStorage

    with fresh_schema() as schema:
        storage = PostgresStorage(schema_url(schema), retention_rows=5, maintenance_interval_s=0.05)
        storage.PRUNE_EVERY_S = 0.0
        try:
            for i in range(12):
                storage.record_decisions(f"r{i}", "candidate", "v", [DecisionRow("a", 0, np.ones(3), 0.5, None, True)],
                                         1.0)
            wait_for(lambda: storage.count("decisions") == 5, "retention down to the newest 5 rows")
        finally:
            storage.close()


def test_an_unreachable_database_is_not_ready_refuses_feedback_and_loses_no_decision(served: Path) -> None:
    relay = Relay()
    with fresh_schema() as schema:
        settings = ServiceSettings(model_path=served, database_url=relay.url(schema), watch_interval_s=0)
        app = create_app(settings)
        body = {"query_embedding": [1.0, 0.0], "candidates": [{"id": "a", "embedding": [1.0, 0.1]}]}
        try:
            with TestClient(app) as client:
                assert client.get("/health/ready").status_code == 200
                rid = client.post("/v1/route", json=body).json()["request_id"]
                relay.cut()
                wait_for(lambda: client.get("/health/ready").status_code == 503, "readiness saying the database is gone")
                assert "decision log cannot be written" in client.get("/health/ready").json()["reason"]
                during = client.post("/v1/route", json=body)  # routing goes on; its decision row waits in memory
                assert during.status_code == 200
                refused = client.post("/v1/feedback", json={"request_id": rid, "success": True})
                assert refused.status_code == 503  # not acknowledged, so not lost: the client retries
                relay.restore()
                wait_for(lambda: client.get("/health/ready").status_code == 200, "readiness after the database is back")
                wait_for(lambda: client.post("/v1/feedback", json={"request_id": during.json()["request_id"],
                                                                   "success": False}).status_code == 200,
                         "the buffered decision written, its feedback taken")
                assert client.post("/v1/feedback", json={"request_id": rid, "success": True}).status_code == 200
            from tinydancer.server.storage.postgres import PostgresStorage

            check = PostgresStorage(schema_url(schema))
            assert check.count("decisions") == 2 and check.count("outcomes") == 2
            check.close()
        finally:
            relay.close()
