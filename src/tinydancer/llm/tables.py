"""Routing tables: per-query quality of each model, and what each call costs.

The JSONL format, one row per query::

    {"query": "What is ...?", "embedding": [0.01, ...],          # embedding optional
     "scores": {"gpt-4": 1.0, "mixtral": 0.0},                   # quality 0..1 per model
     "costs": {"gpt-4": 0.0247, "mixtral": 0.00024}}             # $ per call, optional

with an optional price table ``{model: $ per call}`` (or per million tokens, converted at an
assumed 500 prompt + 500 answer tokens a call) for rows without ``costs``.  Every row must
score the same models.  Loaders turn the public outcome data in ``../shared/data`` into tables:
RouteLLM's MMLU and GSM8K (two models, correctness; contaminated prompts dropped as RouteLLM
does) and LLMRouter's 9-model data (scores 0..1); their prices, per million tokens, become dollars a
call at the assumed 1,000 tokens a call (:data:`ASSUMED_PROMPT_TOKENS`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import atomic_write_text
from .._validation import check_finite
from ..errors import ValidationError

#: the tokens one call is assumed to use (prompt and answer) where a price table gives dollars per
#: million tokens and the outcome data give no token counts (RouteLLM's and LLMRouter's tables do
#: not): an assumption, not a measurement.  A uniform guess scales every model's cost alike, so
#: APGR, CPT, AIQ and the savings' shares do not depend on it; the dollar amounts do.
ASSUMED_PROMPT_TOKENS = 500
ASSUMED_ANSWER_TOKENS = 500
#: RouteLLM's blended prices in $ per million tokens (from the RouteLLM paper)
ROUTELLM_PRICES_PER_MILLION = {"gpt-4-1106-preview": 24.7, "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.24}


def per_call(input_per_million: float, output_per_million: float | None = None) -> float:
    """Dollars a call from prices per million tokens, at the assumed tokens of a call (a blended
    price: give it alone)."""
    out = input_per_million if output_per_million is None else output_per_million
    return (ASSUMED_PROMPT_TOKENS * input_per_million + ASSUMED_ANSWER_TOKENS * out) / 1e6


#: RouteLLM's prices as dollars a call (at the assumed 1,000 tokens a call: $0.0247 and $0.00024)
ROUTELLM_PRICES = {m: per_call(p) for m, p in ROUTELLM_PRICES_PER_MILLION.items()}
ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


@dataclass
class RoutingTable:
    """Queries × models: quality scores and per-query costs, optionally embeddings."""

    queries: list[str]
    models: list[str]
    scores: np.ndarray  # (N, M) in [0, 1]
    costs: np.ndarray  # (N, M) >= 0
    embeddings: np.ndarray | None = None  # (N, D)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, m = len(self.queries), len(self.models)
        if n == 0:
            raise ValidationError("a routing table needs at least one query")
        if m < 2:
            raise ValidationError("a routing table needs at least two models to route between")
        if len(set(self.models)) != m:
            raise ValidationError("model names must be distinct")
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.costs = np.asarray(self.costs, dtype=np.float64)
        if self.scores.shape != (n, m) or self.costs.shape != (n, m):
            raise ValidationError(f"scores and costs must be ({n}, {m}); got {self.scores.shape} and {self.costs.shape}")
        # a partial table (logged outcomes, a labelled sample) leaves the cells it did not see as NaN
        seen = ~np.isnan(self.scores)
        if np.isinf(self.scores).any() or np.isinf(self.costs).any():
            raise ValidationError("scores and costs must be finite (a missing cell is NaN, or absent from the row)")
        empty = np.flatnonzero(~seen.any(axis=1))
        if empty.size:
            raise ValidationError(f"row {int(empty[0])} scores no model: every row needs at least one score")
        if np.isnan(self.costs[seen]).any():
            raise ValidationError("every score needs a cost: give the row's costs or a price table")
        if (self.scores[seen] < 0).any() or (self.scores[seen] > 1).any():
            raise ValidationError("scores must lie in [0, 1]")
        if (self.costs[~np.isnan(self.costs)] < 0).any():
            raise ValidationError("costs must be non-negative")
        never = [mod for mod, col in zip(self.models, seen.T) if not col.any()]
        if never:
            raise ValidationError(f"no row scores {never}: drop the model or label some queries for it")
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
            if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
                raise ValidationError(f"embeddings must be ({n}, dim), got {self.embeddings.shape}")
            check_finite(self.embeddings, "embeddings")

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, index: Sequence[int] | np.ndarray) -> "RoutingTable":
        """The rows at ``index``; per-row arrays in ``meta`` (a ``contaminated`` mask, ``cluster_id``,
        ``source_rows``: any array as long as the table) are cut the same way, so they stay aligned."""
        idx = np.asarray(index)
        n = len(self)
        meta = {k: v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v
                for k, v in self.meta.items()}
        return RoutingTable(
            [self.queries[i] for i in idx],
            list(self.models),
            self.scores[idx],
            self.costs[idx],
            None if self.embeddings is None else self.embeddings[idx],
            meta,
        )

    @property
    def observed(self) -> np.ndarray:
        """(N, M) bool: which cells have a score (all of them, unless the table is partial)."""
        return ~np.isnan(self.scores)

    @property
    def is_partial(self) -> bool:
        return bool(np.isnan(self.scores).any())

    def require_complete(self, what: str) -> None:
        if self.is_partial:
            missing = int((~self.observed).sum())
            raise ValidationError(f"{what} needs every model scored on every query; this table misses {missing} cells "
                                  "(evaluate on a complete table, such as a labelled test sample)")

    @property
    def mean_costs(self) -> np.ndarray:
        """Each model's mean cost over the rows that priced it."""
        priced = ~np.isnan(self.costs)
        mean = np.where(priced, self.costs, 0.0).sum(axis=0) / np.maximum(priced.sum(axis=0), 1)
        # rounded to 12 significant digits: summing thousands of equal prices leaves 1e-14 noise
        return np.array([float(f"{c:.12g}") for c in mean])

    def filled_costs(self) -> np.ndarray:
        """Costs with unpriced cells at the model's mean cost (what a call would have cost)."""
        return np.where(np.isnan(self.costs), self.mean_costs[None, :], self.costs)

    def strong_weak(self) -> tuple[int, int]:
        """Indices of (strong, weak) for a two-model table: strong = higher mean cost."""
        if len(self.models) != 2:
            raise ValidationError(f"strong/weak needs exactly two models, this table has {len(self.models)}")
        c = self.mean_costs
        if c[0] == c[1]:
            raise ValidationError("both models cost the same on average: give costs so the strong (dearer) one is known")
        strong = int(np.argmax(c))
        return strong, 1 - strong

    def with_embeddings(self, embedder: Any, progress: Any = None) -> "RoutingTable":
        """A copy whose embeddings come from ``embedder`` (keeps existing ones if the dim matches)."""
        vecs = embedder.embed(self.queries, progress=progress)
        out = self.subset(np.arange(len(self)))
        out.embeddings = vecs
        out.meta["embedder_id"] = embedder.id
        return out

    # ------------------------------------------------------------------ JSONL
    def to_jsonl(self, path: str | Path, include_embeddings: bool = True) -> Path:
        lines = []
        for i, q in enumerate(self.queries):
            row: dict[str, Any] = {"query": q}
            if include_embeddings and self.embeddings is not None:
                row["embedding"] = [round(float(v), 7) for v in self.embeddings[i]]
            row["scores"] = {m: float(s) for m, s in zip(self.models, self.scores[i]) if not np.isnan(s)}
            row["costs"] = {m: float(c) for m, c in zip(self.models, self.costs[i]) if not np.isnan(c)}
            lines.append(json.dumps(row, ensure_ascii=False))
        return atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | Path, prices: dict[str, float] | None = None) -> "RoutingTable":
        """Read a table; a row may score some of the models only (a partial table: the others are
        missing cells, NaN), and each score needs a cost from the row or from ``prices``."""
        path = Path(path)
        if not path.is_file():
            raise ValidationError(f"no routing table at {path}")
        rows: list[tuple[str, dict[str, Any], dict[str, Any], Any]] = []
        models: dict[str, None] = {}
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValidationError(f"{where}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(row.get("scores"), dict):
                    raise ValidationError(f"{where}: each row needs a 'query' string and a 'scores' object")
                if not row["scores"]:
                    raise ValidationError(f"{where}: 'scores' is empty; a row needs at least one model's score")
                costs = row.get("costs") or {}
                if not isinstance(costs, dict):
                    raise ValidationError(f"{where}: 'costs' must be an object {{model: dollars}}")
                scores = {m: _number(v, where) for m, v in row["scores"].items()}
                priced = {m: _number(v, where) for m, v in costs.items()}
                for m in scores:
                    if m not in priced:
                        if prices is None:
                            raise ValidationError(f"{where}: no cost for {m!r} and no price table; give per-row costs or --prices FILE")
                        if m not in prices:
                            raise ValidationError(f"the price table has no price for {m!r}")
                        priced[m] = float(prices[m])
                models.update(dict.fromkeys(scores))
                rows.append((row["query"], scores, priced, row.get("embedding")))
        if not rows:
            raise ValidationError(f"{path} has no rows")
        names = list(models)
        nan = float("nan")
        score_rows = [[sc.get(m, nan) for m in names] for _, sc, _, _ in rows]
        cost_rows = [[co.get(m, nan) for m in names] for _, _, co, _ in rows]
        emb_rows = [e for *_, e in rows if e is not None]
        if emb_rows and len(emb_rows) != len(rows):
            raise ValidationError(f"{path}: 'embedding' is on {len(emb_rows)} of {len(rows)} rows; give it on all or none")
        embeddings = None
        if emb_rows:
            lengths = {len(e) for e in emb_rows}
            if len(lengths) != 1:
                raise ValidationError(f"{path}: embeddings have different lengths {sorted(lengths)}")
            embeddings = np.asarray(emb_rows, dtype=np.float32)
        return cls([q for q, *_ in rows], names, np.asarray(score_rows), np.asarray(cost_rows), embeddings)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)):
        raise ValidationError(f"{where}: {value!r} is not a number")
    return float(value)


#: the per-million-token keys a price table may give per model (LLMRouter's, the gateway's)
PER_MILLION_KEYS = (("input_price", "output_price"), ("input_per_million", "output_per_million"))


def load_prices(path: str | Path) -> dict[str, float]:
    """A price table as dollars a call: ``{model: $ per call}``, or per million tokens
    (``{model: {"input_price", "output_price"}}`` as LLMRouter's, or ``input_per_million`` /
    ``output_per_million`` as the gateway's), converted at :data:`ASSUMED_PROMPT_TOKENS` +
    :data:`ASSUMED_ANSWER_TOKENS` tokens a call."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValidationError(f"{path} must hold a JSON object of model → price")
    prices = {}
    for model, value in data.items():
        if not isinstance(value, dict):
            prices[model] = _number(value, f"{path}: {model}")
            continue
        keys = next((k for k in PER_MILLION_KEYS if k[0] in value), None)
        if keys is None:
            raise ValidationError(f"{path}: {model}: give dollars a call, or input_price/output_price (or "
                                  "input_per_million/output_per_million) in dollars per million tokens")
        inp = _number(value[keys[0]], f"{path}: {model}.{keys[0]}")
        prices[model] = per_call(inp, _number(value.get(keys[1], inp), f"{path}: {model}.{keys[1]}"))
    return prices


# ---------------------------------------------------------------------- public data
def shared_data_dir() -> Path | None:
    """``$TINY_DANCER_DATA`` or ``../shared/data`` next to the repository, if it exists."""
    env = os.environ.get("TINY_DANCER_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[3]  # src/tinydancer/llm/tables.py → the checkout
    candidates.append(repo.parent / "shared" / "data")
    candidates.append(Path.cwd().parent / "shared" / "data")
    for c in candidates:
        if (c / "routellm").is_dir() or (c / "llmrouter").is_dir():
            return c
    return None


def _contaminated(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["eval_prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _read_routellm_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    csv.field_size_limit(1 << 30)
    prompts, scores = [], []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            prompts.append(row["prompt"])
            scores.append([row[ROUTELLM_STRONG] == "True", row[ROUTELLM_WEAK] == "True"])
    return prompts, scores


def _routellm_table(prompts: list[str], scores: list[list[float]], contaminated: set[str], name: str) -> RoutingTable:
    models = [ROUTELLM_STRONG, ROUTELLM_WEAK]
    costs = np.tile([ROUTELLM_PRICES[m] for m in models], (len(prompts), 1))
    table = RoutingTable(prompts, models, np.asarray(scores, dtype=np.float32), costs)
    table.meta.update(source=name, contaminated=np.array([p in contaminated for p in prompts]))
    return table


def load_routellm_mmlu(data_dir: Path) -> RoutingTable:
    """All 14,042 MMLU rows, files in sorted name order, with a ``contaminated`` mask in meta."""
    folder = data_dir / "routellm" / "mmlu"
    files = sorted((folder / "responses").glob("mmlu_*.csv"))
    if not files:
        raise ValidationError(f"no MMLU response files under {folder}")
    prompts: list[str] = []
    scores: list[list[float]] = []
    for f in files:
        p, s = _read_routellm_csv(f)
        prompts += p
        scores += s
    return _routellm_table(prompts, scores, _contaminated(folder / "contaminated_prompts.jsonl"), "routellm/mmlu")


def load_routellm_gsm8k(data_dir: Path) -> RoutingTable:
    folder = data_dir / "routellm" / "gsm8k"
    prompts, scores = _read_routellm_csv(folder / "gsm8k_responses.csv")
    return _routellm_table(prompts, scores, _contaminated(folder / "contaminated_prompts.jsonl"), "routellm/gsm8k")


def split_routellm(table: RoutingTable, train_fraction: float = 0.8, seed: int = 0) -> tuple[RoutingTable, RoutingTable]:
    """The fixed split: ``default_rng(seed).permutation(n)``, the first 80 % train (in permutation
    order), the rest test; contaminated prompts dropped from both afterwards."""
    n = len(table)
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(train_fraction * n)
    bad = table.meta.get("contaminated", np.zeros(n, dtype=bool))
    train_idx = [i for i in perm[:cut] if not bad[i]]
    test_idx = [i for i in perm[cut:] if not bad[i]]
    train, test = table.subset(train_idx), table.subset(test_idx)
    for part, idx in ((train, train_idx), (test, test_idx)):
        part.meta.pop("contaminated", None)
        part.meta["source_rows"] = np.asarray(idx)
    return train, test


def load_llmrouter(data_dir: Path, split: str) -> RoutingTable:
    """LLMRouter's ``dcrouter_{split}.json``, each model's cost a call from its per-million-token
    prices at the assumed tokens of a call."""
    folder = data_dir / "llmrouter"
    rows = json.loads((folder / f"dcrouter_{split}.json").read_text(encoding="utf-8"))
    prices = load_prices(folder / "llm_prices.json")
    models = sorted(rows[0]["scores"])
    missing = [m for m in models if m not in prices]
    if missing:
        raise ValidationError(f"llm_prices.json lacks {missing}")
    table = RoutingTable(
        [r["question"] for r in rows],
        models,
        np.asarray([[r["scores"][m] for m in models] for r in rows], dtype=np.float32),
        np.tile([prices[m] for m in models], (len(rows), 1)),
    )
    table.meta.update(source=f"llmrouter/{split}", cluster_id=np.asarray([r.get("cluster_id", -1) for r in rows]))
    return table


def standard_splits(data_dir: Path) -> dict[str, tuple[RoutingTable, RoutingTable]]:
    """The benchmark's fixed (train, test) tables: mmlu, gsm8k and llmrouter."""
    return {
        "mmlu": split_routellm(load_routellm_mmlu(data_dir)),
        "gsm8k": split_routellm(load_routellm_gsm8k(data_dir)),
        "llmrouter": (load_llmrouter(data_dir, "train"), load_llmrouter(data_dir, "test")),
    }
