"""Two replicas, one PostgreSQL: traffic to both, one SIGKILLed mid-load, nothing acknowledged is
lost; a retrain over the shared log promotes a version that both replicas (the restarted one too)
then serve.

Real processes (``tinydancer serve``) on loopback ports, real connections; skipped, saying why,
when no PostgreSQL server answers (see ``tests/pg.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pg import fresh_schema, schema_url
from test_registry import wait_for
from tinydancer.demo import train_default_router_model
from tinydancer.server.learning import RetrainConfig, retrain
from tinydancer.server.registry import DatabaseRegistry
from tinydancer.synthetic import candidate_bodies, drifted_lightweight_ok_probability


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


class Replica:
    """``tinydancer serve`` on its own port with its own copy of the model file (no shared disk)."""

    def __init__(self, url: str, model: Path, log: Path) -> None:
        self.url, self.model, self.log = url, model, log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Replica":
        env = {**os.environ, "TINY_DANCER_DATABASE_URL": self.url}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tinydancer", "serve", "--model-path", str(self.model), "--port", str(self.port),
             "--watch-interval", "0.2", "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        wait_for(self.ready, f"replica on port {self.port} ready (log: {self.log})", limit_s=60)
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"replica exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return call(self.port, "GET", "/health/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def version(self) -> str:
        return call(self.port, "GET", "/info")[1]["model"]["version"]

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def test_two_replicas_one_log_a_sigkill_loses_nothing_acknowledged_and_both_serve_the_promotion(tmp_path: Path) -> None:
    with fresh_schema() as schema:
        url = schema_url(schema)
        models = []
        for name in ("a", "b"):
            models.append(tmp_path / name / "model.safetensors")
            train_default_router_model(models[-1])
        a = Replica(url, models[0], tmp_path / "a.log").start()
        b = Replica(url, models[1], tmp_path / "b.log").start()
        try:
            traffic = candidate_bodies(300, 8, seed=3, truth=drifted_lightweight_ok_probability)
            acknowledged: list[tuple[str, str]] = []
            refused: list[int] = []
            lock = threading.Lock()
            kill_at = threading.Event()

            def client(share: list[tuple[dict[str, Any], Any]], k: int) -> None:
                for n, (body, outcomes) in enumerate(share):
                    replica = (a, b)[(n + k) % 2]
                    try:
                        status, routed = call(replica.port, "POST", "/v1/route", body)
                        if status != 200:
                            continue
                        for cand, y in zip(body["candidates"], outcomes):
                            fb = {"request_id": routed["request_id"], "candidate_id": cand["id"], "success": bool(y)}
                            if call(replica.port, "POST", "/v1/feedback", fb)[0] == 200:
                                with lock:
                                    acknowledged.append((routed["request_id"], cand["id"]))
                    except OSError:  # the killed replica: refused or cut, so never acknowledged
                        with lock:
                            refused.append(n)
                        continue
                    if k == 0 and n == len(share) // 2:
                        kill_at.set()

            clients = [threading.Thread(target=client, args=(traffic[k::4], k)) for k in range(4)]
            for t in clients:
                t.start()
            kill_at.wait(timeout=300)
            b.kill()  # mid-load, with requests in flight
            for t in clients:
                t.join(timeout=300)

            from tinydancer.server.storage.postgres import PostgresStorage

            storage = PostgresStorage(url)
            try:
                import psycopg

                with psycopg.connect(url) as conn:
                    stored = set(conn.execute("SELECT request_id, target FROM outcomes").fetchall())
                assert len(acknowledged) > 1000 and refused  # traffic went on after the kill
                print(f"{len(acknowledged)} outcomes acknowledged, {len(refused)} requests failed on the killed replica")
                missing = [pair for pair in acknowledged if pair not in stored]
                assert not missing, f"{len(missing)} acknowledged outcomes are not in the database"
                routed_by = {row[0] for row in psycopg.connect(url).execute(
                    "SELECT DISTINCT model_version FROM decisions").fetchall()}
                assert routed_by == {"default-demo-1"}

                registry = DatabaseRegistry(storage, "model")
                report = retrain(storage, models[0], registry, RetrainConfig(seed=0, promoted_by="test"))
                assert report.promoted, report.reason
                wait_for(lambda: a.version() == report.version, "the live replica serving the promoted version")
                b.start()  # restarted after its kill: it serves what is current, not its old file
                assert b.version() == report.version
            finally:
                storage.close()
        finally:
            a.stop()
            b.stop()
