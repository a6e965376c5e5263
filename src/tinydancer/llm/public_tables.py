"""Every public outcome table in ``../shared/data`` as a strong/weak pair: what the gateway's
packaged router is trained on (``tools/build_default_router.py``) and what its leave-one-dataset-
out evaluation holds out (``benchmarks/quality.py --generalization``).

The pairs, each renamed to the gateway's default upstream names ``strong`` and ``weak``:

* RouteLLM MMLU, GSM8K (contaminated prompts dropped) and MT-bench (first turn as the prompt, the
  GPT-4 judge's score / 10 averaged over both turns, as RouteLLM scores it): strong = GPT-4-turbo,
  weak = Mixtral-8x7B;
* LLMRouter: strong = llama-3.1-nemotron-51b-instruct (the best model on its training file),
  weak = gemma-2-9b-it (the cheapest): the price extremes a strong/weak gateway chooses between.
  Its rows carry no task name, but the files hold each task in one contiguous block; the blocks
  (found from the prompts' form: code, LaTeX, word problems, trivia, passages) give the family
  groups held out: math (GSM8K-style word problems, MATH), code (MBPP, HumanEval), knowledge
  (Natural Questions, TriviaQA, MMLU, GPQA), commonsense (CommonsenseQA, OpenBookQA, ARC) and
  other (logic puzzles, word sorting, reading comprehension: always trained on, never held out);
* AlpacaEval: strong = GPT-4-turbo, weak = GPT-3.5-turbo, with ``p`` the probability that
  GPT-3.5-turbo's answer beats GPT-4-turbo's: strong scores ``1 - p``, weak ``p``.

Costs are RouteLLM's prices for every pair, in dollars a call (at 1,000 tokens a call): with one
price per model, APGR and AIQ do not depend on the prices' values, and one scale keeps the merged
table's cost column consistent.  (Main's tables.py now gives ROUTELLM_PRICES per call already:
when merged, drop the ``/ 1000``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from .tables import (ROUTELLM_PRICES, ROUTELLM_STRONG, ROUTELLM_WEAK, RoutingTable, load_llmrouter, load_routellm_gsm8k,
                     load_routellm_mmlu, split_routellm)

__all__ = ["PAIR", "LLMROUTER_STRONG", "LLMROUTER_WEAK", "ALPACA_STRONG", "ALPACA_WEAK", "pair_table", "merge", "balance_gaps",
           "held_out_units", "packaged_splits", "source_groups", "load_mt_bench", "load_alpacaeval", "llmrouter_groups"]

PAIR = ["strong", "weak"]
#: RouteLLM's prices ($24.7 and $0.24 per million tokens) as dollars a call at 1,000 tokens a call
PAIR_COSTS = (ROUTELLM_PRICES[ROUTELLM_STRONG], ROUTELLM_PRICES[ROUTELLM_WEAK])
LLMROUTER_STRONG = "llama-3.1-nemotron-51b-instruct"
LLMROUTER_WEAK = "gemma-2-9b-it"
ALPACA_STRONG = "gpt-4-1106-preview"
ALPACA_WEAK = "gpt-3.5-turbo-1106"
#: (first row, end row, group) of each task block in LLMRouter's files
_BLOCKS = {
    "train": [(0, 150, "other"), (150, 350, "math"), (350, 500, "other"), (500, 1500, "knowledge"),
              (1500, 2000, "other"), (2000, 2448, "knowledge"), (2448, 3110, "code"), (3110, 3610, "math"),
              (3610, 4111, "commonsense"), (4111, 4614, "math"), (4614, 5608, "commonsense")],
    "test": [(0, 50, "other"), (50, 100, "math"), (100, 150, "other"), (150, 350, "knowledge"), (350, 450, "code"),
             (450, 500, "math")],
}
LLMROUTER_GROUPS = ("math", "code", "knowledge", "commonsense")


def pair_table(queries: list[str], strong: np.ndarray, weak: np.ndarray, source: str) -> RoutingTable:
    """A two-model table named ``strong``/``weak`` with the fixed pair prices."""
    scores = np.column_stack([strong, weak]).astype(np.float32)
    return RoutingTable(list(queries), list(PAIR), scores, np.tile(PAIR_COSTS, (len(queries), 1)), meta={"source": source})


def _as_pair(table: RoutingTable, strong: str, weak: str, source: str) -> RoutingTable:
    col = {m: i for i, m in enumerate(table.models)}
    out = pair_table(table.queries, table.scores[:, col[strong]], table.scores[:, col[weak]], source)
    out.embeddings = table.embeddings
    return out


def merge(parts: list[RoutingTable], source: str) -> RoutingTable:
    """One pair table of several, rows in order."""
    return RoutingTable(sum((p.queries for p in parts), []), list(PAIR), np.vstack([p.scores for p in parts]),
                        np.vstack([p.costs for p in parts]), meta={"source": source})


def source_groups(parts: list[RoutingTable]) -> np.ndarray:
    """One label per row of ``merge(parts, ...)``: the part's source, for cross-validation that holds
    out whole tables (``QueryRouter.fit(..., groups=...)``)."""
    return np.concatenate([np.full(len(p), p.meta.get("source") or f"part {i}", dtype=object) for i, p in enumerate(parts)])


def balance_gaps(parts: list[RoutingTable]) -> list[RoutingTable]:
    """Each part with its strong-minus-weak gap shrunk, where it is above the parts' median, to
    that median: ``s, w -> m ± g (s - w) / 2`` with ``m = (s + w) / 2`` and ``g = median gap / its
    gap``.  Each row keeps its mean quality and its rank within its part.

    Why: the pairs are different models on different scales (correctness, a judge's score, a
    judge's preference), so how much better one pair's strong model is says nothing about the
    prompts: AlpacaEval's GPT-4-turbo beats GPT-3.5-turbo with probability 0.91 on average, so
    unbalanced, a router learns "chat-like prompt, send it strong" ("Thanks!" included) from which
    table a prompt looks like, not from what it asks."""
    gaps = [float(np.mean(p.scores[:, 0] - p.scores[:, 1])) for p in parts]
    target = float(np.median(gaps))
    out = []
    for part, gap in zip(parts, gaps):
        if gap <= target or gap <= 0:
            out.append(part)
            continue
        s, w = part.scores[:, 0].astype(np.float64), part.scores[:, 1].astype(np.float64)
        mid, half = (s + w) / 2, (s - w) / 2 * (target / gap)
        shrunk = pair_table(part.queries, mid + half, mid - half, part.meta.get("source", ""))
        shrunk.embeddings = part.embeddings
        shrunk.meta["gap_scaled"] = round(target / gap, 4)
        out.append(shrunk)
    return out


def load_mt_bench(data: Path) -> RoutingTable:
    """MT-bench's 80 questions (first turn), GPT-4's judge score / 10 averaged over both turns."""
    folder = data / "routellm" / "mt_bench"
    questions = {q["question_id"]: q["turns"][0] for q in map(json.loads, (folder / "question.jsonl").read_text().splitlines())}
    sums: dict[tuple[int, str], list[float]] = {}
    for j in map(json.loads, (folder / "judgements.jsonl").read_text().splitlines()):
        sums.setdefault((j["question_id"], j["model"]), []).append(float(j["score"]) / 10.0)
    ids = sorted(questions)
    s = [np.mean(sums[(i, ROUTELLM_STRONG)]) for i in ids]
    w = [np.mean(sums[(i, ROUTELLM_WEAK)]) for i in ids]
    return pair_table([questions[i] for i in ids], np.asarray(s), np.asarray(w), "routellm/mt_bench")


def load_alpacaeval(data: Path) -> RoutingTable:
    """AlpacaEval's 805 instructions: strong = 1 - p, weak = p (p: GPT-3.5-turbo beats GPT-4-turbo)."""
    rows = [json.loads(line) for line in (data / "alpacaeval" / "alpacaeval.jsonl").read_text().splitlines() if line.strip()]
    p = np.array([r["win_vs_gpt4_turbo"][ALPACA_WEAK] for r in rows], dtype=np.float64)
    return pair_table([r["instruction"] for r in rows], 1.0 - p, p, "alpacaeval")


def llmrouter_groups(data: Path, split: str) -> dict[str, RoutingTable]:
    """LLMRouter's file as strong/weak pair tables per family group (``other`` included)."""
    table = load_llmrouter(data, split)
    blocks = _BLOCKS[split]
    if len(table) != blocks[-1][1]:
        raise ValidationError(f"dcrouter_{split}.json has {len(table)} rows; the family blocks were read from a file "
                              f"of {blocks[-1][1]}: update public_tables._BLOCKS")
    pair = _as_pair(table, LLMROUTER_STRONG, LLMROUTER_WEAK, f"llmrouter/{split}")
    rows: dict[str, list[int]] = {}
    for start, end, group in blocks:
        rows.setdefault(group, []).extend(range(start, end))
    out = {}
    for group, idx in rows.items():
        part = pair.subset(idx)
        part.meta["source"] = f"llmrouter/{split}/{group}"
        out[group] = part
    return out


def _routellm(data: Path, which: str) -> tuple[RoutingTable, RoutingTable, RoutingTable]:
    """(all decontaminated rows, train split, test split) of MMLU or GSM8K as pairs."""
    raw = load_routellm_mmlu(data) if which == "mmlu" else load_routellm_gsm8k(data)
    clean = raw.subset(np.flatnonzero(~raw.meta["contaminated"]))
    train, test = split_routellm(raw)
    return tuple(_as_pair(t, ROUTELLM_STRONG, ROUTELLM_WEAK, f"routellm/{which}") for t in (clean, train, test))  # type: ignore[return-value]


def held_out_units(data: Path) -> tuple[dict[str, RoutingTable], RoutingTable]:
    """The leave-one-dataset-out units (every row of each), and the rows always trained on
    (LLMRouter's other tasks)."""
    units = {"MMLU": _routellm(data, "mmlu")[0], "GSM8K": _routellm(data, "gsm8k")[0], "MT-bench": load_mt_bench(data)}
    train, test = llmrouter_groups(data, "train"), llmrouter_groups(data, "test")
    for group in LLMROUTER_GROUPS:
        parts = [train[group]] + ([test[group]] if group in test else [])
        units[f"LLMRouter {group}"] = merge(parts, f"llmrouter/{group}")
    units["AlpacaEval"] = load_alpacaeval(data)
    return units, merge([train["other"], test["other"]], "llmrouter/other")


def packaged_splits(data: Path) -> dict[str, tuple[RoutingTable, RoutingTable | None]]:
    """(train, test) per table for the packaged router: RouteLLM's fixed 80/20 splits for MMLU and
    GSM8K, the same seeded 80/20 cut for MT-bench and AlpacaEval, LLMRouter's own train/test files
    per group (its test file has no commonsense rows: test None)."""
    out: dict[str, tuple[RoutingTable, RoutingTable | None]] = {}
    for name, which in (("MMLU", "mmlu"), ("GSM8K", "gsm8k")):
        _all, train, test = _routellm(data, which)
        out[name] = (train, test)
    for name, table in (("MT-bench", load_mt_bench(data)), ("AlpacaEval", load_alpacaeval(data))):
        train, test = split_routellm(table)
        for part in (train, test):
            part.meta.pop("source_rows", None)
        out[name] = (train, test)
    train, test = llmrouter_groups(data, "train"), llmrouter_groups(data, "test")
    for group in (*LLMROUTER_GROUPS, "other"):
        out[f"LLMRouter {group}"] = (train[group], test.get(group))
    return out
