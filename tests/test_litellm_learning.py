"""Learning from LiteLLM traffic: judged samples and bounded exploration inside the real ``litellm``
SDK Router, kind-aware stand-ins (weak, strong, and a strong one as the judge), then retraining.

The SDK Router, not the proxy process, so that 120 calls, their grading and a retrain fit in a few
seconds of the suite; the proxy runs the same logger and strategy (``benchmarks/litellm_learning.py``
drives 300 calls through the real proxy and ``tinydancer retrain``)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: LiteLLM's bundled cost map
litellm = pytest.importorskip("litellm", reason="the LiteLLM integration's tests need litellm (the dev extra)")

from litellm_helpers import EMBEDDER, MAPPING, deployment, fit_query_router, wait_logged  # noqa: E402

from tinydancer.errors import ValidationError  # noqa: E402
from tinydancer.gateway.prompt_kinds import classify, generate, needs_strong  # noqa: E402
from tinydancer.gateway.standin import StandIn, running  # noqa: E402
from tinydancer.integrations.litellm import JudgeSettings, TinyDancerLogger, TinyDancerRoutingStrategy  # noqa: E402
from tinydancer.server.learning import RetrainConfig, retrain_query_router  # noqa: E402
from tinydancer.server.registry import ModelRegistry  # noqa: E402
from tinydancer.server.storage import SQLiteStorage  # noqa: E402

N_CALLS = 120
SHARE = 0.9
EXPLORE = 0.2


@pytest.fixture()
def stand_ins() -> Iterator[dict[str, Any]]:
    strong, weak, grader = StandIn("big-model", skill="strong"), StandIn("small-model", skill="weak"), \
        StandIn("grader", skill="strong")
    with running(strong.app()) as su, running(weak.app()) as wu, running(grader.app()) as gu:
        yield {"strong": strong, "weak": weak, "grader": grader, "su": su, "wu": wu, "gu": gu}


def make_router(s: dict[str, Any]) -> Any:
    """Group ``auto`` (routed), group ``plain`` (the same deployments, not routed), group ``grader`` (the judge)."""
    return litellm.Router(model_list=[deployment("big-model", s["su"], cost_in=1e-5, cost_out=3e-5),
                                      deployment("small-model", s["wu"], cost_in=1e-7, cost_out=2e-7),
                                      deployment("big-model", s["su"], group="plain"),
                                      deployment("small-model", s["wu"], group="plain"),
                                      deployment("grader", s["gu"], group="grader", cost_in=2e-6, cost_out=8e-6)],
                          num_retries=0)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_judged_and_explored_litellm_traffic_is_what_retraining_decides_on(stand_ins: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    query_router = fit_query_router()
    query_router.save(tmp_path / "router")
    router = make_router(stand_ins)
    strategy = TinyDancerRoutingStrategy(router, MAPPING, query_router=query_router, embedder=EMBEDDER, groups=["auto"],
                                         budget_s=5.0, exploration_share=EXPLORE, seed=7).install()
    judging = JudgeSettings(model="grader", sample_share=SHARE, daily_dollars=1.0, seed=3)
    logger = TinyDancerLogger(tmp_path / "td.db", strategy, judging=judging)
    litellm.callbacks = [logger]
    prompts = [p.text for p in generate(N_CALLS, seed=11, hard_share=0.5)]

    async def traffic() -> None:
        for text in prompts:
            await router.acompletion(model="auto", messages=[{"role": "user", "content": text}])
        for text in prompts[:5]:  # a group we do not route: no decision, never explored, never judged
            await router.acompletion(model="plain", messages=[{"role": "user", "content": text}])
        await wait_logged(logger, N_CALLS + 5, timeout_s=30)

    try:
        asyncio.run(traffic())
        logger.flush()
        assert logger.judging is not None
        logger.judging.drain()
        db = tmp_path / "td.db"
        counts = logger.judging.counts
        # ---- judged samples: a seeded share, each grade an outcome of its call's decision, source judge
        assert strategy.routed == N_CALLS and logger.dropped == 0
        assert 0.8 * N_CALLS <= counts["sampled"] <= N_CALLS and counts["failed"] == counts["unparsed"] == 0, counts
        judged = rows(db, "SELECT o.request_id, o.target, o.quality, o.success FROM outcomes o WHERE o.source = 'judge'")
        assert len(judged) == counts["sampled"] == counts["graded"] == stand_ins["grader"].calls
        decided = dict(rows(db, "SELECT request_id, targets FROM decisions"))
        assert len(decided) == N_CALLS  # the 5 calls of 'plain' logged nothing
        text_of = {rid: text for rid, (_e, _q, text) in strategy.decisions.items()}
        for rid, target, quality, success in judged:
            assert rid in decided
            # the judge graded the very answer the client got: right by kind and model, or wrong
            right = target == "strong" or not needs_strong(classify(text_of[rid]))
            assert quality == pytest.approx(8 / 9 if right else 1 / 9) and success == int(right)
        assert 0 < logger.judging.gate.budget.spent <= 1.0
        # ---- exploration: a logged propensity for every decision, the explored model first and served
        logged = rows(db, "SELECT d.propensity, d.explored, d.targets, c.target FROM decisions d "
                          "JOIN calls c ON c.request_id = d.request_id")
        explored = [r for r in logged if r[1] == 1]
        assert len(logged) == N_CALLS and 0.08 * N_CALLS <= len(explored) <= 0.35 * N_CALLS, len(explored)
        assert all(p == pytest.approx(EXPLORE) for p, *_ in explored)
        assert all(p == pytest.approx(1 - EXPLORE) for p, e, *_ in logged if e == 0)
        assert all(json.loads(targets)[0] == served for *_, targets, served in logged)
        assert strategy.explored == len(explored)
        # ---- retraining: enough outcomes, and a decision either way, with its evidence in the registry
        storage = SQLiteStorage(db)
        registry = ModelRegistry(tmp_path / "registry")
        report = retrain_query_router(storage, tmp_path / "router", registry,
                                      RetrainConfig(min_samples=80, offpolicy_min_rows=10))
        storage.close()
        assert report.samples >= 80 and report.reason
        versions = registry.versions()
        assert len(versions) == 1 and versions[0].promoted == report.promoted
        assert "off-policy" in report.reason, report.reason
    finally:
        litellm.callbacks = []
        logger.close()


def test_exploration_and_the_judge_are_checked(stand_ins: dict[str, Any], tmp_path: Path) -> None:
    router = make_router(stand_ins)
    with pytest.raises(ValidationError, match="exploration_share"):
        TinyDancerRoutingStrategy(router, MAPPING, service_url="http://127.0.0.1:9", exploration_share=0.1)
    with pytest.raises(ValidationError, match="exploration_share"):
        TinyDancerRoutingStrategy(router, MAPPING, service_url="http://127.0.0.1:9", exploration_share=0.5)
    with pytest.raises(ValidationError, match="sample_share"):
        TinyDancerLogger(tmp_path / "td.db", None, judging=JudgeSettings(model="grader", sample_share=1.5))


def test_the_litellm_judge_stops_at_its_daily_dollars_and_resumes_the_next_utc_day(stand_ins: dict[str, Any],
                                                                                  tmp_path: Path) -> None:
    from tinydancer.integrations.litellm_judge import JudgedSample, LiteLLMJudge

    grades: list[tuple[str, float]] = []
    now = [1_800_000_000.0]
    # a grading call holds ~$0.005 (its prompt bound and a 512-token reply at $2/$8 per million) and costs ~$0.0002:
    # $0.0058 a day grades a few, then stops
    settings = JudgeSettings(model="grader", base_url=f"{stand_ins['gu']}/v1", sample_share=1.0, daily_dollars=0.0058,
                             input_per_million=2.0, output_per_million=8.0, seed=0,
                             rubric=tmp_path / "rubric.txt")
    (tmp_path / "rubric.txt").write_text("Grade for correctness only.")
    judge = LiteLLMJudge(settings, lambda s, q: grades.append((s.decision_id, q)), clock=lambda: now[0])
    prompts = [p.text for p in generate(12, seed=5, hard_share=0.0)]
    try:
        for i, text in enumerate(prompts[:8]):
            judge.offer(JudgedSample(f"d{i}", "weak", 0, text, f"an answer to {text}", None, False))
            judge.drain()
        spent = judge.gate.budget.spent
        assert 1 <= len(grades) < 8 and 0 < spent <= 0.0058 and judge.gate.stopped_day is not None, (grades, spent)
        assert judge.counts["budget"] >= 1 and stand_ins["grader"].calls == len(grades)
        sent = stand_ins["grader"].last_body["messages"][0]["content"]
        assert sent.startswith("Grade for correctness only.") and "Rating: [[n]]" in sent  # the rubric, the form kept
        graded_today = len(grades)
        now[0] += 86_400.0  # the next UTC day: a fresh budget
        for i, text in enumerate(prompts[8:]):
            judge.offer(JudgedSample(f"e{i}", "weak", 0, text, f"an answer to {text}", None, False))
            judge.drain()
        assert len(grades) > graded_today and judge.gate.budget.spent <= 0.0058
    finally:
        judge.close()


def test_the_proxy_reads_the_judge_and_exploration_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinydancer.integrations.litellm_proxy import ProxySettings

    for key, value in {"JUDGE_MODEL": "grader", "JUDGE_BASE_URL": "http://127.0.0.1:9/v1", "JUDGE_SHARE": "0.25",
                       "JUDGE_DAILY_DOLLARS": "3", "JUDGE_SEED": "4", "EXPLORATION_SHARE": "0.1", "SEED": "9"}.items():
        monkeypatch.setenv(f"TINY_DANCER_LITELLM_{key}", value)
    s = ProxySettings.from_env()
    assert s.judging == JudgeSettings(model="grader", base_url="http://127.0.0.1:9/v1", sample_share=0.25,
                                      daily_dollars=3.0, seed=4)
    assert (s.exploration_share, s.seed) == (0.1, 9)
