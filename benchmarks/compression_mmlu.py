"""The MMLU half of the compression report: APGR on the test split against router size."""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import console, table

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.tables import shared_data_dir, standard_splits


def mmlu_report() -> list[tuple[str, float, int]]:
    data = shared_data_dir()
    if data is None:
        console.print("[yellow]MMLU compression skipped: ../shared/data is not present[/]")
        return []
    emb = make_embedder("minilm")
    train, test = standard_splits(data)["mmlu"]
    train, test = train.with_embeddings(emb), test.with_embeddings(emb)
    # the network's compression is measured without the outcome memory (a default since issue 3,
    # hundreds of KB of remembered outcomes that no network compression touches); the last row
    # shows the default, memory included.  folds=1: the FastGRNN alone, as compressed (a linear
    # head that cross-validation may blend in is float32 and not part of this comparison)
    base = dict(hidden_dims=(32,), memory=False, folds=1)
    sparse60 = dict(w_sparsity=0.6, u_sparsity=0.6)
    variants = [
        ("fp32 dense", QueryRouterConfig(**base), False),
        ("fp32 low-rank (r=16)", QueryRouterConfig(rank=16, **base), False),
        ("fp32 sparse 60 %", QueryRouterConfig(**sparse60, **base), False),
        ("int8 dense", QueryRouterConfig(**base), True),
        ("int8 sparse 60 %", QueryRouterConfig(**sparse60, **base), True),
        ("int8 sparse 80 %", QueryRouterConfig(w_sparsity=0.8, u_sparsity=0.8, **base), True),
        ("int8 low-rank (r=16) + sparse 60 %", QueryRouterConfig(rank=16, **sparse60, **base), True),
        ("int8 sparse 60 % + outcome memory (default)", QueryRouterConfig(hidden_dims=(32,), folds=1, **sparse60), True),
    ]
    rows, points = [], []
    for name, cfg, quant in variants:
        router = QueryRouter.fit(train, cfg, embedder=emb)
        if quant:
            router.model.quantize()
        apgr = router.evaluate(test)["apgr"]
        with tempfile.TemporaryDirectory() as tmp:
            file_bytes = router.save(Path(tmp)).stat().st_size
        rows.append([name, f"{apgr:.4f}", f"{router.model.size_bytes():,}", f"{file_bytes:,}"])
        if router.memory is None:
            points.append((name, apgr, router.model.size_bytes()))
    console.print(table("MMLU router (384-d MiniLM → 32 hidden): test APGR against size",
                        ["model", "APGR", "size_bytes (EdgeML)", "file bytes"], rows, key="mmlu-compression"))
    return points


if __name__ == "__main__":
    mmlu_report()
