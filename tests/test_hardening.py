"""The service under hostile input (issue 12): each test reproduces a finding and fails without its fix."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from test_service import AUTH, MODEL, TOKEN, Server, body
from tinydancer.server import ServiceSettings, create_app


# ---------------------------------------------------------------------- 1, 2: what a reload may read
@pytest.fixture()
def models(tmp_path):
    """A model folder holding the served model and the database (the worst case for finding 1)."""
    folder = tmp_path / "models"
    folder.mkdir()
    served = folder / "served.safetensors"
    served.write_bytes(MODEL.read_bytes())
    return folder, served


def _reload_in_thread(client: TestClient, path: str) -> tuple[threading.Thread, list]:
    answer: list = []
    thread = threading.Thread(target=lambda: answer.append(client.post("/admin/reload", json={"model_path": path}, headers=AUTH)),
                              daemon=True)
    thread.start()
    return thread, answer


def test_reload_refuses_everything_but_a_regular_model_file_in_the_model_folder(models, tmp_path) -> None:
    folder, served = models
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(MODEL.read_bytes())  # a valid model, in the wrong place
    fifo = folder / "pipe.safetensors"
    os.mkfifo(fifo)
    (folder / "zero.safetensors").symlink_to("/dev/zero")
    (folder / "link.safetensors").symlink_to(outside / "model.safetensors")
    (folder / "sub").mkdir()
    db = folder / "t.db"
    app = create_app(ServiceSettings(model_path=served, database_path=db, watch_interval_s=0, auth_token=TOKEN))
    hostile = [str(fifo), "/dev/zero", str(folder / "zero.safetensors"), str(folder / "link.safetensors"),
               str(outside / "model.safetensors"), str(folder / "missing.safetensors"), str(folder / "sub"),
               str(db), str(db) + "-wal", str(folder / ".." / "elsewhere" / "model.safetensors"), "/etc/passwd"]
    try:
        with TestClient(app) as client:
            messages = set()
            for path in hostile:
                thread, answer = _reload_in_thread(client, path)
                thread.join(20)
                assert not thread.is_alive(), f"reloading {path} hung"
                r = answer[0]
                assert r.status_code == 422, (path, r.text)
                messages.add(r.json()["detail"][0]["msg"])
            # one answer for all of them: the service does not say what exists where
            assert len(messages) == 1 and "regular model file" in messages.pop()
            assert client.get("/info", headers=AUTH).json()["model"]["path"] == str(served)
            # the served folder, and the registry below it, still work
            (folder / "registry").mkdir()
            copy = folder / "registry" / "v2.safetensors"
            copy.write_bytes(MODEL.read_bytes())
            assert client.post("/admin/reload", json={"model_path": str(copy)}, headers=AUTH).status_code == 200
            metrics = client.get("/metrics", headers=AUTH).text
            assert f'tiny_dancer_model_reloads_total{{result="failed"}} {float(len(hostile))}' in metrics
    finally:
        # a reader stuck on the FIFO (the bug) would wait for a writer; give it one so nothing hangs
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_model_file_over_the_size_limit_is_refused_before_it_is_read(models) -> None:
    folder, served = models
    big = folder / "big.safetensors"
    big.write_bytes(MODEL.read_bytes() + b"\0" * 4096)
    app = create_app(ServiceSettings(model_path=served, database_path=folder / "t.db", watch_interval_s=0,
                                     auth_token=TOKEN, max_model_bytes=len(MODEL.read_bytes()) + 100))
    with TestClient(app) as client:
        r = client.post("/admin/reload", json={"model_path": str(big)}, headers=AUTH)
        assert r.status_code == 422 and "at most" in r.json()["detail"][0]["msg"]


def test_reloading_the_database_path_loses_no_acknowledged_feedback(models) -> None:
    """Finding 1: opening and closing the database file in the server process dropped its SQLite
    locks, an outside opener then deleted the WAL, and acknowledged feedback vanished."""
    folder, served = models
    server = Server(folder, served)  # its database is folder/served.db, inside the model folder
    acked: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for target in (server.db, Path(str(server.db) + "-wal"), Path(str(server.db) + "-shm")):
                assert c.post("/admin/reload", json={"model_path": str(target)}, headers=AUTH).status_code == 422
            for i in range(60):
                if i == 20:  # an outside opener, as `sqlite3` or `tinydancer retrain` would be
                    code = f"import sqlite3; c = sqlite3.connect({str(server.db)!r}); c.execute('SELECT count(*) FROM outcomes').fetchone(); c.close()"
                    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
                rid = c.post("/v1/route", json=body(3, seed=i)).json()["request_id"]
                if c.post("/v1/feedback", json={"request_id": rid, "success": True}).status_code == 200:
                    acked.append(rid)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop()
    conn = sqlite3.connect(server.db)
    stored = {row[0] for row in conn.execute("SELECT request_id FROM outcomes")}
    conn.close()
    assert len(acked) == 60 and set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged outcomes lost"


# ---------------------------------------------------------------------- 7, 8: what a body may carry
@pytest.fixture()
def client(models):
    folder, served = models
    app = create_app(ServiceSettings(model_path=served, database_path=folder / "t.db", watch_interval_s=0, auth_token=TOKEN))
    with TestClient(app) as c:
        yield c


def _candidate(**overrides):
    return {"id": "a", "embedding": [1.0, 0.0], **overrides}


@pytest.mark.parametrize("candidate", [
    _candidate(access_count="5"), _candidate(access_count=5.0), _candidate(access_count=True),
    _candidate(success_rate="0.5"), _candidate(success_rate=True), _candidate(created_at=True),
    _candidate(created_at="1700000000"), _candidate(embedding=["1.0", 0.0]), _candidate(embedding=[True, 0.0]),
    _candidate(id=5),
], ids=["count '5'", "count 5.0", "count true", "rate '0.5'", "rate true", "created true", "created '1700000000'",
        "embedding '1.0'", "embedding true", "id 5"])
def test_nothing_is_coerced_into_a_number_or_a_boolean(client, candidate) -> None:
    r = client.post("/v1/route", json={"query_embedding": [1.0, 0.0], "candidates": [candidate]})
    assert r.status_code == 422, r.text


def test_feedback_success_must_be_a_boolean(client) -> None:
    rid = client.post("/v1/route", json={"query_embedding": [1.0, 0.0], "candidates": [_candidate()]}).json()["request_id"]
    for bad in ("yes", 1, "true"):
        assert client.post("/v1/feedback", json={"request_id": rid, "success": bad}).status_code == 422
    assert client.post("/v1/feedback", json={"request_id": rid, "success": True}).status_code == 200


@pytest.mark.parametrize("metadata", [
    {f"k{i}": i for i in range(65)},          # too many entries
    {"k" * 257: 1},                            # a key too long
    {"k": "v" * 1025},                         # a value too long
    {"k": {"nested": 1}},                      # not a scalar
    {"k": [1, 2]},
], ids=["65 keys", "long key", "long value", "nested", "list"])
@pytest.mark.parametrize("where", ["candidate", "request"])
def test_metadata_is_bounded(client, metadata, where) -> None:
    body = {"query_embedding": [1.0, 0.0], "candidates": [_candidate()]}
    if where == "candidate":
        body["candidates"][0]["metadata"] = metadata
    else:
        body["metadata"] = metadata
    assert client.post("/v1/route", json=body).status_code == 422


def test_the_finding_7_body_is_refused(client) -> None:
    """1,000 candidates sharing 125k metadata keys took 2.7 s of the event loop; now it is a 422."""
    meta = {f"key{i}": i for i in range(125)}
    body = {"query_embedding": [1.0, 0.0], "metadata": meta,
            "candidates": [_candidate(id=f"c{i}", metadata=meta) for i in range(1000)]}
    r = client.post("/v1/route", json=body)
    assert r.status_code == 422 and "64" in r.text
    ok = {"query_embedding": [1.0, 0.0], "metadata": {f"k{i}": i for i in range(64)},
          "candidates": [_candidate(id=f"c{i}", metadata={f"k{i}": i for i in range(64)}) for i in range(1000)]}
    assert client.post("/v1/route", json=ok).status_code == 200  # at the limits, served (off the loop: > 256 KB)


# ---------------------------------------------------------------------- 5: open by default
ROUTE = {"query_embedding": [1.0, 0.0], "candidates": [{"id": "a", "embedding": [1.0, 0.1]}]}


def _app(models, **settings):
    folder, served = models
    base = dict(model_path=served, database_path=folder / "t.db", watch_interval_s=0, auth_token=None, api_keys=())
    return create_app(ServiceSettings(**{**base, **settings}))


def test_without_credentials_only_a_loopback_service_answers(models) -> None:
    with TestClient(_app(models, host="0.0.0.0")) as c:
        assert c.get("/health").status_code == 200 and c.get("/health/ready").status_code == 200
        assert c.post("/v1/route", json=ROUTE).status_code == 403
        for path in ("/admin/config", "/info", "/metrics", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 403, path
    with TestClient(_app(models, host="0.0.0.0", insecure=True)) as c:  # the lab switch
        assert c.post("/v1/route", json=ROUTE).status_code == 200 and c.get("/admin/config").status_code == 200
    with TestClient(_app(models, host="127.0.0.1")) as c:
        assert c.post("/v1/route", json=ROUTE).status_code == 200 and c.get("/metrics").status_code == 200


def test_client_keys_guard_the_data_plane_and_the_admin_token_the_rest(models) -> None:
    keys = {"Authorization": "Bearer client-key-2"}
    with TestClient(_app(models, host="0.0.0.0", api_keys=("client-key-1", "client-key-2"), auth_token=TOKEN)) as c:
        assert c.post("/v1/route", json=ROUTE).status_code == 401
        assert c.post("/v1/route", json=ROUTE, headers={"Authorization": "Bearer nope"}).status_code == 401
        routed = c.post("/v1/route", json=ROUTE, headers=keys)
        assert routed.status_code == 200
        assert c.post("/v1/feedback", json={"request_id": routed.json()["request_id"], "success": True}).status_code == 401
        assert c.post("/v1/feedback", json={"request_id": routed.json()["request_id"], "success": True}, headers=keys).status_code == 200
        assert c.get("/admin/config", headers=keys).status_code == 401  # a client key is not the admin token
        assert c.get("/admin/config", headers=AUTH).status_code == 200
        assert c.post("/v1/route", json=ROUTE, headers=AUTH).status_code == 200  # the operator may route too
        assert c.get("/health").status_code == 200
    with TestClient(_app(models, host="0.0.0.0", api_keys=("k",))) as c:  # keys but no admin token, off loopback
        assert c.get("/admin/config", headers={"Authorization": "Bearer k"}).status_code == 403


def test_admin_requests_must_be_json_and_are_authenticated_before_their_body_is_read(models) -> None:
    with TestClient(_app(models, auth_token=TOKEN)) as c:
        # a cross-site form or text/plain post (no CORS preflight) cannot reach an admin route
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
            assert c.post("/admin/circuit-breaker/reset", content=b"{}", headers={**AUTH, **headers}).status_code == 415
        assert c.post("/admin/circuit-breaker/reset", json={}, headers=AUTH).status_code == 200
        # malformed JSON from a client without the token: 401, never a 422 describing the route
        assert c.put("/admin/config", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 401
        assert c.put("/admin/config", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}).status_code == 422


def test_serve_refuses_a_public_address_without_credentials(monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from tinydancer.cli import app as cli

    for name in ("TINY_DANCER_AUTH_TOKEN", "TINY_DANCER_API_KEYS", "TINY_DANCER_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--database-path", str(tmp_path / "x.db")])
    assert result.exit_code == 1
    assert "refusing to listen on 0.0.0.0" in result.output and "TINY_DANCER_API_KEYS" in result.output
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


def test_an_unwritable_database_folder_is_one_clear_line(tmp_path) -> None:
    from typer.testing import CliRunner

    from tinydancer.cli import app as cli

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["serve", "--database-path", str(blocker / "sub" / "t.db"), "--model-path", str(MODEL)])
    assert result.exit_code == 1 and "cannot open the decision log" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3


def test_a_body_that_stops_arriving_is_answered_408(models) -> None:
    """Half-sent bodies used to hold their connections open with no deadline."""
    import socket

    folder, served = models
    server = Server(folder, served, extra_args=["--body-timeout", "0.5"])
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"query")
            answer = sock.recv(4096)  # waits for the server's deadline; the socket timeout only guards a hang
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        server.stop()


# ---------------------------------------------------------------------- 4: steering what it learns
def test_one_outcome_per_decision_and_corrections_are_audited(models) -> None:
    folder, _served = models
    keys = {"Authorization": "Bearer k1"}
    with TestClient(_app(models, api_keys=("k1",))) as c:
        rid = c.post("/v1/route", json=ROUTE, headers=keys).json()["request_id"]
        feedback = {"request_id": rid, "success": False}
        assert c.post("/v1/feedback", json=feedback, headers=keys).json()["status"] == "recorded"
        again = c.post("/v1/feedback", json={**feedback, "success": True}, headers=keys)
        assert again.status_code == 409 and "correction" in again.json()["detail"]  # no silent flip
        fixed = c.post("/v1/feedback", json={**feedback, "success": True, "correction": True}, headers=keys)
        assert fixed.status_code == 200 and fixed.json()["status"] == "corrected"
        # only a candidate the decision returned can get feedback
        assert c.post("/v1/feedback", json={**feedback, "candidate_id": "never-routed"}, headers=keys).status_code == 404
    conn = sqlite3.connect(folder / "t.db")
    outcomes = conn.execute("SELECT success FROM outcomes WHERE request_id=?", (rid,)).fetchall()
    audit = conn.execute("SELECT old_success, new_success, corrected_by FROM outcome_corrections WHERE request_id=?", (rid,)).fetchall()
    conn.close()
    assert outcomes == [(1,)]
    assert len(audit) == 1 and audit[0][:2] == (0, 1)
    assert audit[0][2].startswith("key:") and "k1" not in audit[0][2]  # who, by fingerprint; never the key


# ---------------------------------------------------------------------- 6: a full disk
@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MB tmpfs: a disk that can really fill up (needs root, as on the project's machines)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    # unbuffered: a buffered file would flush its last block again on close, and raise there
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_disk_keeps_routing_refuses_feedback_in_json_and_says_so(small_disk, tmp_path) -> None:
    server = Server(small_disk, MODEL, extra_args=["--log-buffer-rows", "100"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            rid = c.post("/v1/route", json=body(3, seed=0)).json()["request_id"]
            assert c.post("/v1/feedback", json={"request_id": rid, "success": True}).status_code == 200
            filler = _fill(small_disk)
            routed = [c.post("/v1/route", json=body(3, seed=i)) for i in range(300)]
            assert all(r.status_code == 200 and r.headers["content-type"] == "application/json" for r in routed)
            refused = c.post("/v1/feedback", json={"request_id": routed[-1].json()["request_id"], "success": True})
            assert refused.status_code == 503 and "not recorded" in refused.json()["detail"]
            assert refused.headers.get("retry-after") == "5"
            ready = c.get("/health/ready")
            assert ready.status_code == 503 and "decision log cannot be written" in ready.json()["reason"]
            metrics = c.get("/metrics", headers=AUTH).text
            assert "tiny_dancer_storage_ok 0.0" in metrics
            pending = float(next(l for l in metrics.splitlines() if l.startswith("tiny_dancer_decision_log_pending_rows ")).split()[1])
            dropped = float(next(l for l in metrics.splitlines() if l.startswith("tiny_dancer_decision_log_dropped_rows_total ")).split()[1])
            assert pending <= 100 and dropped >= 200  # the buffer is bounded; what did not fit is counted
            filler.unlink()  # space again: the kept rows are written, and feedback is accepted
            rid = c.post("/v1/route", json=body(3, seed=999)).json()["request_id"]
            assert c.post("/v1/feedback", json={"request_id": rid, "success": True}).status_code == 200
            assert c.get("/health/ready").status_code == 200
    finally:
        server.stop()


def test_sigkill_during_mixed_load_loses_no_acknowledged_outcome(tmp_path) -> None:
    """Four clients route and send feedback; the server is killed mid-stream, not at a quiet moment."""
    server = Server(tmp_path, MODEL)
    acked: list[str] = []
    enough = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for i in range(2000):
                try:
                    rid = c.post("/v1/route", json=body(5, seed=k * 10000 + i)).json()["request_id"]
                    ok = c.post("/v1/feedback", json={"request_id": rid, "success": bool(i % 2)}).status_code == 200
                except (httpx.HTTPError, ValueError):
                    return  # the server is gone
                if ok:
                    with lock:
                        acked.append(rid)
                        if len(acked) >= 400:
                            enough.set()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        assert enough.wait(120), "the clients did not get 400 outcomes acknowledged"
        os.kill(server.proc.pid, signal.SIGKILL)  # the clients are still sending
        server.proc.wait(10)
        for t in threads:
            t.join(30)
    finally:
        server.stop()
    with lock:
        acknowledged = set(acked)
    conn = sqlite3.connect(server.db)
    stored = {row[0] for row in conn.execute("SELECT request_id FROM outcomes")}
    conn.close()
    assert len(acknowledged) >= 400 and acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged outcomes lost"
