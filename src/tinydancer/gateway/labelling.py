"""From your prompts to a routing table: call every configured upstream, grade each answer, price it.

``tinydancer label`` is the path from a user's own traffic to a router of their own.  Each prompt
goes to each upstream of the gateway's config; each answer is graded by
- ``reference``: a match against the reference answer given with the prompt (exact, normalized,
  or contained as a whole phrase);
- ``judge``: a configured upstream rates the answer from 1 to 10 against a rubric, in the spirit
  of MT-bench's single-answer grading; the rating must appear exactly once as ``[[n]]``, and a
  reply without one is a missing cell, never a zero;
- ``pairwise``: the judge compares the answer with the priciest upstream's answer to the same
  prompt (as RouteLLM labels its data): 1 when at least as good, 0 when worse; the priciest
  model's own cell is 1.
The table's costs are the answers' real costs (``usage`` × the config's prices).

Money: ``--dry-run`` prints the estimated cost and stops; ``--max-dollars`` stops starting calls
once spending (with what running calls are estimated to cost) would pass it.  Every paid call is
appended to a journal (fsynced) as soon as it returns, and a rerun reads the journal first, so a
crash or Ctrl-C never pays for a finished call twice (only calls in flight at that moment, at most
``--concurrency``, are repeated).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .._io import atomic_write_text
from ..circuit import CircuitBreaker
from ..errors import ValidationError
from .config import GatewayConfig, UpstreamConfig
from .selection import estimate_cost
from .upstream import Upstream, UpstreamFailure

__all__ = ["Journal", "LabelPlan", "LabelReport", "grade_reference", "load_prompts", "parse_pairwise", "parse_rating",
           "run_labelling"]

JUDGE_PROMPT = """You are grading an AI assistant's answer to a user's question. Judge how helpful, correct, relevant \
and complete the answer is. First explain your judgement in a few sentences. Then give a rating from 1 (useless) to \
10 (excellent) in exactly this form: Rating: [[n]]

[Question]
{question}

[Answer]
{answer}
[End of answer]"""

PAIRWISE_PROMPT = """You are comparing two AI assistants' answers to the same user question. Judge which answer is \
more helpful, correct, relevant and complete; ignore their order and length. First explain briefly. Then give your \
verdict in exactly one of these forms: [[A]] if answer A is better, [[B]] if answer B is better, [[C]] for a tie.

[Question]
{question}

[Answer A]
{a}
[End of answer A]

[Answer B]
{b}
[End of answer B]"""

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(text: str) -> float | None:
    """A judge's ``[[n]]`` (1-10) as a score in [0, 1]; None unless exactly one rating in range."""
    found = {float(v) for v in _RATING.findall(text)}
    if len(found) != 1:
        return None
    value = found.pop()
    return (value - 1.0) / 9.0 if 1.0 <= value <= 10.0 else None


def parse_pairwise(text: str) -> float | None:
    """[[A]] (the answer graded, better) or [[C]] (tie) → 1.0, [[B]] (the reference, better) → 0.0; None otherwise."""
    found = set(_VERDICT.findall(text))
    if len(found) != 1:
        return None
    return 0.0 if found.pop() == "B" else 1.0


def _normalize(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def grade_reference(answer: str, reference: str, match: str = "normalized") -> float:
    """1.0 when ``answer`` matches ``reference`` (``exact``, ``normalized``, or ``contains`` as whole words)."""
    if match == "exact":
        return float(answer.strip() == reference.strip())
    a, r = _normalize(answer), _normalize(reference)
    if match == "normalized":
        return float(a == r)
    if match == "contains":
        return float(bool(r) and f" {r} " in f" {a} ")
    raise ValidationError(f"unknown match {match!r}: use exact, normalized or contains")


@dataclass(frozen=True)
class Prompt:
    text: str
    reference: str | None = None


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from JSONL (``prompt`` or ``query``, optional ``reference``) or CSV with those columns."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"no prompts file at {path}")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValidationError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
    out = []
    for i, row in enumerate(rows, start=1):
        text = row.get("prompt", row.get("query")) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValidationError(f"{path} row {i}: needs a non-empty 'prompt' (or 'query')")
        ref = row.get("reference")
        out.append(Prompt(text, None if ref in (None, "") else str(ref)))
    if not out:
        raise ValidationError(f"{path} has no prompts")
    return out


class Journal:
    """Paid calls, one JSON line each, fsynced as they finish: what a rerun does not pay for again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a crash cut short: that call is made again
                self.entries[entry["key"]] = entry
        self.reused = len(self.entries)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.entries[entry["key"]] = entry

    def close(self) -> None:
        self._fh.close()


def call_key(kind: str, upstream: UpstreamConfig, *parts: str) -> str:
    text = "\x1f".join([kind, upstream.name, upstream.model, *parts])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class LabelPlan:
    prompts: list[Prompt]
    models: list[UpstreamConfig]
    grader: str  # reference | judge | pairwise
    judge: UpstreamConfig | None = None
    match: str = "normalized"
    max_tokens: int = 512
    max_dollars: float | None = None
    concurrency: int = 8

    @property
    def reference_model(self) -> UpstreamConfig:
        return max(self.models, key=lambda u: (u.input_per_million + u.output_per_million, u.output_per_million))

    def estimate(self) -> dict[str, float]:
        """Estimated dollars per upstream (answers, and the judge's calls under its own name)."""
        body = {"max_tokens": self.max_tokens}
        out: dict[str, float] = {}
        for p in self.prompts:
            for u in self.models:
                out[u.name] = out.get(u.name, 0.0) + estimate_cost(body, len(p.text), u.input_per_million, u.output_per_million)
                if self.judge is not None and not (self.grader == "pairwise" and u.name == self.reference_model.name):
                    extra = 2 if self.grader == "pairwise" else 1  # the answers it reads, at most max_tokens each
                    chars = len(p.text) + 4 * self.max_tokens * extra + len(JUDGE_PROMPT)
                    key = f"{self.judge.name} (judge)"
                    out[key] = out.get(key, 0.0) + estimate_cost(body, chars, self.judge.input_per_million,
                                                                  self.judge.output_per_million)
        return out


@dataclass
class LabelReport:
    rows: int = 0
    cells: int = 0
    missing: int = 0
    unparsed: int = 0
    failed_calls: int = 0
    paid_calls: int = 0
    reused_calls: int = 0
    skipped_for_budget: int = 0
    dollars: float = 0.0
    errors: list[str] = field(default_factory=list)


class _Run:
    def __init__(self, plan: LabelPlan, journal: Journal, tick: Callable[[], None]) -> None:
        self.plan = plan
        self.journal = journal
        self.tick = tick
        self.report = LabelReport(reused_calls=journal.reused)
        self.sem = asyncio.Semaphore(plan.concurrency)
        self.reserved = 0.0
        names = {u.name for u in plan.models} | ({plan.judge.name} if plan.judge else set())
        configs = {u.name: u for u in plan.models}
        if plan.judge is not None:
            configs[plan.judge.name] = plan.judge
        self.upstreams = {n: Upstream(configs[n], CircuitBreaker(10**9)) for n in names}

    async def call(self, kind: str, up: UpstreamConfig, content: str, key_parts: tuple[str, ...]) -> dict[str, Any] | None:
        """One chat call through the journal and the budget; None when it failed or the budget stopped it."""
        key = call_key(kind, up, *key_parts)
        done = self.journal.get(key)
        if done is not None:
            self.tick()
            return done
        estimate = estimate_cost({"max_tokens": self.plan.max_tokens}, len(content), up.input_per_million, up.output_per_million)
        async with self.sem:
            cap = self.plan.max_dollars
            if cap is not None and self.report.dollars + self.reserved + estimate > cap:
                self.report.skipped_for_budget += 1
                self.tick()
                return None
            self.reserved += estimate
            try:
                body = json.dumps({"model": up.model, "messages": [{"role": "user", "content": content}],
                                   "max_tokens": self.plan.max_tokens, "temperature": 0}).encode()
                try:
                    _resp, payload = await self.upstreams[up.name].complete(body)
                    data = json.loads(payload)
                    text = data["choices"][0]["message"]["content"] or ""
                    usage = data.get("usage") or {}
                except (UpstreamFailure, ValueError, KeyError, IndexError, TypeError) as exc:
                    self.report.failed_calls += 1
                    if len(self.report.errors) < 5:
                        self.report.errors.append(f"{up.name}: {exc}")
                    return None
                p_tok, c_tok = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                entry = {"key": key, "kind": kind, "upstream": up.name, "text": text, "prompt_tokens": p_tok,
                         "completion_tokens": c_tok, "cost": up.cost(p_tok, c_tok)}
                self.journal.put(entry)
                self.report.paid_calls += 1
                self.report.dollars += entry["cost"]
                return entry
            finally:
                self.reserved -= estimate
                self.tick()

    async def label(self, prompt: Prompt) -> dict[str, Any] | None:
        plan = self.plan
        answers = await asyncio.gather(*[self.call("answer", u, prompt.text, (prompt.text,)) for u in plan.models])
        scores: dict[str, float] = {}
        costs: dict[str, float] = {}
        reference_answer = None
        if plan.grader == "pairwise":
            ref_index = plan.models.index(plan.reference_model)
            reference_answer = answers[ref_index]
        grades = []
        for u, answer in zip(plan.models, answers):
            if answer is None:
                grades.append(None)
                continue
            costs[u.name] = answer["cost"]
            grades.append(self._grade(prompt, u, answer["text"], reference_answer))
        for u, grade in zip(plan.models, await asyncio.gather(*grades_or_none(grades))):
            if grade is not None:
                scores[u.name] = grade
        self.report.cells += len(scores)
        self.report.missing += len(plan.models) - len(scores)
        if not scores:
            return None
        return {"query": prompt.text, "scores": scores, "costs": {m: costs[m] for m in scores}}

    async def _grade(self, prompt: Prompt, u: UpstreamConfig, answer: str, reference: dict[str, Any] | None) -> float | None:
        plan = self.plan
        if plan.grader == "reference":
            if prompt.reference is None:
                return None
            return grade_reference(answer, prompt.reference, plan.match)
        assert plan.judge is not None
        if plan.grader == "judge":
            verdict = await self.call("judge", plan.judge, JUDGE_PROMPT.format(question=prompt.text, answer=answer),
                                      (prompt.text, u.name, answer))
            score = None if verdict is None else parse_rating(verdict["text"])
        else:
            if u.name == plan.reference_model.name:
                return 1.0
            if reference is None:
                return None
            verdict = await self.call("pairwise", plan.judge,
                                      PAIRWISE_PROMPT.format(question=prompt.text, a=answer, b=reference["text"]),
                                      (prompt.text, u.name, answer, reference["text"]))
            score = None if verdict is None else parse_pairwise(verdict["text"])
        if verdict is not None and score is None:
            self.report.unparsed += 1
        return score

    async def close(self) -> None:
        for up in self.upstreams.values():
            await up.close()


def grades_or_none(grades: list[Any]) -> list[Any]:
    """Awaitables for asyncio.gather, with None for answers that never came."""
    async def none() -> None:
        return None

    return [none() if g is None else g for g in grades]


def calls_per_prompt(plan: LabelPlan) -> int:
    judged = len(plan.models) - (1 if plan.grader == "pairwise" else 0) if plan.grader != "reference" else 0
    return len(plan.models) + judged


async def _run(plan: LabelPlan, journal: Journal, tick: Callable[[], None]) -> tuple[list[dict[str, Any]], LabelReport]:
    run = _Run(plan, journal, tick)
    try:
        rows = await asyncio.gather(*[run.label(p) for p in plan.prompts])
    finally:
        await run.close()
    kept = [r for r in rows if r is not None]
    run.report.rows = len(kept)
    return kept, run.report


def run_labelling(plan: LabelPlan, out: Path, journal_path: Path | None = None,
                  tick: Callable[[], None] = lambda: None) -> LabelReport:
    """Label every prompt, write the routing table to ``out`` (atomically), and report."""
    journal = Journal(journal_path or out.with_name(out.name + ".journal"))
    try:
        rows, report = asyncio.run(_run(plan, journal, tick))
    finally:
        journal.close()
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return report


def plan_from_config(config: GatewayConfig, prompts: list[Prompt], *, models: list[str] | None, grader: str | None,
                     judge: str | None, **kw: Any) -> LabelPlan:
    chosen = config.upstreams if not models else [config.upstream(m) for m in models]
    missing = [m for m, u in zip(models or [], chosen) if u is None]
    if missing:
        raise ValidationError(f"--models names {missing}, not upstreams of the config ({[u.name for u in config.upstreams]})")
    judge_cfg = None
    if judge is not None:
        judge_cfg = config.upstream(judge)
        if judge_cfg is None:
            raise ValidationError(f"--judge {judge!r} is not an upstream of the config")
    if grader is None:
        grader = "reference" if all(p.reference is not None for p in prompts) else "judge"
    if grader not in ("reference", "judge", "pairwise"):
        raise ValidationError(f"unknown grader {grader!r}: use reference, judge or pairwise")
    if grader in ("judge", "pairwise") and judge_cfg is None:
        raise ValidationError(f"the {grader} grader needs --judge NAME (an upstream of the config)")
    if grader == "reference" and any(p.reference is None for p in prompts):
        raise ValidationError("the reference grader needs a 'reference' answer on every prompt; use --judge otherwise")
    # a prompt given twice would be bought twice in one run (both miss the journal): label it once
    first: dict[str, Prompt] = {}
    for p in prompts:
        first.setdefault(p.text, p)
    unique = list(first.values())
    return LabelPlan(unique, [u for u in chosen if u is not None], grader, judge_cfg, **kw)
