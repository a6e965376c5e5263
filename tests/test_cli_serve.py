"""The CLI as a user meets it: ``serve`` started as a process, and the small traps of issue 26 #6."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from test_gateway import router_dir  # noqa: F401 (fixture)
from tinydancer.gateway.standin import free_port


def wait_ready(base: str, proc: subprocess.Popen, seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            r = httpx.get(f"{base}/health/ready")
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return httpx.get(f"{base}/health/ready")


def test_a_query_router_only_service_is_ready_without_a_candidate_model(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinydancer", "serve", "--query-router", str(router_dir),
                             "--database-path", str(tmp_path / "q.db"), "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        r = wait_ready(base, proc)
        assert r.status_code == 200, r.text  # was 503: "no model file at models/default.safetensors"
        assert r.json()["pid"] == proc.pid and r.json()["query_router"]["path"] == str(router_dir / "router.safetensors")
        routed = httpx.post(f"{base}/v1/route/query", json={"query": "question 1 about cohomology"})
        assert routed.status_code == 200 and routed.json()["model"] in ("strong", "weak")
        info = httpx.get(f"{base}/info").json()  # what this process serves: the query router, no candidate model
        assert info["serves"] == ["query_router"] and info["model"] is None and info["query_router"]["models"] == ["strong", "weak"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "starting without a model" not in err


# ---------------------------------------------------------------- issue 26 #6: small traps
from typer.testing import CliRunner  # noqa: E402

from tinydancer.cli import app  # noqa: E402

runner = CliRunner()


def test_a_missing_query_router_advises_router_train(tmp_path: Path) -> None:
    result = runner.invoke(app, ["router", "eval", str(tmp_path / "nope"), str(tmp_path / "t.jsonl")])
    assert result.exit_code == 1 and "tinydancer router train" in result.output


def test_calibrate_and_retrain_refuse_a_missing_log_and_create_nothing(router_dir: Path, tmp_path: Path,  # noqa: F811
                                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["calibrate", str(router_dir), "--database-path", "nope.db", "--strong-share", "0.3"])
    assert result.exit_code == 1 and "no decision log at nope.db" in result.output
    result = runner.invoke(app, ["retrain", "--database-path", "nope.db", "--query-router", str(router_dir)])
    assert result.exit_code == 1 and "no decision log at nope.db" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no empty nope.db, no models/registry


def test_registry_list_reads_the_folder_beside_a_sqlite_log(tmp_path: Path) -> None:
    from tinydancer.nn import FastGRNN, FastGRNNConfig
    from tinydancer.server.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry")
    entry = reg.add(FastGRNN.new(FastGRNNConfig(input_dim=4, hidden_dim=4)), {"val_accuracy": 0.5})
    result = runner.invoke(app, ["registry", "list", "--registry", str(tmp_path / "registry"), "--json"])
    assert result.exit_code == 0, result.output
    assert [v["version"] for v in json.loads(result.output)] == [entry.version]
    result = runner.invoke(app, ["registry", "list", "--registry", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no registry folder" in result.output


def test_the_gateway_refuses_an_unset_provider_key_and_a_taken_port(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TD_UNSET_KEY", raising=False)
    config = tmp_path / "gw.yaml"
    ups = [{"name": "strong", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "TD_UNSET_KEY"},
           {"name": "weak", "base_url": "http://127.0.0.1:9/v1", "model": "m"}]
    config.write_text(json.dumps({"upstreams": ups}))
    with socket.socket() as taken:  # a taken port throughout: a regression fails here instead of serving forever
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = runner.invoke(app, ["gateway", "--config", str(config), "--database-path", str(tmp_path / "g.db"),
                                     "--port", port])
        assert result.exit_code == 1 and "TD_UNSET_KEY" in result.output and "gateway on" not in result.output
        del ups[0]["api_key_env"]
        config.write_text(json.dumps({"upstreams": ups}))
        result = runner.invoke(app, ["gateway", "--config", str(config), "--database-path", str(tmp_path / "g.db"),
                                     "--port", port])
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1" in result.output
    assert "gateway on" not in result.output  # the banner is not printed for a server that never starts


def test_help_paragraphs_are_reflowed_not_cut_where_the_docstring_breaks() -> None:
    result = runner.invoke(app, ["retrain", "--help"], env={"COLUMNS": "200"})
    assert "moves the routing mix by more than --max-mix-shift, nor one" in result.output


def test_the_minilm_graph_cache_is_keyed_by_the_weights_not_their_path(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from tinydancer.llm.embeddings import MiniLMEmbedder

    here = MiniLMEmbedder(cache_dir=tmp_path)
    there = MiniLMEmbedder(cache_dir=tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(here._model_dir / "model.safetensors", copy / "model.safetensors")  # another venv's install
    there._model_dir = copy
    assert here._onnx_path() == there._onnx_path()
