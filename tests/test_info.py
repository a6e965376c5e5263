"""/info and /health/ready describe what this process serves (issue 26 #1): a gateway reports the
router it routes with, a query-router service its router and no candidate model, a candidate
service its model and no query router.  Each app is served by uvicorn on loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from test_gateway import EMBEDDER, config_dict, router_dir  # noqa: F401 (fixture)
from tinydancer.gateway import create_gateway_app
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.standin import running
from tinydancer.llm import QueryRouter
from tinydancer.nn import FastGRNN, FastGRNNConfig
from tinydancer.server import ServiceSettings, create_app


@pytest.fixture()
def candidate_model(tmp_path: Path) -> Path:
    """A candidate-scoring model file where the service looks by default: present, so a process
    that reports none has chosen not to serve it."""
    path = tmp_path / "models" / "default.safetensors"
    path.parent.mkdir()
    model = FastGRNN(FastGRNNConfig(input_dim=5, hidden_dim=4, output_dim=1), seed=0)
    model.extra_metadata["version"] = "default-demo-1"
    model.save(path)
    return path


def test_a_gateway_reports_the_router_it_routes_with(router_dir: Path, candidate_model: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = parse_config(config_dict(router_dir, {"strong": "http://127.0.0.1:9", "weak": "http://127.0.0.1:9"},
                                   operating_point={"strong_share": 0.4}))
    app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "gw.db", model_path=candidate_model,
                                                  watch_interval_s=0), embedder=EMBEDDER)
    router = QueryRouter.load(router_dir)
    with running(app) as base:
        info = httpx.get(f"{base}/info").json()
        ready = httpx.get(f"{base}/health/ready").json()
    qr = info["query_router"]
    assert qr["path"] == str(router_dir) and qr["models"] == ["strong", "weak"] and qr["embedder"] == EMBEDDER.id
    assert qr["version"] == str(router.info["trained_at"])
    assert qr["operating_point"]["strong_share"] == 0.4 and qr["operating_point"]["threshold"] is not None
    assert info["model"] is None and info["serves"] == ["gateway", "query_router"]  # was "default-demo-1", router null
    assert ready["ready"] and ready["query_router"] == qr and "candidate_model" not in ready and ready["pid"] == info["pid"]


def test_a_query_router_service_serves_no_candidate_model(router_dir: Path, candidate_model: Path, tmp_path: Path) -> None:  # noqa: F811
    app = create_app(ServiceSettings(database_path=tmp_path / "q.db", model_path=candidate_model, query_router_path=router_dir,
                                     require_candidate_model=False, query_strong_share=0.3, watch_interval_s=0))
    with running(app) as base:
        info = httpx.get(f"{base}/info").json()
        ready = httpx.get(f"{base}/health/ready").json()
        scored = httpx.post(f"{base}/v1/route", json={"query_embedding": [0.1] * 4, "candidates": [
            {"id": "a", "embedding": [0.1] * 4}]})
    assert info["serves"] == ["query_router"] and info["model"] is None and info["ready"]
    assert info["query_router"]["path"] == str(router_dir / "router.safetensors")
    assert info["query_router"]["operating_point"]["strong_share"] == 0.3
    assert "candidate_model" not in ready and ready["query_router"]["models"] == ["strong", "weak"]
    assert scored.status_code == 503 and "serves no candidate model" in scored.text


def test_a_candidate_service_reports_its_model_and_no_query_router(candidate_model: Path, tmp_path: Path) -> None:
    app = create_app(ServiceSettings(database_path=tmp_path / "c.db", model_path=candidate_model, watch_interval_s=0))
    with running(app) as base:
        info = httpx.get(f"{base}/info").json()
        ready = httpx.get(f"{base}/health/ready").json()
    assert info["serves"] == ["candidate_model"] and info["query_router"] is None
    assert info["model"]["version"] == "default-demo-1" and info["model"]["path"] == str(candidate_model)
    assert ready["candidate_model"] == {"version": "default-demo-1", "path": str(candidate_model)}
    assert "query_router" not in ready
