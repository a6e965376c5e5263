"""Where the code holds a lock, things happen at once: promotions racing on the folder registry
(beside SQLite; an ``flock``) and on PostgreSQL (an advisory lock), and two retrains started
together.  Each must end with exactly one winner, whatever the interleaving: the tests line the
racers up on a barrier and check the outcome, never the timing.

PostgreSQL runs on 127.0.0.1:5432 in a schema of each test's own (see ``tests/pg.py``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pg import fresh_schema, schema_url
from test_learning import log_traffic
from tinydancer import FastGRNN
from tinydancer.candidates import Router, RouterConfig
from tinydancer.demo import train_default_router_model
from tinydancer.server.learning import RetrainConfig, retrain
from tinydancer.server.registry import DatabaseRegistry, ModelRegistry, PromotionRefused
from tinydancer.server.storage import SQLiteStorage
from tinydancer.synthetic import drifted_lightweight_ok_probability

RACERS = 4
ROUNDS = 5


@pytest.fixture()
def served(tmp_path: Path) -> Path:
    path = tmp_path / "served.safetensors"
    train_default_router_model(path)
    return path


@pytest.fixture(params=["folder", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any, Callable[[], Any]]]:
    """(name, the log, a factory of registry handles: one per racer, as separate replicas would have)."""
    if request.param == "folder":
        storage = SQLiteStorage(tmp_path / "logs.db")
        yield "folder", storage, lambda: ModelRegistry(tmp_path / "registry")
        storage.close()
        return
    from tinydancer.server.storage.postgres import PostgresStorage

    with fresh_schema() as schema:
        storage = PostgresStorage(schema_url(schema), max_size=RACERS + 2)
        try:
            yield "postgres", storage, lambda: DatabaseRegistry(storage, "model")
        finally:
            storage.close()


def race(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run the callables at once (released together by a barrier); what each returned or raised."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = workers[i]()
        except Exception as exc:  # noqa: BLE001 (the outcome is what is checked)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_promotions_at_once_exactly_one_wins(backend: tuple[str, Any, Callable[[], Any]], served: Path) -> None:
    """Every round, RACERS promotions start from the same current version: one moves the pointer,
    the others are refused naming it (a compare-and-set held under the registry's lock)."""
    name, _storage, registry_handle = backend
    registries = [registry_handle() for _ in range(RACERS)]
    model = FastGRNN.load(served)
    for round_ in range(ROUNDS):
        entries = [r.add(model, {"round": round_, "racer": i}) for i, r in enumerate(registries)]
        expected = registries[0].current()

        def promote(i: int) -> str:
            registries[i].promote(entries[i], served, expected=expected, by=f"racer-{i}")
            return entries[i].version

        results = race([lambda i=i: promote(i) for i in range(RACERS)])
        won = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, PromotionRefused)]
        assert len(won) == 1 and len(refused) == RACERS - 1, f"round {round_}: {results}"
        assert registries[0].current() == won[0]
        assert all(won[0] in str(r) for r in refused)  # each refusal names the version that got there first
        if name == "folder":
            assert FastGRNN.load(served).extra_metadata["version"] == won[0]  # the served file is the winner's
    promoted = [v.version for v in registries[0].versions() if v.promoted]
    assert len(registries[0].versions()) == RACERS * ROUNDS  # every loser is kept, not served
    assert registries[0].current() in promoted


def test_two_retrains_started_together_promote_once(backend: tuple[str, Any, Callable[[], Any]], served: Path) -> None:
    """Two retrains read the same current version, both train a better model; only one promotes,
    the other keeps its version in the registry and says it was refused."""
    name, storage, registry_handle = backend
    log_traffic(storage, Router(RouterConfig(model_path=served)), 60, seed=1, truth=drifted_lightweight_ok_probability)
    started = threading.Barrier(2)

    def run(seed: int) -> Any:
        said: list[str] = []

        def progress(message: str) -> None:
            if not said:  # the first message comes after the retrain read the current version
                started.wait(30)  # so neither can promote before the other has read it
            said.append(message)

        return retrain(storage, served, registry_handle(),
                       RetrainConfig(seed=seed, epochs=8, min_samples=200, allow_mix_shift=True, promoted_by=f"retrain-{seed}"),
                       progress=progress)

    reports = race([lambda: run(0), lambda: run(1)])
    assert not any(isinstance(r, BaseException) for r in reports), reports
    assert all(r.new["log_loss"] <= r.old["log_loss"] for r in reports)  # both would promote alone
    winner = [r for r in reports if r.promoted]
    loser = [r for r in reports if not r.promoted]
    assert len(winner) == 1 and len(loser) == 1
    assert "refused" in loser[0].reason and winner[0].version in loser[0].reason
    registry = registry_handle()
    assert registry.current() == winner[0].version
    assert {v.version for v in registry.versions()} == {winner[0].version, loser[0].version}
    if name == "folder":
        assert FastGRNN.load(served).extra_metadata["version"] == winner[0].version
