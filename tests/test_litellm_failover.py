"""Never worse than LiteLLM alone: the strategy inside the real ``litellm.Router`` when a deployment
is dead, a Tiny Dancer service hangs, or a call is retried or falls back."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: before litellm is imported

litellm = pytest.importorskip("litellm", reason="the LiteLLM integration's tests need litellm (the dev extra)")

from litellm_helpers import EMBEDDER, MAPPING, deployment, easy_questions, eventually, fit_query_router, wait_logged  # noqa: E402

from tinydancer.gateway.standin import StandIn, running  # noqa: E402
from tinydancer.integrations.litellm import TinyDancerRoutingStrategy  # noqa: E402
from tinydancer.llm import QueryRouter  # noqa: E402


@pytest.fixture(scope="module")
def query_router() -> QueryRouter:
    return fit_query_router()


@pytest.fixture()
def stand_ins() -> Iterator[dict[str, Any]]:
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        yield {"strong": strong, "weak": weak, "su": su, "wu": wu}


def two_deployments(s: dict[str, Any], **router_kw: Any) -> Any:
    return litellm.Router(model_list=[deployment("big-model", s["su"]), deployment("small-model", s["wu"])], **router_kw)


async def served(router: Any, texts: list[str]) -> int:
    """How many of the calls came back with an answer (LiteLLM's retries included)."""
    ok = 0
    for text in texts:
        try:
            await router.acompletion(model="auto", messages=[{"role": "user", "content": text}])
            ok += 1
        except Exception:  # noqa: BLE001 - a failed call is what is counted
            pass
    return ok


def test_a_dead_weak_deployment_serves_as_many_calls_as_plain_litellm(stand_ins: dict[str, Any],
                                                                      query_router: QueryRouter) -> None:
    """The issue's run: plain LiteLLM served 8/8 with the weak deployment dead, the strategy 0/8."""
    stand_ins["weak"].mode = "500"
    texts = easy_questions(8)  # every one of them is routed to the (dead) weak model
    plain = two_deployments(stand_ins)
    ours = two_deployments(stand_ins)
    strategy = TinyDancerRoutingStrategy(ours, MAPPING, query_router=query_router, embedder=EMBEDDER).install()
    plain_served = asyncio.run(served(plain, texts))
    ours_served = asyncio.run(served(ours, texts))
    assert ours_served >= plain_served
    assert ours_served == len(texts)  # a retry never goes back to the deployment that just failed
    assert strategy.routed == len(texts)  # one decision per call, not one per attempt


def test_retries_and_a_fallback_are_attempts_of_one_decision(stand_ins: dict[str, Any], query_router: QueryRouter,
                                                             tmp_path: Any) -> None:
    """Group 'auto' is all dead, LiteLLM retries in it and then falls back to 'backup': one
    decision, one call row per attempt, an outcome for each model that failed."""
    from tinydancer.integrations.litellm import TinyDancerLogger
    from tinydancer.server.storage import SQLiteStorage

    stand_ins["weak"].mode = "500"
    dead, alive = stand_ins["wu"], stand_ins["su"]
    router = litellm.Router(model_list=[deployment("small-model", dead), deployment("big-model", dead),
                                        deployment("small-model", alive, group="backup"),
                                        deployment("big-model", alive, group="backup")],
                            num_retries=1, fallbacks=[{"auto": ["backup"]}])
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER,
                                         groups=["auto", "backup"]).install()
    logger = TinyDancerLogger(tmp_path / "td.db", strategy)
    litellm.callbacks = [logger]

    async def go() -> Any:
        r = await router.acompletion(model="auto", messages=[{"role": "user", "content": "question 9000 about bananas"}])
        await wait_logged(logger, 3)
        return r

    try:
        response = asyncio.run(go())
        logger.flush()
    finally:
        litellm.callbacks = []
        logger.close()
    assert response.choices[0].message.content.startswith("[big-model]")  # the alive stand-in answers as big-model
    assert strategy.routed == 1 and strategy.fallbacks == 0
    storage = SQLiteStorage(tmp_path / "td.db")
    assert storage.count("decisions") == 1
    calls = storage.calls()
    assert [(c["attempt"], c["target"], c["status"]) for c in calls] == [(0, "weak", "failed"), (1, "strong", "failed"),
                                                                         (2, "weak", "ok")]
    logs = storage.labelled("query")
    assert sorted(logs.targets) == ["strong", "weak"] and logs.labels.tolist() == [0.0, 0.0]
    assert response._hidden_params["tinydancer_decision_id"] == calls[0]["request_id"]


def test_only_the_named_groups_or_groups_with_a_choice_are_routed(stand_ins: dict[str, Any],
                                                                  query_router: QueryRouter) -> None:
    model_list = [deployment("big-model", stand_ins["su"]), deployment("small-model", stand_ins["wu"]),
                  deployment("big-model", stand_ins["su"], group="solo")]
    router = litellm.Router(model_list=model_list)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER).install()

    async def ask(group: str) -> None:
        await router.acompletion(model=group, messages=[{"role": "user", "content": "question 9000 about bananas"}])

    asyncio.run(ask("solo"))  # one deployment: no choice to make, LiteLLM's alone
    assert strategy.routed == 0
    asyncio.run(ask("auto"))
    assert strategy.routed == 1
    named = litellm.Router(model_list=model_list)
    only_other = TinyDancerRoutingStrategy(named, MAPPING, query_router=query_router, embedder=EMBEDDER,
                                           groups=["other"]).install()
    asyncio.run(named.acompletion(model="auto", messages=[{"role": "user", "content": "question 9000 about bananas"}]))
    assert only_other.routed == 0 and only_other.fallbacks == 0


def hanging_service() -> Any:
    """A Tiny Dancer service stand-in that never answers /v1/route/query (until the client leaves)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def hang(request: Request) -> Response:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return Response(status_code=499)

    return Starlette(routes=[Route("/v1/route/query", hang, methods=["POST"])])


def test_a_hanging_service_costs_a_call_at_most_the_budget_then_the_breaker_opens(
        stand_ins: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """The issue measured 2.3 s added to every call and a blank warning ("could not route 'auto' ()")."""
    with running(hanging_service()) as service:
        router = two_deployments(stand_ins)
        strategy = TinyDancerRoutingStrategy(router, MAPPING, service_url=service, budget_s=0.2,
                                             breaker_threshold=3).install()

        async def timed_calls(n: int) -> list[float]:
            out = []
            for text in easy_questions(n):
                started = time.perf_counter()
                r = await router.acompletion(model="auto", messages=[{"role": "user", "content": text}])
                assert r.choices[0].message.content  # LiteLLM's own choice answered
                out.append(time.perf_counter() - started)
            return out

        with caplog.at_level(logging.WARNING, logger="tinydancer.litellm"):
            durations = asyncio.run(timed_calls(5))
    assert max(durations) < 2.0, durations  # the service hangs for ever: each call waited the budget at most
    assert strategy.fallback_causes == {"budget": 3, "breaker_open": 2} and strategy.routed == 0
    assert strategy.stats()["breaker"]["state"] == "open"
    messages = [r.getMessage() for r in caplog.records]
    assert any("did not answer within the 200 ms budget" in m for m in messages), messages
    assert any("circuit" in m or "failed 3 times in a row" in m for m in messages), messages
    from tinydancer.integrations.litellm import _fallback_counter

    assert _fallback_counter().labels("budget")._value.get() >= 3  # the Prometheus counter


def test_the_budget_counts_from_the_calls_start_and_leaves_room_for_the_wake_up() -> None:
    """The hanging service cost +51.5 ms at a 50 ms budget: the health check before the wait and the
    event loop's late wake-up (epoll sleeps whole milliseconds) came on top.  The wait is now what is
    left of the budget since the call started, less the wake-up slack."""
    from tinydancer.integrations.litellm_routing import WAKE_UP_SLACK_S, time_left

    started = 100.0
    deadline = started + 0.05
    assert time_left(deadline, started + 0.004) == pytest.approx(0.05 - 0.004 - WAKE_UP_SLACK_S)
    assert time_left(deadline, started + 0.0495) < 0  # less than the wake-up slack left: do not start waiting
    assert 0 < WAKE_UP_SLACK_S <= 0.002


def test_a_budget_spent_before_asking_leaves_the_service_unasked(stand_ins: dict[str, Any]) -> None:
    asked = []

    async def hang(request: Any) -> Any:
        asked.append(1)
        while (await request.receive())["type"] != "http.disconnect":
            pass

    from starlette.applications import Starlette
    from starlette.routing import Route

    with running(Starlette(routes=[Route("/v1/route/query", hang, methods=["POST"])])) as service:
        router = two_deployments(stand_ins)
        # 0.1 ms: less than the event loop's wake-up slack, so no call can have time left to ask
        strategy = TinyDancerRoutingStrategy(router, MAPPING, service_url=service, budget_s=1e-4).install()

        async def calls() -> None:
            for text in easy_questions(3):
                r = await router.acompletion(model="auto", messages=[{"role": "user", "content": text}])
                assert r.choices[0].message.content  # LiteLLM's own choice answered

        asyncio.run(calls())
    assert asked == [] and strategy.fallback_causes == {"budget": 3}
    assert strategy.stats()["breaker"]["state"] == "closed"  # not the service's fault: no failure counted


def test_a_slow_local_router_is_cut_off_at_its_budget(stand_ins: dict[str, Any], query_router: QueryRouter) -> None:
    from tinydancer.llm.embeddings import HashingEmbedder

    class SlowEmbedder(HashingEmbedder):
        """The test embedder, 2 s late (a stuck model file, a starved CPU)."""

        def embed(self, texts: Any) -> Any:
            time.sleep(2.0)
            return super().embed(texts)

    router = two_deployments(stand_ins)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=SlowEmbedder(128),
                                         budget_s=0.1).install()

    async def one() -> float:
        started = time.perf_counter()
        await router.acompletion(model="auto", messages=[{"role": "user", "content": "question 9000 about bananas"}])
        return time.perf_counter() - started

    try:
        assert asyncio.run(one()) < 1.5
        assert strategy.fallback_causes == {"budget": 1}
    finally:
        strategy.router.embedder = EMBEDDER  # the fixture's router is shared by the module


def test_with_a_service_a_retried_call_is_one_decision_and_its_failure_is_feedback(
        stand_ins: dict[str, Any], query_router: QueryRouter, tmp_path: Any) -> None:
    """The issue: in service mode each failed call logged 3 decisions and 1 outcome."""
    from tinydancer.integrations.litellm import TinyDancerLogger
    from tinydancer.server import ServiceSettings, create_app
    from tinydancer.server.storage import SQLiteStorage

    folder = tmp_path / "router"
    query_router.save(folder)
    db = tmp_path / "service.db"
    app = create_app(ServiceSettings(model_path=tmp_path / "none.safetensors", database_path=db,
                                     query_router_path=folder, watch_interval_s=0))
    app.state.service.query_router.embedder = EMBEDDER
    stand_ins["weak"].mode = "500"
    with running(app) as base:
        router = two_deployments(stand_ins)
        strategy = TinyDancerRoutingStrategy(router, MAPPING, service_url=base, budget_s=5.0).install()
        logger = TinyDancerLogger(tmp_path / "local.db", strategy)
        litellm.callbacks = [logger]

        async def go() -> Any:
            r = await router.acompletion(model="auto", messages=[{"role": "user", "content": "question 9000 about bananas"}])
            await wait_logged(logger, 2)
            return r

        try:
            response = asyncio.run(go())
            logger.flush()
        finally:
            litellm.callbacks = []
            logger.close()
        storage = SQLiteStorage(db)
        eventually(lambda: storage.count("decisions") == 1)  # the service's log writer commits in the background
        assert storage.count("decisions") == 1
        logs = storage.labelled("query")
    assert response.choices[0].message.content.startswith("[big-model]")
    assert strategy.routed == 1
    assert logs.targets == ["weak"] and logs.labels.tolist() == [0.0]
    assert logs.request_ids == [response._hidden_params["tinydancer_decision_id"]]


def test_judged_successes_write_outcomes_and_a_broken_stream_is_a_failed_stream(
        stand_ins: dict[str, Any], query_router: QueryRouter, tmp_path: Any) -> None:
    from tinydancer.integrations.litellm import TinyDancerLogger
    from tinydancer.server.storage import SQLiteStorage

    graded: list[tuple[str, str, str]] = []

    def judge(prompt: str, answer: str, model: str) -> float:
        graded.append((prompt, answer, model))
        return 0.75

    router = two_deployments(stand_ins, num_retries=0)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER).install()
    logger = TinyDancerLogger(tmp_path / "td.db", strategy, judge=judge, judge_rate=1.0)
    litellm.callbacks = [logger]

    async def go() -> list[str]:
        ids = []
        for text in ("question 9000 about bananas", "question 9001 about cohomology"):
            r = await router.acompletion(model="auto", messages=[{"role": "user", "content": text}])
            ids.append(r._hidden_params["tinydancer_decision_id"])
        stand_ins["weak"].mode = "break"  # the stream breaks after its first chunks
        with pytest.raises(Exception):
            stream = await router.acompletion(model="auto", stream=True,
                                              messages=[{"role": "user", "content": "question 9002 about bananas"}])
            async for _ in stream:
                pass
        await wait_logged(logger, 3)
        return ids

    try:
        ids = asyncio.run(go())
        logger.flush()
    finally:
        litellm.callbacks = []
        logger.close()
    storage = SQLiteStorage(tmp_path / "td.db")
    logs = storage.labelled("query")
    assert logs.request_ids[:2] == ids and logs.quality[:2].tolist() == [0.75, 0.75]  # the judge's grade
    assert [g[2] for g in graded] == ["weak", "strong"] and graded[0][1].startswith("[small-model]")
    broken = storage.calls()[-1]
    assert (broken["target"], broken["status"], broken["stream"]) == ("weak", "failed", 1)


def test_a_tag_the_strategy_did_not_issue_is_ignored(stand_ins: dict[str, Any], query_router: QueryRouter) -> None:
    """A proxy client controls request metadata: a forged tag must neither steer nor be logged."""
    router = two_deployments(stand_ins)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER).install()
    forged = {"tinydancer": {"decision_id": "forged", "ranking": ["weak"], "tried": []}}

    async def go() -> Any:
        return await router.acompletion(model="auto", metadata=forged,
                                        messages=[{"role": "user", "content": "question 9999 about cohomology"}])

    r = asyncio.run(go())
    assert r.choices[0].message.content.startswith("[big-model]")  # our decision, not the forged ranking
    assert strategy.routed == 1 and r._hidden_params.get("tinydancer_decision_id") != "forged"


def test_the_proxy_handler_says_what_is_missing_and_leaves_litellm_routing(stand_ins: dict[str, Any],
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    from tinydancer.integrations.litellm_proxy import ProxySettings, TinyDancerProxyHandler

    router = two_deployments(stand_ins)  # no model_info.tinydancer_model on any deployment
    handler = TinyDancerProxyHandler()
    settings = ProxySettings(router=None, service_url=None, service_key=None, groups=("auto",), database=":memory:",
                             strong_share=None, cost_weight=None, quality_bar=None, budget_s=None, deployments={})
    with caplog.at_level(logging.ERROR, logger="tinydancer.litellm"):
        assert handler.install(router, settings) is None
    assert "tinydancer_model" in (handler.problem or "") and any("not routing" in r.getMessage() for r in caplog.records)
    r = asyncio.run(router.acompletion(model="auto", messages=[{"role": "user", "content": "hi"}]))
    assert r.choices[0].message.content  # LiteLLM's own routing serves


def test_an_embedder_that_fails_leaves_the_call_to_litellm(stand_ins: dict[str, Any], query_router: QueryRouter) -> None:
    from tinydancer.llm.embeddings import HashingEmbedder

    class WrongSize(HashingEmbedder):
        """Claims the router's embedder id, returns vectors of another size (a swapped model file)."""

        def embed(self, texts: Any) -> Any:
            return HashingEmbedder(64).embed(texts)

    router = two_deployments(stand_ins)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=WrongSize(128),
                                         budget_s=5.0).install(warm=False)
    try:
        r = asyncio.run(router.acompletion(model="auto",
                                           messages=[{"role": "user", "content": "question 9000 about bananas"}]))
    finally:
        strategy.router.embedder = EMBEDDER  # the fixture's router is shared by the module
    assert r.choices[0].message.content and strategy.fallback_causes == {"router_error": 1}
    assert strategy.routed == 0


def test_the_synchronous_path_also_moves_away_from_a_dead_deployment(stand_ins: dict[str, Any],
                                                                     query_router: QueryRouter) -> None:
    """``Router.completion`` (sync) goes through the strategy's get_available_deployment."""
    stand_ins["weak"].mode = "500"
    router = two_deployments(stand_ins)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER).install()
    answers = [router.completion(model="auto", messages=[{"role": "user", "content": t}]).choices[0].message.content
               for t in easy_questions(4)]
    assert all(a.startswith("[big-model]") for a in answers) and strategy.routed == 4


def test_a_service_strategy_survives_one_event_loop_per_call(stand_ins: dict[str, Any], query_router: QueryRouter,
                                                             tmp_path: Any) -> None:
    """Scripts call ``asyncio.run`` per request: a pool left on a finished loop must not count as
    the service failing (that would open the breaker on a healthy service)."""
    from tinydancer.server import ServiceSettings, create_app

    folder = tmp_path / "router"
    query_router.save(folder)
    app = create_app(ServiceSettings(model_path=tmp_path / "none.safetensors", database_path=tmp_path / "s.db",
                                     query_router_path=folder, watch_interval_s=0))
    app.state.service.query_router.embedder = EMBEDDER
    with running(app) as base:
        router = two_deployments(stand_ins)
        strategy = TinyDancerRoutingStrategy(router, MAPPING, service_url=base, budget_s=5.0).install()
        for text in easy_questions(3):
            asyncio.run(router.acompletion(model="auto", messages=[{"role": "user", "content": text}]))
    assert strategy.routed == 3 and strategy.fallbacks == 0, strategy.stats()
