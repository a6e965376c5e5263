"""POST /v1/systemone (LiteLLM's complexity-router classifier protocol): each request is a logged
decision whose id comes back, and tiers are cut from the live score distribution so the served
strong share applies to the traffic the classifier sees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from litellm_helpers import EMBEDDER, fit_query_router

from tinydancer.server import ServiceSettings, create_app
from tinydancer.server.storage import SQLiteStorage

TIERS = {"SIMPLE": "easy", "MEDIUM": "middling", "COMPLEX": "hard", "REASONING": "proofs"}


def body(text: str) -> dict[str, Any]:
    return {"state": text, "model": "tinydancer",
            "questions": {"tier": {"type": "choice", "instructions": "Pick a tier.", "criteria": TIERS}}}


def traffic(n: int, seed: int) -> list[str]:
    """Chat-like traffic: mostly easy questions (fruit), some hard ones."""
    rng = np.random.default_rng(seed)
    return [f"question {seed * 10_000 + i} about {rng.choice(['apples', 'bananas', 'apples', 'topology'])}"
            for i in range(n)]


@pytest.fixture()
def service(tmp_path: Path) -> Any:
    folder = tmp_path / "router"
    fit_query_router().save(folder)
    app = create_app(ServiceSettings(model_path=tmp_path / "none.safetensors", database_path=tmp_path / "s.db",
                                     query_router_path=folder, watch_interval_s=0, query_strong_share=0.1))
    app.state.service.query_router.embedder = EMBEDDER
    with TestClient(app) as client:
        yield client, tmp_path / "s.db"


def test_each_classification_is_a_logged_decision_with_its_id(service: Any) -> None:
    client, db = service
    r = client.post("/v1/systemone", json=body("question 1 about bananas"))
    assert r.status_code == 200, r.text
    request_id = r.json()["request_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and SQLiteStorage(db).count("decisions") < 1:
        time.sleep(0.05)
    storage = SQLiteStorage(db)
    assert storage.count("decisions") == 1
    assert client.post("/v1/feedback", json={"request_id": request_id, "success": True, "quality": 1.0}).status_code == 200
    assert storage.labelled("query").request_ids == [request_id]


def test_the_served_strong_share_applies_to_live_traffic(service: Any) -> None:
    """The issue: tiers were equal slices of the stored difficulty scale, so --strong-share did not
    apply and most typical traffic went to the dearest tiers."""
    client, _ = service
    for text in traffic(100, 1):  # the classifier learns what its traffic looks like
        client.post("/v1/systemone", json=body(text))
    upper = 0
    texts = traffic(200, 2)
    for text in texts:
        choice = client.post("/v1/systemone", json=body(text)).json()["answers"]["tier"]["choice"]
        upper += choice in ("COMPLEX", "REASONING")
    assert abs(upper / len(texts) - 0.1) < 0.06, upper  # a quarter of this traffic is hard: equal slices gave ~0.25
