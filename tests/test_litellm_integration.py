"""Tiny Dancer inside the real ``litellm`` package: a Router with our strategy, stand-ins on loopback."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: LiteLLM's bundled cost map
litellm = pytest.importorskip("litellm", reason="the LiteLLM integration's tests need litellm (the dev extra)")

from litellm_helpers import EASY_Q, EMBEDDER, HARD_Q, MAPPING, fit_query_router, wait_logged  # noqa: E402

from tinydancer.errors import ValidationError  # noqa: E402
from tinydancer.gateway.standin import StandIn, running  # noqa: E402
from tinydancer.integrations.litellm import TinyDancerLogger, TinyDancerRoutingStrategy  # noqa: E402
from tinydancer.llm import QueryRouter  # noqa: E402
from tinydancer.server.storage import SQLiteStorage  # noqa: E402


@pytest.fixture(scope="module")
def query_router() -> QueryRouter:
    return fit_query_router()


@pytest.fixture()
def stand_ins() -> Iterator[dict[str, Any]]:
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        yield {"strong": strong, "weak": weak, "su": su, "wu": wu}


def make_router(s: dict[str, Any]) -> Any:
    def deployment(model: str, url: str, cost_in: float, cost_out: float) -> dict[str, Any]:
        return {"model_name": "auto", "litellm_params": {"model": f"openai/{model}", "api_base": f"{url}/v1", "api_key": "x",
                                                         "input_cost_per_token": cost_in, "output_cost_per_token": cost_out}}

    return litellm.Router(model_list=[deployment("big-model", s["su"], 1e-5, 3e-5),
                                      deployment("small-model", s["wu"], 1e-7, 2e-7)], num_retries=0)


def ask(router: Any, text: str) -> str:
    async def go() -> str:
        r = await router.acompletion(model="auto", messages=[{"role": "user", "content": text}])
        return r.choices[0].message.content

    return asyncio.run(go())


def test_calls_land_on_the_deployment_our_router_chose_and_outcomes_reach_storage(
        stand_ins: dict[str, Any], query_router: QueryRouter, tmp_path: Path) -> None:
    router = make_router(stand_ins)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER).install()
    logger = TinyDancerLogger(tmp_path / "td.db", strategy)
    litellm.callbacks = [logger]

    async def traffic() -> list[str]:
        answers = []
        for text in (HARD_Q, EASY_Q):
            r = await router.acompletion(model="auto", messages=[{"role": "user", "content": text}])
            answers.append(r.choices[0].message.content)
        stand_ins["strong"].mode = "500"
        with pytest.raises(litellm.exceptions.InternalServerError):
            await router.acompletion(model="auto", messages=[{"role": "user", "content": HARD_Q}])
        # LiteLLM runs its logging callbacks as tasks after each call: give them the loop until all three arrived
        await wait_logged(logger, 3)
        return answers

    try:
        answers = asyncio.run(traffic())
        assert answers[0].startswith("[big-model]") and answers[1].startswith("[small-model]")
        assert strategy.routed == 3 and strategy.fallbacks == 0
        logger.flush()
        storage = SQLiteStorage(tmp_path / "td.db")
        calls = storage.calls()
        assert [(c["target"], c["status"]) for c in calls] == [("strong", "ok"), ("weak", "ok"), ("strong", "failed")]
        assert calls[0]["prompt_tokens"] == 4
        assert calls[0]["cost"] == pytest.approx(4 * 1e-5 + calls[0]["completion_tokens"] * 3e-5)  # LiteLLM's own cost
        logs = storage.labelled("query")  # the failure is an outcome, with the embedding retraining needs
        assert logs.targets == ["strong"] and logs.labels.tolist() == [0.0] and logs.inputs.shape == (1, 128)
        assert logger.dropped == 0
    finally:
        litellm.callbacks = []
        logger.close()


def test_an_unavailable_tiny_dancer_falls_back_to_litellms_choice(stand_ins: dict[str, Any]) -> None:
    router = make_router(stand_ins)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, service_url="http://127.0.0.1:9", timeout_s=0.5).install()
    answer = ask(router, HARD_Q)
    assert answer.startswith("[big-model]") or answer.startswith("[small-model]")
    assert strategy.fallbacks == 1 and strategy.routed == 0


def test_a_deployment_mapped_to_an_unknown_model_is_refused(stand_ins: dict[str, Any], query_router: QueryRouter) -> None:
    with pytest.raises(ValidationError, match="does not route"):
        TinyDancerRoutingStrategy(make_router(stand_ins), {"openai/big-model": "gpt-5"}, query_router=query_router)


def test_the_operating_point_moves_the_choice(stand_ins: dict[str, Any], query_router: QueryRouter) -> None:
    router = make_router(stand_ins)
    TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER, strong_share=1.0).install()
    assert ask(router, EASY_Q).startswith("[big-model]")


def test_litellms_own_classifier_client_reads_our_tiers(query_router: QueryRouter, tmp_path: Path) -> None:
    """POST /v1/systemone, exercised by LiteLLM's HttpJevClassifierClient and validated by its own models."""
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler
    from litellm.router_strategy.complexity_router.jev_classifier import HttpJevClassifierClient, build_jev_request

    from tinydancer.server import ServiceSettings, create_app

    folder = tmp_path / "router"
    query_router.save(folder)
    settings = ServiceSettings(model_path=tmp_path / "none.safetensors", database_path=tmp_path / "s.db",
                               query_router_path=folder, watch_interval_s=0)
    app = create_app(settings)
    app.state.service.query_router.embedder = EMBEDDER
    tiers = {"SIMPLE": "easy things", "MEDIUM": "middling", "COMPLEX": "hard things", "REASONING": "proofs"}
    with running(app) as base:
        async def classify(text: str) -> Any:
            client = HttpJevClassifierClient(api_key=None, api_base=base, http_client=AsyncHTTPHandler())
            request = build_jev_request(text, "Be brief.", "tinydancer", "Pick the tier this request needs.", tiers)
            return await client.evaluate(request, timeout_s=10)

        hard, easy = asyncio.run(classify(HARD_Q)), asyncio.run(classify(EASY_Q))
    order = list(tiers)
    for verdict in (hard, easy):
        answer = verdict.answers["tier"]
        assert answer.choice in tiers and sum(answer.probabilities.values()) == pytest.approx(1.0)
        assert answer.confidence == pytest.approx(max(answer.probabilities.values()))
    assert order.index(hard.answers["tier"].choice) > order.index(easy.answers["tier"].choice)


def test_litellms_complexity_router_routes_with_our_classifier(stand_ins: dict[str, Any], query_router: QueryRouter,
                                                               tmp_path: Path) -> None:
    """The configuration a LiteLLM proxy would load (classifier_type: oss_classifier), on litellm.Router itself."""
    from tinydancer.server import ServiceSettings, create_app

    folder = tmp_path / "router"
    query_router.save(folder)
    settings = ServiceSettings(model_path=tmp_path / "none.safetensors", database_path=tmp_path / "s.db",
                               query_router_path=folder, watch_interval_s=0, api_keys=("classifier-key",))
    app = create_app(settings)
    app.state.service.query_router.embedder = EMBEDDER
    with running(app) as base:
        router = litellm.Router(model_list=[
            {"model_name": "big", "litellm_params": {"model": "openai/big-model", "api_base": f"{stand_ins['su']}/v1", "api_key": "x"}},
            {"model_name": "small", "litellm_params": {"model": "openai/small-model", "api_base": f"{stand_ins['wu']}/v1", "api_key": "x"}},
            {"model_name": "smart", "litellm_params": {"model": "auto_router/complexity_router", "complexity_router_config": {
                "classifier_type": "oss_classifier",
                "opensource_classifier_config": {"api_base": base, "api_key": "classifier-key", "model": "tinydancer"},
                "tiers": {"SIMPLE": "small", "MEDIUM": "small", "COMPLEX": "big", "REASONING": "big"}}}}], num_retries=0)

        async def go(text: str) -> str:
            r = await router.acompletion(model="smart", messages=[{"role": "user", "content": text}])
            return r.choices[0].message.content

        hard, easy = asyncio.run(go(HARD_Q)), asyncio.run(go(EASY_Q))
    assert hard.startswith("[big-model]") and easy.startswith("[small-model]"), (hard, easy)
    assert stand_ins["strong"].calls == 1 and stand_ins["weak"].calls == 1


def test_with_a_service_the_decision_is_the_services_and_a_failure_reaches_its_feedback(
        stand_ins: dict[str, Any], query_router: QueryRouter, tmp_path: Path) -> None:
    from tinydancer.server import ServiceSettings, create_app

    folder = tmp_path / "router"
    query_router.save(folder)
    db = tmp_path / "service.db"
    app = create_app(ServiceSettings(model_path=tmp_path / "none.safetensors", database_path=db,
                                     query_router_path=folder, watch_interval_s=0))
    app.state.service.query_router.embedder = EMBEDDER
    with running(app) as base:
        router = make_router(stand_ins)
        strategy = TinyDancerRoutingStrategy(router, MAPPING, service_url=base).install()
        logger = TinyDancerLogger(tmp_path / "local.db", strategy)
        litellm.callbacks = [logger]
        stand_ins["strong"].mode = "500"

        async def traffic() -> None:
            with pytest.raises(litellm.exceptions.InternalServerError):
                await router.acompletion(model="auto", messages=[{"role": "user", "content": HARD_Q}])
            await wait_logged(logger, 1)

        try:
            asyncio.run(traffic())
            logger.flush()
        finally:
            litellm.callbacks = []
            logger.close()
    assert strategy.routed == 1 and strategy.fallbacks == 0
    logs = SQLiteStorage(db).labelled("query")  # in the service's log: its decision, our failure
    assert logs.targets == ["strong"] and logs.labels.tolist() == [0.0]
