"""From your prompts to a routing table: call every configured upstream, grade each answer, price it.

``tinydancer label`` is the path from a user's own traffic to a router of their own.  Each prompt
goes to each upstream of the gateway's config; each answer is graded by
- ``reference``: a match against the reference answer given with the prompt (exact, normalized,
  or contained as a whole phrase);
- ``judge``: a configured upstream rates the answer from 1 to 10 against a rubric, in the spirit
  of MT-bench's single-answer grading; the rating must appear exactly once as ``[[n]]``, and a
  reply without one is a missing cell, never a zero;
- ``pairwise`` (the default without references): the judge compares the answer with the priciest
  upstream's answer to the same prompt (as RouteLLM labels its data): 1 when at least as good, 0
  when worse; the priciest model's own cell is 1.
The table's costs are the answers' real costs (``usage`` × the config's prices).

Money: ``--dry-run`` prints the worst case and stops; ``--max-dollars`` is a hard cap on what a
run spends.  Before a prompt's calls start, the worst case of all of them (its answers and the
judge's calls that grade them) is reserved: every prompt token at a bound no tokenizer passes (one
per UTF-8 byte, see ``prompt_token_bound``), every answer ``max_tokens`` long.  Spent plus reserved
never passes the cap, so calls in flight are covered; a prompt that does not fit waits for running
prompts to settle (each call's real cost replaces its reservation) and is skipped once nothing runs
and it still does not fit.  Reserving the judging with the answers means an answer is bought only
when its grading is paid for too.  A ``usage`` that is missing or impossible (not a whole number,
negative, above the worst case) is charged the worst case; so is a call that may have been billed
without an answer (a timeout, a broken or unreadable reply).  Every paid call is appended to a
journal (fsynced) as soon as it returns, and a rerun reads the journal first, so a crash or Ctrl-C
never pays for a finished call twice (only calls in flight at that moment, at most
``--concurrency``, are repeated).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import math
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .._io import atomic_write_text
from ..circuit import CircuitBreaker
from ..errors import ValidationError
from ..server.grading import (JUDGE_INSTRUCTIONS, Budget, judge_prompt, load_rubric, parse_rating,  # noqa: F401 (re-exported)
                               prompt_token_bound, read_utf8)
from .config import GatewayConfig, UpstreamConfig
from .upstream import Upstream, UpstreamFailure

__all__ = ["Budget", "Journal", "LabelPlan", "LabelReport", "grade_reference", "judge_prompt", "load_prompts",
           "load_rubric", "pairwise_prompt", "parse_pairwise", "parse_rating", "prompt_token_bound", "run_labelling"]

#: bytes per token assumed for an answer not received yet, to reserve the judge call that reads it;
#: once the answer is in, that call is checked against its exact bound (and topped up or skipped)
ANSWER_BYTES_PER_TOKEN = 4

PAIRWISE_INSTRUCTIONS = ("You are comparing two AI assistants' answers to the same user question. Judge which answer is "
                         "more helpful, correct, relevant and complete; ignore their order and length. First explain "
                         "briefly.")
PAIRWISE_FORM = ("Then give your verdict in exactly one of these forms: [[A]] if answer A is better, [[B]] if answer B "
                 "is better, [[C]] for a tie.")

PAIRWISE_BODY = """

[Question]
{question}

[Answer A]
{a}
[End of answer A]

[Answer B]
{b}
[End of answer B]"""

PAIRWISE_PROMPT = PAIRWISE_INSTRUCTIONS + " " + PAIRWISE_FORM + PAIRWISE_BODY


def pairwise_prompt(question: str, a: str, b: str, rubric: str | None = None) -> str:
    """The comparison request of answers ``a`` and ``b``, as :func:`judge_prompt`."""
    head = PAIRWISE_INSTRUCTIONS if rubric is None else rubric.strip()
    return head + " " + PAIRWISE_FORM + PAIRWISE_BODY.format(question=question, a=a, b=b)


_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def _utf8_safe(text: str) -> str:
    """``text`` with lone surrogates (valid in a JSON escape, not in UTF-8) as U+FFFD: writable anywhere."""
    return _SURROGATE.sub("\ufffd", text)


def _token_count(value: Any, bound: int) -> int | None:
    """A reported token count if it is possible (a whole number in [0, bound]), else None: unknown."""
    if isinstance(value, float) and value.is_integer():  # inf and NaN are not
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bound:
        return None
    return value


@dataclass(frozen=True)
class Prompt:
    text: str
    reference: str | None = None


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from JSONL (``prompt`` or ``query``, optional ``reference``) or CSV with those columns."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"no prompts file at {path}")
    text = read_utf8(path)
    rows: list[tuple[str, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [(f"{path}:{reader.line_num}", row) for row in reader]
    else:
        # "\n" only: str.splitlines would also cut at U+2028 or U+0085, which JSON strings may hold raw
        for i, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    rows.append((f"{path}:{i}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValidationError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
    out = []
    for where, row in rows:
        text = row.get("prompt", row.get("query")) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValidationError(f"{where}: needs a non-empty 'prompt' (or 'query')")
        ref = row.get("reference")
        ref = None if ref in (None, "") else str(ref)
        for value in (text, ref):
            if value is not None and _utf8_safe(value) != value:
                raise ValidationError(f"{where}: holds a lone surrogate (such as \\ud800), which is not text; "
                                      "fix or drop that line")
        out.append(Prompt(text, ref))
    if not out:
        raise ValidationError(f"{path} has no prompts")
    return out


class Journal:
    """Paid calls, one JSON line each, fsynced as they finish: what a rerun does not pay for again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        cut = False
        if path.is_file():
            text = path.read_bytes().decode("utf-8", "replace")  # a crash may cut a character in two
            for line in text.split("\n"):  # "\n" only: an answer may hold U+2028, which splitlines cuts at
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a crash cut short: that call is made again
                if _is_entry(entry):
                    self.entries[entry["key"]] = entry
            cut = bool(text) and not text.endswith("\n")
        self.reused = len(self.entries)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")  # "a": a resumed run adds to what earlier runs paid for
        if cut:  # end the cut line, or the next entry would be glued to it and lost to the run after
            self._fh.write("\n")

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.entries[entry["key"]] = entry

    def close(self) -> None:
        self._fh.close()


def _is_entry(entry: Any) -> bool:
    """A journal line a rerun can reuse: a key, an answer, and a real cost (no NaN, inf or negative)."""
    return (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("text"), str)
            and isinstance(entry.get("cost"), (int, float)) and math.isfinite(entry["cost"]) and entry["cost"] >= 0)


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
    #: grading instructions replacing the default ones (the verdict's form is kept)
    rubric: str | None = None

    @property
    def reference_model(self) -> UpstreamConfig:
        return max(self.models, key=lambda u: (u.input_per_million + u.output_per_million, u.output_per_million))

    def worst_case(self, up: UpstreamConfig, content: str, extra_bytes: int = 0) -> float:
        """The most one call can cost: every prompt token at its bound, an answer ``max_tokens`` long."""
        return up.cost(prompt_token_bound(content, extra_bytes), self.max_tokens)

    def judged(self, u: UpstreamConfig) -> bool:
        """Whether the judge is called on ``u``'s answer (the pairwise reference is 1 by definition)."""
        return self.grader == "judge" or (self.grader == "pairwise" and u.name != self.reference_model.name)

    def judge_call(self, prompt: Prompt, u: UpstreamConfig, answer: str, reference: str) -> tuple[str, str, tuple[str, ...]]:
        """The judge call grading ``answer``: its kind, its message and its journal key's parts."""
        # a rubric joins the journal key, so a rerun with another rubric pays for new verdicts
        extra = () if self.rubric is None else (self.rubric,)
        if self.grader == "judge":
            return "judge", judge_prompt(prompt.text, answer, self.rubric), (prompt.text, u.name, answer, *extra)
        return ("pairwise", pairwise_prompt(prompt.text, answer, reference, self.rubric),
                (prompt.text, u.name, answer, reference, *extra))

    def judge_worst_case(self, prompt: Prompt, u: UpstreamConfig) -> float:
        """The judge call's worst case before the answers it reads exist (``ANSWER_BYTES_PER_TOKEN`` each token)."""
        assert self.judge is not None
        answers = 2 if self.grader == "pairwise" else 1
        content = self.judge_call(prompt, u, "", "")[1]
        return self.worst_case(self.judge, content, answers * self.max_tokens * ANSWER_BYTES_PER_TOKEN)

    def estimate(self) -> dict[str, float]:
        """The worst case per upstream (answers, and the judge's calls under its own name): what
        ``--max-dollars`` reserves, so real spending is usually far lower (answers are shorter)."""
        out: dict[str, float] = {}
        for p in self.prompts:
            for u in self.models:
                out[u.name] = out.get(u.name, 0.0) + self.worst_case(u, p.text)
                if self.judge is not None and self.judged(u):
                    key = f"{self.judge.name} (judge)"
                    out[key] = out.get(key, 0.0) + self.judge_worst_case(p, u)
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
    #: calls charged their worst case: usage missing or impossible, or possibly billed without an answer
    charged_worst_case: int = 0
    dollars: float = 0.0
    errors: list[str] = field(default_factory=list)


class _Run:
    def __init__(self, plan: LabelPlan, journal: Journal, tick: Callable[[], None]) -> None:
        self.plan = plan
        self.journal = journal
        self.tick = tick
        self.report = LabelReport(reused_calls=journal.reused)
        self.sem = asyncio.Semaphore(plan.concurrency)  # calls in flight
        self.slots = asyncio.Semaphore(plan.concurrency)  # prompts holding a reservation
        self.budget = Budget(plan.max_dollars)
        names = {u.name for u in plan.models} | ({plan.judge.name} if plan.judge else set())
        configs = {u.name: u for u in plan.models}
        if plan.judge is not None:
            configs[plan.judge.name] = plan.judge
        self.upstreams = {n: Upstream(configs[n], CircuitBreaker(10**9)) for n in names}

    def unpaid(self, prompt: Prompt) -> tuple[float, int]:
        """The worst case of the prompt's calls the journal lacks, and how many there are."""
        plan, journal = self.plan, self.journal
        answers = {u.name: journal.get(call_key("answer", u, prompt.text)) for u in plan.models}
        reference = answers[plan.reference_model.name] if plan.grader == "pairwise" else None
        total, calls = 0.0, 0
        for u in plan.models:
            answer = answers[u.name]
            if answer is None:
                total, calls = total + plan.worst_case(u, prompt.text), calls + 1
            if plan.judge is None or not plan.judged(u):
                continue
            if answer is None or (plan.grader == "pairwise" and reference is None):
                total, calls = total + plan.judge_worst_case(prompt, u), calls + 1
                continue
            kind, content, parts = plan.judge_call(prompt, u, answer["text"], reference["text"] if reference else "")
            if journal.get(call_key(kind, plan.judge, *parts)) is None:
                total, calls = total + plan.worst_case(plan.judge, content), calls + 1
        return total, calls

    async def call(self, kind: str, up: UpstreamConfig, content: str, key_parts: tuple[str, ...],
                   pot: list[float]) -> dict[str, Any] | None:
        """One chat call through the journal and the budget; None when it failed or the budget stopped it."""
        key = call_key(kind, up, *key_parts)
        done = self.journal.get(key)
        if done is not None:
            self.tick()
            return done
        worst = self.plan.worst_case(up, content)
        if not self.budget.draw(pot, worst):
            self.report.skipped_for_budget += 1
            self.tick()
            return None
        charge = 0.0
        try:
            async with self.sem:
                body = json.dumps({"model": up.model, "messages": [{"role": "user", "content": content}],
                                   "max_tokens": self.plan.max_tokens, "temperature": 0}).encode()
                try:
                    _resp, payload = await self.upstreams[up.name].complete(body)
                except UpstreamFailure as exc:
                    if exc.kind in ("timeout", "broken"):  # the upstream may have done (and billed) the work
                        charge = worst
                        self.report.charged_worst_case += 1
                    self._failed(up, exc)
                    return None
                charge = worst  # from here on it answered: billed, at most the worst case
                try:
                    data = json.loads(payload)
                    text = data["choices"][0]["message"]["content"] or ""
                    if not isinstance(text, str):
                        raise ValueError(f"its answer is a {type(text).__name__}, not text")
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    self.report.charged_worst_case += 1
                    self._failed(up, ValueError(f"unreadable answer ({exc})"))
                    return None
                usage = data.get("usage") if isinstance(data, dict) else None
                p_tok = c_tok = None
                if isinstance(usage, dict):
                    p_tok = _token_count(usage.get("prompt_tokens"), prompt_token_bound(content))
                    c_tok = _token_count(usage.get("completion_tokens"), self.plan.max_tokens)
                if p_tok is None or c_tok is None:
                    self.report.charged_worst_case += 1
                else:
                    charge = up.cost(p_tok, c_tok)
                entry = {"key": key, "kind": kind, "upstream": up.name, "text": _utf8_safe(text),
                         "prompt_tokens": p_tok, "completion_tokens": c_tok, "cost": charge}
                self.journal.put(entry)
                self.report.paid_calls += 1
                return entry
        finally:
            self.budget.settle(worst, charge)
            self.tick()

    def _failed(self, up: UpstreamConfig, exc: Exception) -> None:
        self.report.failed_calls += 1
        if len(self.report.errors) < 5:
            self.report.errors.append(f"{up.name}: {exc}")

    async def label(self, prompt: Prompt) -> dict[str, Any] | None:
        """The prompt's row, its calls paid for from one reservation of their worst case (or none)."""
        async with self.slots:
            need, calls = self.unpaid(prompt)
            pot = await self.budget.open(need)
            if pot is None:
                self.report.skipped_for_budget += calls
                for _ in range(calls_per_prompt(self.plan)):
                    self.tick()
                return None
            try:
                return await self._label(prompt, pot)
            finally:
                self.budget.close(pot)

    async def _label(self, prompt: Prompt, pot: list[float]) -> dict[str, Any] | None:
        plan = self.plan
        answers = await asyncio.gather(*[self.call("answer", u, prompt.text, (prompt.text,), pot) for u in plan.models])
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
            grades.append(self._grade(prompt, u, answer["text"], reference_answer, pot))
        for u, grade in zip(plan.models, await asyncio.gather(*grades_or_none(grades))):
            if grade is not None:
                scores[u.name] = grade
        self.report.cells += len(scores)
        self.report.missing += len(plan.models) - len(scores)
        if not scores:
            return None
        return {"query": prompt.text, "scores": scores, "costs": {m: costs[m] for m in scores}}

    async def _grade(self, prompt: Prompt, u: UpstreamConfig, answer: str, reference: dict[str, Any] | None,
                     pot: list[float]) -> float | None:
        plan = self.plan
        if plan.grader == "reference":
            if prompt.reference is None:
                return None
            return grade_reference(answer, prompt.reference, plan.match)
        assert plan.judge is not None
        if not plan.judged(u):
            return 1.0  # the pairwise reference, against itself
        if plan.grader == "pairwise" and reference is None:
            return None
        kind, content, parts = plan.judge_call(prompt, u, answer, reference["text"] if reference else "")
        verdict = await self.call(kind, plan.judge, content, parts, pot)
        score = None if verdict is None else (parse_rating if kind == "judge" else parse_pairwise)(verdict["text"])
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
    run.report.dollars = run.budget.spent
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
        # pairwise by default: a comparison with the priciest model's answer is steadier than a
        # 1-10 rating (MT-bench's finding), and the judge never rates the reference answer alone
        grader = "reference" if all(p.reference is not None for p in prompts) else "pairwise"
    if grader not in ("reference", "judge", "pairwise"):
        raise ValidationError(f"unknown grader {grader!r}: use reference, judge or pairwise")
    if grader in ("judge", "pairwise") and judge_cfg is None:
        raise ValidationError(f"the {grader} grader needs --judge NAME (an upstream of the config)"
                              + ("; or give every prompt a 'reference' answer" if grader == "pairwise" else ""))
    if grader == "reference" and kw.get("rubric") is not None:
        raise ValidationError("--rubric instructs a judge: use it with --grader judge or pairwise")
    if grader == "reference" and any(p.reference is None for p in prompts):
        raise ValidationError("the reference grader needs a 'reference' answer on every prompt; use --judge otherwise")
    # a prompt given twice would be bought twice in one run (both miss the journal): label it once
    first: dict[str, Prompt] = {}
    for p in prompts:
        first.setdefault(p.text, p)
    unique = list(first.values())
    return LabelPlan(unique, [u for u in chosen if u is not None], grader, judge_cfg, **kw)
