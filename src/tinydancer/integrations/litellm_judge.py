"""Judged samples of LiteLLM traffic: :class:`LiteLLMJudge`, which the logger hands a drawn share of
its routed calls' answers (see :class:`~tinydancer.integrations.litellm.TinyDancerLogger`).

Users rarely send feedback, and the outcome of a success is unknown until someone grades it; a
judge model grading a sample of answers gives retraining the outcomes it needs.  The sampling draw
and the day's dollars are the gateway's (:class:`~tinydancer.server.grading.JudgeGate`), and so is
the rating form (``tinydancer label``'s, with the rubric file's instructions when one is given):

- **Sampling.** Each successful *routed* call is drawn once, seeded, and taken with probability
  ``sample_share`` (a call in a group we do not route has no decision to grade).
- **Retention.** The question (the last user turn the router read) and the answer of a drawn call
  wait in memory, in a queue of at most ``max_pending``, until graded, then they are dropped;
  nothing of an undrawn call is kept.  A sample that finds the queue full is not taken.
- **Grading.** In the judge's own thread, never on the call: a LiteLLM model group of the same
  router (``model``), or an OpenAI-compatible endpoint (``base_url`` + ``model``).  The rating
  becomes an outcome of the call's decision, for the model that answered: quality = the rating in
  [0, 1], success = quality >= 0.5, source ``judge``.  No rating, or a failed call: nothing.
- **Money.** Each grading call's worst case (the prompt's token bound, a ``max_tokens`` reply, at
  the judge's prices) is held from the UTC day's ``daily_dollars`` before the call and settled at
  its real cost; the first that does not fit stops grading until the next UTC day.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ValidationError
from ..server.grading import JudgeGate, judge_prompt, load_rubric, parse_rating, prompt_token_bound

__all__ = ["JudgeSettings", "LiteLLMJudge", "JudgedSample"]

log = logging.getLogger("tinydancer.litellm")

#: the longest answer kept for grading (characters); a longer one is graded on its start
MAX_ANSWER_CHARS = 32_000


@dataclass(frozen=True)
class JudgeSettings:
    """``judge=`` of the logger (``TINY_DANCER_LITELLM_JUDGE_*`` in the proxy).

    ``model``: a model group of the LiteLLM router (no ``base_url``), or the model name at
    ``base_url`` (an OpenAI-compatible endpoint, ``api_key`` its key).  Prices in dollars per
    million tokens; without them, a router group's deployments' ``input_cost_per_token`` /
    ``output_cost_per_token`` (the dearest), else LiteLLM's cost map; with none of those the
    daily budget could not hold, so it is an error.
    """

    model: str
    base_url: str | None = None
    api_key: str | None = None
    sample_share: float = 0.05
    daily_dollars: float = 5.0
    rubric: str | Path | None = None
    max_tokens: int = 512
    max_pending: int = 1000
    input_per_million: float | None = None
    output_per_million: float | None = None
    seed: int | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValidationError("the judge needs a model: a LiteLLM model group, or a model at base_url")
        if not 16 <= self.max_tokens <= 100_000:
            raise ValidationError(f"judge max_tokens must be in [16, 100000]; got {self.max_tokens}")
        if self.max_pending < 1:
            raise ValidationError(f"judge max_pending must be >= 1; got {self.max_pending}")
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValidationError(f"judge {name} must be >= 0 dollars; got {value}")


@dataclass
class JudgedSample:
    """One answered call waiting for its grade (in memory only until then)."""

    decision_id: str
    model: str
    rank: int
    question: str
    answer: str
    cost: float | None
    remote: bool


#: writes a grade: (sample, quality)
GradeWriter = Callable[[JudgedSample, float], None]


class LiteLLMJudge:
    """The judge worker: samples offered answers, grades them in its thread, writes the grades."""

    def __init__(self, settings: JudgeSettings, write: GradeWriter, router_of: Callable[[], Any] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.write = write
        #: the LiteLLM router whose group ``model`` names (the proxy rebuilds its router: asked each time)
        self.router_of = router_of
        self.rubric = None if settings.rubric is None else load_rubric(settings.rubric)
        self.gate = JudgeGate(settings.sample_share, settings.daily_dollars, settings.seed, clock)
        self._lock = threading.Lock()  # the gate: drawn in the logger's thread, spent in ours
        self._queue: queue.Queue[JudgedSample | None] = queue.Queue(maxsize=settings.max_pending)
        self.counts = {"sampled": 0, "graded": 0, "unparsed": 0, "failed": 0, "queue_full": 0, "budget": 0}
        self.busy = 0
        self._thread = threading.Thread(target=self._run, name="tinydancer-litellm-judge", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ sampling (the logger's thread)
    def offer(self, sample: JudgedSample) -> bool:
        """A successful routed call's answer: drawn, and queued for grading if taken."""
        if not sample.answer.strip() or not sample.question.strip():
            return False
        with self._lock:
            drawn = self.gate.draw()
        if drawn != "take":
            if drawn == "budget":
                self.counts["budget"] += 1
            return False
        sample.answer = sample.answer[:MAX_ANSWER_CHARS]
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self.counts["queue_full"] += 1
            return False
        self.counts["sampled"] += 1
        return True

    @property
    def held(self) -> int:
        """Answers in memory now: waiting or being graded."""
        return self._queue.qsize() + self.busy

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until nothing waits or is being graded (tests, benchmarks, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.held and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ grading (the judge's thread)
    def _run(self) -> None:
        while True:
            sample = self._queue.get()
            if sample is None:
                return
            self.busy += 1
            try:
                self.grade(sample)
            except Exception:  # a bug of ours must not stop the worker
                log.exception("judging %s failed", sample.decision_id)
            finally:
                self.busy -= 1

    def prices(self) -> tuple[float, float]:
        """Dollars per prompt token and per completion token of the judge (see :class:`JudgeSettings`)."""
        s = self.settings
        if s.input_per_million is not None and s.output_per_million is not None:
            return s.input_per_million / 1e6, s.output_per_million / 1e6
        found: list[tuple[float, float]] = []
        router = self.router_of() if s.base_url is None else None
        for d in getattr(router, "model_list", None) or []:
            params = d.get("litellm_params") or {}
            if d.get("model_name") == s.model and params.get("input_cost_per_token") is not None:
                found.append((float(params["input_cost_per_token"]), float(params.get("output_cost_per_token") or 0.0)))
        if found:
            return max(p for p, _ in found), max(c for _, c in found)
        import litellm

        info = litellm.model_cost.get(s.model)
        if info and info.get("input_cost_per_token") is not None:
            return float(info["input_cost_per_token"]), float(info.get("output_cost_per_token") or 0.0)
        raise ValidationError(f"the judge {s.model!r} has no known prices, so its daily_dollars could not hold: give "
                              "input_per_million and output_per_million")

    def _call(self, content: str) -> Any:
        s = self.settings
        body: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "max_tokens": s.max_tokens,
                                "temperature": 0, "timeout": s.timeout_s}
        if s.base_url is not None:
            import litellm

            return litellm.completion(model=f"openai/{s.model}", api_base=s.base_url, api_key=s.api_key or "none", **body)
        router = self.router_of()
        if router is None:
            raise ValidationError(f"the judge {s.model!r} names a LiteLLM model group, but no router is running")
        return router.completion(model=s.model, **body)

    def grade(self, sample: JudgedSample) -> float | None:
        """Grade one sample within the day's budget; write the grade; return it."""
        content = judge_prompt(sample.question, sample.answer, self.rubric)
        prompt_price, completion_price = self.prices()
        bound = prompt_token_bound(content)
        worst = bound * prompt_price + self.settings.max_tokens * completion_price
        with self._lock:
            fits = self.gate.reserve(worst)
        if not fits:
            self._stop_for_today()
            return None
        charge = worst
        try:
            try:
                reply = self._call(content)
            except Exception as exc:
                self.counts["failed"] += 1
                log.info("judge: grading %s failed: %s", sample.decision_id, exc)
                return None
            usage = getattr(reply, "usage", None)
            prompt_tokens = getattr(usage, "prompt_tokens", None)
            completion_tokens = getattr(usage, "completion_tokens", None)
            if (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)
                    and 0 <= prompt_tokens <= bound and 0 <= completion_tokens <= self.settings.max_tokens):
                charge = prompt_tokens * prompt_price + completion_tokens * completion_price
            try:
                text = reply.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                text = None
            score = parse_rating(text) if isinstance(text, str) else None
            if score is None:
                self.counts["unparsed"] += 1
                return None
            self.write(sample, score)
            self.counts["graded"] += 1
            return score
        finally:
            with self._lock:
                self.gate.settle(worst, charge)

    def _stop_for_today(self) -> None:
        dropped = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: keep the sentinel for the loop
                self._queue.put_nowait(None)
                break
            dropped += 1
        self.counts["budget"] += dropped + 1
        log.warning("judge: the day's budget of $%g is spent ($%.4f); grading resumes on the next UTC day",
                    self.settings.daily_dollars, self.gate.budget.spent)
