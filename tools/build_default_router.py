"""Build the gateway's packaged default router: two models named ``strong`` and ``weak``.

Trained on the training splits of RouteLLM's MMLU and GSM8K outcome tables (GPT-4 as ``strong``,
Mixtral-8x7B as ``weak``; the data is Apache-2.0, see ../shared/data/routellm/LICENSE), with the
MiniLM embedder and without the outcome memory (so the file stays tens of KB and holds no
training text).  The operating point saved with it sends 30 % of typical queries to ``strong``.
The test splits are only read to report the router's APGR on them once, here.

    .venv/bin/python tools/build_default_router.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.tables import load_routellm_gsm8k, load_routellm_mmlu, shared_data_dir, split_routellm

OUT = Path(__file__).resolve().parents[1] / "src" / "tinydancer" / "gateway" / "default_router"


def renamed(parts: list[RoutingTable]) -> RoutingTable:
    return RoutingTable(sum((p.queries for p in parts), []), ["strong", "weak"],
                        np.concatenate([p.scores for p in parts]), np.concatenate([p.costs for p in parts]),
                        meta={"source": "routellm mmlu+gsm8k train splits"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()
    data = args.data or shared_data_dir()
    if data is None:
        raise SystemExit("no shared data folder: pass --data")
    splits = [split_routellm(load_routellm_mmlu(data)), split_routellm(load_routellm_gsm8k(data))]
    train = renamed([s[0] for s in splits])
    emb = make_embedder("minilm")
    router = QueryRouter.fit(train, QueryRouterConfig(memory=False, seed=0), embedder=emb, progress=print)
    router.calibrate(0.3)
    router.info["trained_on"] = "RouteLLM MMLU + GSM8K training splits (Apache-2.0); strong = gpt-4-1106-preview, weak = Mixtral-8x7B"
    path = router.save(OUT)
    report = {}
    for name, (_train, test) in zip(("mmlu", "gsm8k"), splits):
        t = renamed([test])
        result = router.evaluate(t.with_embeddings(emb))
        report[name] = {k: result[k] for k in ("apgr", "aiq") if k in result}
    print(json.dumps({"file": str(path), "bytes": path.stat().st_size, "test": report}, indent=1))


if __name__ == "__main__":
    main()
