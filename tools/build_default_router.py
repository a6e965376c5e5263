"""Build the gateway's packaged default router: two models named ``strong`` and ``weak``.

Trained on the training splits of every public outcome table in ../shared/data
(``tinydancer.llm.public_tables``: RouteLLM's MMLU, GSM8K and MT-bench, LLMRouter's 14 task
families, AlpacaEval; each mapped onto a strong/weak pair, see that module), with the embedder
given (the default, static, was chosen by ``benchmarks/quality.py --generalization``: see
benchmarks/RESULTS.md), the prompt features kept only if cross-validation prefers them, and without
the outcome memory (so the file stays tens of KB and holds no training text).  Its settings are
cross-validated on random folds of the pooled table; ``--grouped-folds`` holds out whole tables
instead (``public_tables.source_groups``): built that way it routes AlpacaEval's test split below
random (0.484) and gains nothing held out (benchmarks/RESULTS.md, issue 30, 2026-12-07), so the
shipped file keeps random folds.  The operating point
saved with it sends 30 % of typical queries to ``strong``.  The test splits are only read to report
the router's APGR on them once, here.

    .venv/bin/python tools/build_default_router.py [--data ../shared/data] [--embedder static] [--no-features] \
        [--grouped-folds]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.prompt_features import FEATURES_ID
from tinydancer.llm.public_tables import balance_gaps, merge, packaged_splits, source_groups
from tinydancer.llm.tables import shared_data_dir

OUT = Path(__file__).resolve().parents[1] / "src" / "tinydancer" / "gateway" / "default_router"
#: the file must stay small enough to ship in the wheel
MAX_BYTES = 200_000


def train_router(splits: dict[str, tuple[RoutingTable, RoutingTable | None]], embedder: Any, *, features: bool = True,
                 balance: bool = True, grouped: bool = False, progress: Callable[[str], None] | None = None) -> QueryRouter:
    """The packaged router's recipe: every table's training split in one strong/weak table, each
    table's strong-weak gap shrunk to the tables' median (``public_tables.balance_gaps``).  With
    ``grouped`` its settings and inputs are chosen on folds that hold out whole tables (judged by
    how they do on a table the fold never saw) rather than random rows of the pooled table."""
    parts = [tr for tr, _te in splits.values()]
    train = merge(balance_gaps(parts) if balance else parts, "every public table's training split")
    config = QueryRouterConfig(memory=False, seed=0, feature_sets=("none", FEATURES_ID) if features else ("none",))
    router = QueryRouter.fit(train, config, embedder=embedder, progress=progress,
                             groups=source_groups(parts) if grouped else None)
    router.calibrate(0.3)
    router.info["trained_on"] = (
        "training splits of RouteLLM MMLU, GSM8K, MT-bench (strong = gpt-4-1106-preview, weak = Mixtral-8x7B), "
        "LLMRouter (strong = llama-3.1-nemotron-51b-instruct, weak = gemma-2-9b-it) and AlpacaEval (strong = "
        "gpt-4-1106-preview, weak = gpt-3.5-turbo-1106); " + ", ".join(f"{k} {len(tr)}" for k, (tr, _te) in splits.items()))
    return router


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--embedder", default="static", help="make_embedder name (static, minilm)")
    ap.add_argument("--no-features", action="store_true", help="do not offer the prompt features to cross-validation")
    ap.add_argument("--no-balance", action="store_true", help="keep each table's own strong-weak gap")
    ap.add_argument("--grouped-folds", action="store_true", help="choose the settings on folds that hold out whole "
                    "tables instead of random folds of the pooled table")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    data = args.data or shared_data_dir()
    if data is None:
        raise SystemExit("no shared data folder: pass --data")
    splits = packaged_splits(data)
    router = train_router(splits, make_embedder(args.embedder), features=not args.no_features,
                          balance=not args.no_balance, grouped=args.grouped_folds, progress=print)
    path = router.save(args.out)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size:,} bytes, over the {MAX_BYTES:,} the package allows")
    report = {}
    for name, (_train, test) in splits.items():
        if test is not None:
            result = router.evaluate(test)
            report[name] = {k: round(float(result[k]), 4) for k in ("apgr", "aiq") if k in result}
    print(json.dumps({"file": str(path), "bytes": size, "embedder": router.embedder_id,
                      "features": router.info.get("features"), "test": report}, indent=1))


if __name__ == "__main__":
    main()
