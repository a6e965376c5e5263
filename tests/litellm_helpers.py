"""Shared pieces of the LiteLLM integration's tests: a small query router and loopback stand-ins."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable

import numpy as np

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: LiteLLM's bundled cost map

from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable  # noqa: E402
from tinydancer.llm.embeddings import HashingEmbedder  # noqa: E402

EMBEDDER = HashingEmbedder(128)
HARD_Q = "question 9999 about cohomology"
EASY_Q = "question 9999 about bananas"
MAPPING = {"openai/big-model": "strong", "openai/small-model": "weak"}


def fit_query_router() -> QueryRouter:
    """Two models: 'strong' answers everything, 'weak' only questions about fruit."""
    rng = np.random.default_rng(0)
    queries, scores = [], []
    for i in range(600):
        hard = rng.random() < 0.5
        queries.append(f"question {i} about {rng.choice(['topology', 'cohomology'] if hard else ['apples', 'bananas'])}")
        scores.append([rng.random() < 0.9, rng.random() < (0.1 if hard else 0.9)])
    table = RoutingTable(queries, ["strong", "weak"], np.array(scores, float), np.tile([10.0, 1.0], (600, 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(8,), epochs=20, memory=False), embedder=EMBEDDER)
    router.calibrate(0.5)
    return router


def deployment(model: str, url: str, group: str = "auto", cost_in: float = 1e-6, cost_out: float = 2e-6) -> dict[str, Any]:
    """One ``model_list`` entry for a stand-in at ``url``."""
    return {"model_name": group, "litellm_params": {"model": f"openai/{model}", "api_base": f"{url}/v1", "api_key": "x",
                                                    "input_cost_per_token": cost_in, "output_cost_per_token": cost_out}}


def easy_questions(n: int) -> list[str]:
    """Distinct prompts the router sends to the weak model."""
    return [f"question {9000 + i} about bananas" for i in range(n)]


def stand_in_judge(prompt: str, answer: str, model: str) -> float:
    """A deterministic judge for stand-in answers: the big model is good at everything, the small
    one only at fruit (what ``fit_query_router`` learned)."""
    if answer.startswith("[big-model]"):
        return 0.9
    return 0.9 if ("apples" in prompt or "bananas" in prompt) else 0.1


async def wait_logged(logger: Any, calls: int, timeout_s: float = 20.0) -> None:
    """Give the loop to LiteLLM's logging callbacks (it runs them as tasks after each call) until the
    logger received ``calls`` of them, or ``timeout_s`` passed (the test's assertions then say what is missing)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while logger.received < calls and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait until ``condition()`` holds (a background writer has committed), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
