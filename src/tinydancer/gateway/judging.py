"""Judged samples: the gateway asks a judge upstream to grade a share of the answers it served.

Feedback from users is rare and arrives only for the model the router picked; a judge that grades
a sample of answered calls gives the learning loop outcomes without a person.  ``judge:`` in
``gateway.yaml`` turns it on (see :class:`~tinydancer.gateway.config.JudgeConfig`):

- **Sampling.** Each answered *routed* call is drawn once from a seeded generator and taken with
  probability ``sample_share`` (named-model calls are not: they were not routed, so retraining
  cannot learn from them).  A streamed call is drawn when its first chunk arrives, and its answer
  is gathered from the relayed events only if it was drawn.
- **Retention.** The question (the last user turn the router read) and the answer of a sampled
  call are held in memory, in a queue of at most ``max_pending`` samples, until they are graded;
  then they are dropped.  Nothing of an unsampled call is kept, and nothing is written to disk,
  whatever ``log_prompts`` says.  A sample that finds the queue full is not taken (counted as
  ``queue_full``): the worker never slows a call down and memory stays bounded.
- **Grading.** The request is ``tinydancer label``'s rating form (:func:`~tinydancer.gateway.
  labelling.judge_prompt`), with the rubric file's instructions when one is given; the reply is read
  by :func:`~tinydancer.gateway.labelling.parse_rating`.  A rating becomes an outcome of the model
  that answered: quality = the rating in [0, 1], success = quality ≥ 0.5, source ``judge``.  A reply
  without a rating, or a failed call, writes nothing.
- **Money.** Before each grading call its worst case (every prompt token at ``prompt_token_bound``,
  a ``max_tokens`` reply) is reserved from the day's ``daily_dollars`` (labelling's :class:`Budget`),
  and its real cost (usage × the judge's prices; the worst case when usage is missing) settles it,
  so the day's spending never passes the budget.  The first call that does not fit stops grading
  for the rest of the UTC day: the samples waiting are dropped, and no new ones are taken until the
  day changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from .config import JudgeConfig
from ..server.grading import Budget, JudgeGate, judge_prompt, load_rubric, parse_rating, prompt_token_bound
from .sse import ImpossibleUsage, usage_of
from .upstream import Upstream, UpstreamFailure

__all__ = ["AnswerGather", "JudgeWorker", "Sample"]

log = logging.getLogger("tinydancer.gateway.judge")

#: the longest answer kept for grading (characters); a longer one is graded on its start
MAX_ANSWER_CHARS = 32_000


@dataclass
class Sample:
    """One answered call waiting for its grade (held in memory only until then)."""

    request_id: str
    target: str
    question: str
    answer: str
    served_cost: float | None


class AnswerGather:
    """The text of a streamed answer, from the whole SSE events the gateway relays (bounded)."""

    def __init__(self, limit: int = MAX_ANSWER_CHARS) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def feed(self, events: bytes) -> None:
        if not events or self.size >= self.limit:
            return
        for line in events.split(b"\n"):
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            try:
                payload = json.loads(line[5:])
                piece = payload["choices"][0]["delta"].get("content")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                continue
            if isinstance(piece, str) and piece:
                self.parts.append(piece[: self.limit - self.size])
                self.size += len(self.parts[-1])

    @property
    def text(self) -> str:
        return "".join(self.parts)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sampled = Counter("tiny_dancer_gateway_judge_sampled", "Answered routed calls taken for grading", registry=r)
        self.judged = Counter("tiny_dancer_gateway_judged", "Sampled calls by what grading gave: graded (an outcome "
                              "written), unparsed (no rating in the reply), failed (the judge call failed)",
                              ["result"], registry=r)
        self.skipped = Counter("tiny_dancer_gateway_judge_skipped", "Samples not graded: queue_full (not taken), "
                               "budget (the day's dollars were spent)", ["reason"], registry=r)
        self.dollars = Counter("tiny_dancer_gateway_judge_dollars", "Dollars the judge spent (usage × its prices)",
                               registry=r)
        self.today = Gauge("tiny_dancer_gateway_judge_dollars_today", "Dollars the judge spent this UTC day", registry=r)
        self.pending = Gauge("tiny_dancer_gateway_judge_pending", "Answers held in memory waiting for grading", registry=r)


class JudgeWorker:
    """Samples answered calls, grades them in the background, writes the grades as outcomes."""

    def __init__(self, config: JudgeConfig, upstream: Upstream, submit: Callable[..., None],
                 registry: CollectorRegistry, clock: Callable[[], float] = time.time, concurrency: int = 4) -> None:
        self.config = config
        self.upstream = upstream
        #: the log writer's submit (decisions, calls, outcomes, prompts): grades join the group commit
        self.submit = submit
        self.rubric = None if config.rubric is None else load_rubric(config.rubric)
        #: the seeded draw and the UTC day's dollars (shared with the LiteLLM logger's judge)
        self.gate = JudgeGate(config.sample_share, config.daily_dollars, config.seed, clock)
        self.metrics = _Metrics(registry)
        self.queue: deque[Sample] = deque()
        self.concurrency = concurrency
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.in_flight = 0

    # ------------------------------------------------------------------ sampling
    @property
    def clock(self) -> Callable[[], float]:
        return self.gate.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.gate.clock = clock

    @property
    def budget(self) -> Budget:
        return self.gate.budget

    @property
    def stopped_day(self) -> int | None:
        return self.gate.stopped_day

    def _roll_day(self) -> None:
        if self.gate.roll_day():
            self.metrics.today.set(0.0)

    def draw(self) -> bool:
        """Whether to take this answered routed call (one seeded draw per call, even on a day whose
        budget is spent, so a replay of the same traffic draws the same way)."""
        self._roll_day()
        drawn = self.gate.draw()
        if drawn == "budget":
            self.metrics.skipped.labels("budget").inc()
        return drawn == "take"

    def gatherer(self, routed: bool) -> AnswerGather | None:
        """For a stream: a gatherer of its answer if the call is sampled, else None (nothing kept)."""
        return AnswerGather() if routed and self.draw() else None

    def offer(self, request_id: str, target: str, question: str, answer: Any, served_cost: float | None) -> None:
        """A whole answer (a chat completion object) of a routed call: drawn, and queued if taken."""
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return
        if isinstance(text, str) and text.strip() and self.draw():
            self.enqueue(request_id, target, question, text, served_cost)

    def enqueue(self, request_id: str, target: str, question: str, answer: str, served_cost: float | None) -> None:
        """Hold a sampled answer until graded; dropped at once when the queue is full."""
        if not answer.strip():
            return
        if len(self.queue) >= self.config.max_pending:
            self.metrics.skipped.labels("queue_full").inc()
            return
        self.metrics.sampled.inc()
        self.queue.append(Sample(request_id, target, question, answer[:MAX_ANSWER_CHARS], served_cost))
        self.metrics.pending.set(len(self.queue))
        self._start()
        assert self._wake is not None
        self._wake.set()

    @property
    def held(self) -> int:
        """Answers held in memory now: waiting in the queue or being graded."""
        return len(self.queue) + self.in_flight

    # ------------------------------------------------------------------ grading
    def _start(self) -> None:
        if self._tasks:
            return
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(), name=f"judge-{i}") for i in range(self.concurrency)]

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            sample = self.queue.popleft()
            self.in_flight += 1
            try:
                await self.grade(sample)
            except Exception:  # a bug of ours must not stop the worker
                log.exception("grading %s failed", sample.request_id)
            finally:
                self.in_flight -= 1
                self.metrics.pending.set(len(self.queue) + self.in_flight)

    def _stop_for_today(self) -> None:
        dropped = len(self.queue)
        self.queue.clear()
        self.metrics.skipped.labels("budget").inc(dropped + 1)
        log.warning("judge: the day's budget of $%g is spent ($%.4f); grading resumes on the next UTC day",
                    self.config.daily_dollars, self.budget.spent)

    async def grade(self, sample: Sample) -> float | None:
        """Grade one sample within the day's budget; write the grade as an outcome; return it."""
        self._roll_day()
        if self.stopped_day is not None:
            self.metrics.skipped.labels("budget").inc()
            return None
        judge = self.upstream.config
        content = judge_prompt(sample.question, sample.answer, self.rubric)
        worst = judge.cost(prompt_token_bound(content), self.config.max_tokens)
        if not self.gate.reserve(worst):
            self._stop_for_today()
            return None
        charge = worst
        try:
            body = json.dumps({"model": judge.model, "messages": [{"role": "user", "content": content}],
                               "max_tokens": self.config.max_tokens, "temperature": 0}).encode()
            try:
                _resp, _payload, reply = await self.upstream.answer(body)
            except UpstreamFailure as exc:
                if exc.kind not in ("timeout", "broken"):
                    charge = 0.0  # refused or unreachable: nothing was done, nothing billed
                self.metrics.judged.labels("failed").inc()
                log.info("judge: grading %s failed: %s", sample.request_id, exc)
                return None
            charge = self._cost(reply, content, worst)
            text = reply["choices"][0].get("message", {}).get("content") if reply.get("choices") else None
            score = parse_rating(text) if isinstance(text, str) else None
            if score is None:
                self.metrics.judged.labels("unparsed").inc()
                return None
            self.submit([], [], [(sample.request_id, sample.target, 0, int(score >= 0.5), score, sample.served_cost,
                                  time.time(), "judge")], [])
            self.metrics.judged.labels("graded").inc()
            return score
        finally:
            self.gate.settle(worst, charge)
            self.metrics.dollars.inc(charge)
            self.metrics.today.set(self.budget.spent)

    def _cost(self, reply: dict[str, Any], content: str, worst: float) -> float:
        """The call's cost from its usage, or its worst case when usage is missing or impossible."""
        try:
            usage = usage_of(reply)
        except ImpossibleUsage:
            usage = None
        if usage is None or usage[0] > prompt_token_bound(content) or usage[1] > self.config.max_tokens:
            return worst
        return self.upstream.config.cost(*usage)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until no sample waits or is being graded (tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self.held and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.queue.clear()
        self.metrics.pending.set(0)
