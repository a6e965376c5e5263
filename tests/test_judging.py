"""Judged samples: the real gateway, the ``openai`` client, kind-aware stand-ins (weak, strong, judge).

The judge stand-in grades by the question's answer key (prompt_kinds.answer_key), so a grade of 8/9
proves the judge was sent the very answer the client got, streamed or not; 1/9 a wrong one.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import openai
import pytest

from tinydancer.errors import ValidationError
from tinydancer.gateway import create_gateway_app, load_config
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.labelling import JUDGE_INSTRUCTIONS
from tinydancer.gateway.prompt_kinds import generate
from tinydancer.gateway.standin import StandIn, running
from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.server import ServiceSettings
from tinydancer.server.storage import SQLiteStorage

EMBEDDER = HashingEmbedder(64)
KEY = "client-key-for-judging"


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prompts = generate(300, seed=11, hard_share=0.5)
    scores = np.array([[1.0, 0.0 if p.needs_strong else 1.0] for p in prompts])
    table = RoutingTable([p.text for p in prompts], ["strong", "weak"], scores, np.tile([10.0, 1.0], (len(prompts), 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(8,), epochs=10, memory=False), embedder=EMBEDDER)
    router.calibrate(0.5)
    folder = tmp_path_factory.mktemp("judge-router")
    router.save(folder)
    return folder


class Stack:
    def __init__(self, base: str, app: Any, db: Path, judge: StandIn) -> None:
        self.base, self.app, self.db, self.judge_standin = base, app, db, judge

    @property
    def worker(self) -> Any:
        return self.app.state.gateway.judge

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=KEY, max_retries=0)

    def ask(self, text: str, stream: bool) -> tuple[str, str, str]:
        """(decision id, model that answered, answer text) of one routed call."""
        messages = [{"role": "user", "content": text}]
        if not stream:
            raw = self.client().chat.completions.with_raw_response.create(model="tinydancer", messages=messages)
            return (raw.headers["x-tinydancer-decision-id"], raw.headers["x-tinydancer-model"],
                    raw.parse().choices[0].message.content)
        with self.client().chat.completions.with_streaming_response.create(model="tinydancer", messages=messages,
                                                                           stream=True) as resp:
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            return resp.headers["x-tinydancer-decision-id"], resp.headers["x-tinydancer-model"], text

    def judged(self, n: int) -> dict[str, tuple[str, float, str]]:
        """{request id: (target, quality, source)} of the judge's outcomes, once ``n`` are written."""
        deadline = time.monotonic() + 30
        while True:
            logs = SQLiteStorage(self.db).labelled("query")
            out = {r: (t, float(q), s) for r, t, q, s in zip(logs.request_ids, logs.targets, logs.quality, logs.sources)
                   if s == "judge"}
            if len(out) >= n or time.monotonic() > deadline:
                return out
            time.sleep(0.02)


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture()
def make_stack(router_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    strong, weak, judge = StandIn("big", skill="strong"), StandIn("small", skill="weak"), StandIn("grader", skill="strong")
    with running(strong.app()) as su, running(weak.app()) as wu, running(judge.app()) as ju:
        opened = []

        def make(judge_cfg: dict[str, Any], judge_prices: tuple[float, float] = (1.0, 1.0)) -> Stack:
            lines = [f"router: {router_dir}", "upstreams:",
                     f"  - {{name: strong, base_url: '{su}/v1', model: big, input_per_million: 10, output_per_million: 30}}",
                     f"  - {{name: weak, base_url: '{wu}/v1', model: small, input_per_million: 1, output_per_million: 2}}",
                     f"  - {{name: grader, base_url: '{ju}/v1', model: grader, input_per_million: {judge_prices[0]}, "
                     f"output_per_million: {judge_prices[1]}}}",
                     "judge:"] + [f"  {k}: {v}" for k, v in judge_cfg.items()]
            path = tmp_path / "gateway.yaml"
            path.write_text("\n".join(lines) + "\n")
            db = tmp_path / f"gw{len(opened)}.db"
            app = create_gateway_app(load_config(path), ServiceSettings(database_path=db, api_keys=(KEY,),
                                                                        watch_interval_s=0), embedder=EMBEDDER)
            ctx = running(app)
            base = ctx.__enter__()
            opened.append(ctx)
            return Stack(base, app, db, judge)

        yield make
        for ctx in opened:
            ctx.__exit__(None, None, None)


def test_a_seeded_sample_is_graded_and_only_sampled_answers_are_kept(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack({"upstream": "grader", "sample_share": 0.3, "seed": 7})
    stack.judge_standin.delay_s = 0.05  # grading lags the traffic, so answers wait in the queue
    prompts = generate(30, seed=5, hard_share=0.5)
    draws = random.Random(7)
    expected, held_ids = {}, set()
    for i, p in enumerate(prompts):
        rid, model, answer = stack.ask(p.text, stream=i % 2 == 1)
        if draws.random() < 0.3:  # the gateway draws once per answered routed call, in order
            expected[rid] = (model, p.needs_strong)
        # whatever is held now belongs to a sampled call
        held_ids |= {s.request_id for s in list(stack.worker.queue)}
    # a named call is not routed: never drawn, never judged
    stack.client().chat.completions.create(model="weak", messages=[{"role": "user", "content": prompts[0].text}])
    assert 4 <= len(expected) <= 16 and held_ids <= set(expected)
    judged = stack.judged(len(expected))
    wait_until(lambda: stack.worker.held == 0, "the queue to drain")
    assert set(judged) == set(expected) and stack.judge_standin.calls == len(expected)
    for rid, (model, hard) in expected.items():
        wrong = model == "weak" and hard
        assert judged[rid] == (model, pytest.approx(1 / 9 if wrong else 8 / 9), "judge")
    assert not stack.worker.queue  # graded answers are gone
    text = httpx.get(f"{stack.base}/metrics").text
    assert f"tiny_dancer_gateway_judged_total{{result=\"graded\"}} {float(len(expected))}" in text
    assert "tiny_dancer_gateway_judge_pending 0.0" in text


def test_the_judge_stops_at_the_daily_budget_and_resumes_the_next_utc_day(make_stack: Callable[..., Stack]) -> None:
    # $1,000 per million tokens: a grading call's worst case is about $0.5 (its prompt's UTF-8 bytes
    # + 64, and 16 reply tokens), its real cost about $0.07 (the stand-in counts words)
    stack = make_stack({"upstream": "grader", "sample_share": 1.0, "daily_dollars": 1.5, "max_tokens": 16, "seed": 1},
                       judge_prices=(1000.0, 1000.0))
    prompts = generate(40, seed=8, hard_share=0.5)
    for p in prompts[:20]:
        stack.ask(p.text, stream=False)
    wait_until(lambda: stack.worker.held == 0, "the queue to drain")
    worker = stack.worker
    assert worker.stopped_day is not None  # the budget, not the traffic, ended the day's grading
    graded = stack.judge_standin.calls
    assert 2 <= graded < 20 and worker.budget.spent <= 1.5
    assert len(stack.judged(graded)) == graded
    for p in prompts[20:25]:  # the rest of the day: nothing is taken, nothing is judged
        stack.ask(p.text, stream=True)
    assert stack.judge_standin.calls == graded and worker.held == 0
    day = worker.clock()
    worker.clock = lambda: day + 86400.0  # the next UTC day: a fresh budget
    for p in prompts[25:28]:
        stack.ask(p.text, stream=False)
    wait_until(lambda: stack.judge_standin.calls == graded + 3, "grading to resume")
    assert worker.stopped_day is None and worker.budget.spent <= 1.5


def test_the_rubric_file_instructs_the_judge(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    (tmp_path / "rubric.md").write_text("Grade for correctness only; style does not matter.\n")
    stack = make_stack({"upstream": "grader", "sample_share": 1.0, "rubric": "rubric.md"})  # relative to the yaml
    stack.ask("Prove that there are infinitely many primes.", stream=False)
    wait_until(lambda: stack.judge_standin.calls == 1 and stack.worker.held == 0, "the grade")
    sent = stack.judge_standin.last_body["messages"][0]["content"]
    assert sent.startswith("Grade for correctness only") and JUDGE_INSTRUCTIONS not in sent
    assert "Prove that there are infinitely many primes." in sent


def test_the_judge_config_is_checked() -> None:
    ups = [{"name": "strong", "base_url": "http://127.0.0.1:1/v1", "model": "s"}]
    with pytest.raises(ValidationError, match="judge.upstream 'nobody' is not one of the upstreams"):
        parse_config({"upstreams": ups, "judge": {"upstream": "nobody"}})
    with pytest.raises(ValidationError, match="judge.sample_share"):
        parse_config({"upstreams": ups, "judge": {"upstream": "strong", "sample_share": 1.5}})


def test_prompt_kinds_are_seeded_and_recovered_from_the_text_alone(tmp_path: Path) -> None:
    from tinydancer.gateway.labelling import load_prompts
    from tinydancer.gateway.prompt_kinds import KINDS, classify, main, needs_strong
    from tinydancer.gateway.standin import kind_aware_reply

    prompts = generate(3000, seed=4, hard_share=0.3)
    assert [p.text for p in prompts[:50]] == [p.text for p in generate(50, seed=4, hard_share=0.3)]
    assert {p.kind for p in prompts} == set(KINDS) and 0.27 < np.mean([p.needs_strong for p in prompts]) < 0.33
    assert all(classify(p.text) == p.kind for p in prompts)
    assert len({p.text for p in prompts}) > 1500  # variety, not six strings
    for p in prompts[:60]:
        right = kind_aware_reply("s", "strong", p.text)
        weak = kind_aware_reply("w", "weak", p.text)
        assert (weak == right.replace("[s] Here is a careful", "[w] Here is a careful")) == (not needs_strong(p.kind))
    main(["--n", "40", "--seed", "4", "--out", str(tmp_path / "traffic.jsonl")])  # what a walk-through labels
    assert [p.text for p in load_prompts(tmp_path / "traffic.jsonl")] == [p.text for p in prompts[:40]]
