"""Routing from partial outcomes: each training query labelled for 2 of LLMRouter's 9 models.

Real logs and labelled samples seldom score every model on every query.  This trains on
LLMRouter's training split with, for each query, the scores of 2 models drawn at random (seed 0)
and the other 7 cells missing, and compares on the same (complete) test split:
- our router trained on the partial table (a missing cell's target is the mean outcome of the
  query's neighbours that have one; ``QueryRouter.fit``);
- our router trained on the full table;
- ridge on the same partial data: one ridge per model, fit on the rows where that model was
  scored, alpha chosen on the validation slice by squared error on its observed cells;
- ridge on the full table, tuned as in benchmarks/quality.py.
AIQ with a 95 % bootstrap interval (test queries resampled, 1,000 times).  The outcome memory
is off for our routers: this measures what the network learns from partial data.

    .venv/bin/python benchmarks/partial_tables.py [--keep 2] [--boot 1000]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import console, environment, table
from quality import RIDGE_ALPHA, multi_metrics, tune
from sklearn.linear_model import Ridge

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig, validation_split
from tinydancer.llm.tables import RoutingTable, load_llmrouter, shared_data_dir


def hide_cells(train: RoutingTable, keep: int, seed: int) -> RoutingTable:
    rng = np.random.default_rng(seed)
    n, m = train.scores.shape
    kept = np.zeros((n, m), dtype=bool)
    order = np.argsort(rng.random((n, m)), axis=1)[:, :keep]
    np.put_along_axis(kept, order, True, axis=1)
    out = RoutingTable(train.queries, train.models, np.where(kept, train.scores, np.nan),
                       np.where(kept, train.costs, np.nan), train.embeddings)
    out.meta["embedder_id"] = train.meta.get("embedder_id")
    return out


def ridge_partial(train: RoutingTable, x_test: np.ndarray) -> tuple[np.ndarray, str]:
    """Per-model ridge on each model's observed rows; alpha by validation squared error on observed cells."""
    fit_i, val_i = validation_split(len(train), QueryRouterConfig().validation_fraction, QueryRouterConfig().seed)
    x, y, seen = train.embeddings, train.scores, train.observed
    errors = {}
    for alpha in RIDGE_ALPHA:
        sq, count = 0.0, 0
        for j in range(y.shape[1]):
            rows = fit_i[seen[fit_i, j]]
            pred = Ridge(alpha=alpha).fit(x[rows], y[rows, j]).predict(x[val_i])
            obs = seen[val_i, j]
            sq += float(((pred[obs] - y[val_i, j][obs]) ** 2).sum())
            count += int(obs.sum())
        errors[alpha] = sq / count
    best = min(RIDGE_ALPHA, key=lambda a: errors[a])
    pred = np.column_stack([Ridge(alpha=best).fit(x[seen[:, j]], y[seen[:, j], j]).predict(x_test)
                            for j in range(y.shape[1])])
    return pred, f"alpha {best} chosen by validation squared error on observed cells"


def bootstrap(pred: np.ndarray, test: RoutingTable, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    point = multi_metrics(pred, test)["aiq"]
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(test), len(test))
        draws.append(multi_metrics(pred[idx], test.subset(idx))["aiq"])
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return point, float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=int, default=2, help="models scored per training query")
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("needs ../shared/data (or TINY_DANCER_DATA)")
    console.print(environment())
    emb = make_embedder("minilm")
    train = load_llmrouter(data, "train").with_embeddings(emb)
    test = load_llmrouter(data, "test").with_embeddings(emb)
    partial = hide_cells(train, args.keep, seed=0)
    config = QueryRouterConfig(memory=False)
    rows = []

    def add(name: str, pred: np.ndarray, note: str) -> None:
        point, lo, hi = bootstrap(pred, test, args.boot)
        rows.append([name, f"{point:.3f}", f"{lo:.3f} – {hi:.3f}", note])

    m = len(train.models)
    full_router = QueryRouter.fit(train, config, embedder=emb)
    add("tinydancer, full table", full_router.predict(test.embeddings)[:, :m], f"hidden {full_router.info['hidden_dim']}")
    part_router = QueryRouter.fit(partial, config, embedder=emb)
    add(f"tinydancer, {args.keep} of {m} cells a query", part_router.predict(test.embeddings)[:, :m],
        f"hidden {part_router.info['hidden_dim']}; {part_router.info['missing_cells']:,} cells missing")
    pred, note = ridge_partial(partial, test.embeddings)
    add(f"ridge, {args.keep} of {m} cells a query", pred, note)
    alpha, note = tune(RIDGE_ALPHA, lambda a, xf, yf, xe: Ridge(alpha=a).fit(xf, yf).predict(xe), train, train.scores)
    add("ridge, full table", Ridge(alpha=alpha).fit(train.embeddings, train.scores).predict(test.embeddings), f"alpha {alpha}")
    console.print(table(f"LLMRouter test split ({len(test)} queries, complete): AIQ and its 95 % bootstrap interval "
                        f"({args.boot} resamples)", ["router", "AIQ", "95 % interval", "note"], rows))


if __name__ == "__main__":
    main()
