"""What cross-validated settings cost and change (issue 15, item 2), in one process.

For each table of ``robustness.py``: ``QueryRouter.fit`` with ``folds=1`` (the hidden size chosen
on one validation slice, the network alone, k = 100, memory prior 1: the settings before
cross-validation) against the default (3-fold cross-validation of k, hidden size, blend with
a linear head, memory prior).  Prints each one's training seconds (embeddings cached, not
counted), the ratio, the test AIQ of both, what cross-validation chose, and its folds' AIQ.

    .venv/bin/python -W ignore benchmarks/selection_cost.py      # ~4 min here
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import console, environment, table
from robustness import resampled_aiq, tables

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.evaluation import sweep_choices
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.tables import RoutingTable, shared_data_dir


def aiq_on_test(router: QueryRouter, test: RoutingTable) -> float:
    pred, _known = router.remember(test.queries, router.estimate(test.embeddings))
    choice = sweep_choices(pred, test.costs, (router.strong, router.weak) if router.is_pair else None)
    return float(resampled_aiq(choice, test, np.ones((1, len(test))))[0])


def main(data: Path) -> None:
    console.print(environment())
    emb = make_embedder("minilm")
    rows = []
    for name, train, test in tables(data, lambda t: t.with_embeddings(emb)):
        timed = {}
        for label, config in (("one slice", QueryRouterConfig(folds=1)), ("cv", QueryRouterConfig())):
            t0 = time.perf_counter()
            router = QueryRouter.fit(train, config)
            timed[label] = (time.perf_counter() - t0, aiq_on_test(router, test), router)
        sel = timed["cv"][2].info["selection"]
        c, (lo, hi) = sel["chosen"], sel["cv_aiq_range"]
        rows.append([name, f"{timed['one slice'][0]:.1f}", f"{timed['cv'][0]:.1f}",
                     f"{timed['cv'][0] / timed['one slice'][0]:.1f}×", f"{timed['one slice'][1]:.4f}",
                     f"{timed['cv'][1]:.4f}", f"{timed['cv'][1] - timed['one slice'][1]:+.4f}",
                     f"h {c['hidden_dim']}, w {c['network_weight']:g}, k {c['neighbours']}, prior {c['memory_prior']:g}",
                     f"{sel['cv_aiq']:.4f} [{lo:.4f}, {hi:.4f}], sd {sel['cv_aiq_std']:.4f}", str(sel["workers"])])
        console.print(f"{name}: done")
    console.print(table("cross-validated settings against one validation slice (training seconds, test AIQ)",
                        ["table", "one slice s", "cv s", "ratio", "one slice AIQ", "cv AIQ", "cv − one slice",
                         "cv chose", "cv AIQ over folds [min, max]", "workers"], rows, key="selection-cost"))


if __name__ == "__main__":
    found = shared_data_dir()
    if found is None:
        raise SystemExit("no ../shared/data (or $TINY_DANCER_DATA): this benchmark needs the routing datasets")
    main(found)
