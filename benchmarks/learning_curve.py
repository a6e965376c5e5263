"""How many labelled prompts are enough: APGR on a fixed test split against the number of labelled
training prompts, several seeds, 95 % intervals.

The question a user asks before `tinydancer label`: how many prompts should I pay to label?  This
measures it on a public table (RouteLLM's MMLU outcomes, GPT-4 vs Mixtral; or GSM8K): the fixed
split of ``tinydancer.llm.tables.standard_splits`` (its test split of 2,809 MMLU prompts never
changes), and for each seed a random order of the training split, whose first n prompts are "the
labelled sample" (nested: the 100 contain the 50).  Each sample trains a router exactly as
``tinydancer router train`` does (its settings chosen by 3-fold cross-validation on the sample,
afresh, not from the packaged router, which learned from MMLU's training split).  The peer, on the
same sample and embeddings in the same run: a k-nearest-neighbour router (k chosen by the same
folds' APGR among 5/10/20/50, capped at the fold size), the simplest thing that learns from labels.

    .venv/bin/python benchmarks/learning_curve.py --embedder static   # MMLU, 5 seeds (RESULTS.md)
    .venv/bin/python benchmarks/learning_curve.py                     # the same with MiniLM (slower)
    .venv/bin/python benchmarks/learning_curve.py --dataset gsm8k --seeds 3 --embedder static

Prints a table (mean APGR, its 95 % t-interval over seeds, ours / kNN) and writes
benchmarks/learning_curve_DATASET_EMBEDDER.png and benchmarks/out/learning_curve_DATASET_EMBEDDER.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import console, environment, table

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.evaluation import routellm_curve
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.selection import kfold
from tinydancer.llm.tables import RoutingTable, shared_data_dir, standard_splits

HERE = Path(__file__).resolve().parent
#: from 60: router train's 3 folds need at least 60 prompts
SIZES = (60, 100, 200, 400, 800, 1600)
KNN_K = (5, 10, 20, 50)
#: two-sided 97.5 % quantiles of Student's t, by degrees of freedom (the interval over seeds)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), T975.get(len(v) - 1, 1.96) * float(v.std(ddof=1)) / np.sqrt(len(v))


def knn_advantage(train_x: np.ndarray, advantage: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Mean strong-minus-weak outcome of each query's k most similar labelled prompts (cosine)."""
    k = min(k, len(train_x))
    sims = x @ train_x.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return advantage[idx].mean(axis=1)


def knn_apgr(sample: RoutingTable, test: RoutingTable, strong: int, weak: int, seed: int) -> tuple[float, int]:
    """The peer: kNN on the same sample, k chosen by 3-fold APGR on the sample."""
    x, s, w = sample.embeddings, sample.scores[:, strong], sample.scores[:, weak]
    adv = s - w
    best = (-np.inf, KNN_K[0])
    for k in KNN_K:
        folds = []
        for train_idx, val_idx in kfold(len(sample), 3, seed):
            if k > len(train_idx):
                continue
            pred = knn_advantage(x[train_idx], adv[train_idx], x[val_idx], k)
            folds.append(routellm_curve(pred, s[val_idx], w[val_idx]).apgr)
        if folds and float(np.mean(folds)) > best[0]:
            best = (float(np.mean(folds)), k)
    k = best[1]
    pred = knn_advantage(x, adv, test.embeddings, k)
    return routellm_curve(pred, test.scores[:, strong], test.scores[:, weak]).apgr, k


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=["mmlu", "gsm8k"], default="mmlu")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--embedder", default="minilm", help="make_embedder name: minilm (the default of router train) or static")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data = args.data_dir or shared_data_dir()
    if data is None:
        sys.exit("the learning curve needs ../shared/data (or --data-dir / TINY_DANCER_DATA)")
    sizes = [int(s) for s in args.sizes.split(",")]
    console.print(environment())
    train, test = standard_splits(Path(data))[args.dataset]
    orders = [np.random.default_rng(1000 + seed).permutation(len(train)) for seed in range(args.seeds)]
    used = sorted({int(i) for order in orders for i in order[: max(sizes)]})
    emb = make_embedder(args.embedder)
    t0 = time.perf_counter()
    test = test.with_embeddings(emb)
    pool = train.subset(used).with_embeddings(emb)
    where = {row: j for j, row in enumerate(used)}
    console.print(f"{args.dataset}: {len(test)} test prompts, {len(used)} distinct training prompts drawn; "
                  f"embedded with {emb.id} in {time.perf_counter() - t0:.0f} s")
    strong = int(np.argmax(train.scores.mean(axis=0)))
    weak = 1 - strong
    results: dict[int, dict[str, list[float]]] = {n: {"ours": [], "knn": [], "seconds": []} for n in sizes}
    for seed, order in enumerate(orders):
        for n in sizes:
            sample = pool.subset([where[int(i)] for i in order[:n]])
            t1 = time.perf_counter()
            router = QueryRouter.fit(sample, QueryRouterConfig(seed=seed), embedder=emb)
            seconds = time.perf_counter() - t1
            ours = float(router.evaluate(test)["apgr"])
            peer, k = knn_apgr(sample, test, strong, weak, seed)
            results[n]["ours"].append(ours)
            results[n]["knn"].append(peer)
            results[n]["seconds"].append(seconds)
            console.print(f"seed {seed}, {n:5d} labelled: ours APGR {ours:.3f} (train {seconds:.1f} s), kNN {peer:.3f} (k {k})")
    rows, summary = [], {}
    for n in sizes:
        ours, half = interval(results[n]["ours"])
        knn, khalf = interval(results[n]["knn"])
        ratio = np.asarray(results[n]["ours"]) / np.asarray(results[n]["knn"])
        rows.append([f"{n:,}", f"{ours:.3f} ± {half:.3f}", f"{knn:.3f} ± {khalf:.3f}", f"{ratio.mean():.2f}",
                     f"{np.mean(results[n]['seconds']):.1f} s"])
        summary[n] = {"ours": results[n]["ours"], "knn": results[n]["knn"], "ours_mean": ours, "ours_ci95": half,
                      "knn_mean": knn, "knn_ci95": khalf, "train_s": results[n]["seconds"]}
    console.print(table(f"{args.dataset}: APGR on the fixed test split ({len(test)} prompts) against labelled prompts, "
                        f"{args.seeds} seeds, mean ± 95 % interval ({emb.id})",
                        ["labelled prompts", "ours (router train)", "kNN", "ours / kNN", "train time"], rows,
                        key=f"learning-curve-{args.dataset}"))
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"learning_curve_{args.dataset}_{args.embedder}.json").write_text(json.dumps({"embedder": emb.id, "sizes": summary}, indent=1))
    plot(sizes, summary, HERE / f"learning_curve_{args.dataset}_{args.embedder}.png", args.dataset, len(test), args.seeds,
         emb.id)


def plot(sizes: list[int], summary: dict, path: Path, dataset: str, n_test: int, seeds: int, embedder: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("(install tinydancer[plot] for the PNG)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("ours", "tinydancer router train"), ("knn", "kNN (peer)")):
        mean = np.array([summary[n][f"{key}_mean"] for n in sizes])
        half = np.array([summary[n][f"{key}_ci95"] for n in sizes])
        ax.errorbar(sizes, mean, yerr=half, marker="o", capsize=3, label=label)
    ax.axhline(0.5, color="grey", linestyle=":", label="random routing")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("labelled prompts")
    ax.set_ylabel(f"APGR on {dataset}'s test split ({n_test})")
    ax.set_title(f"How many prompts to label ({seeds} seeds, 95 % intervals, {embedder})", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
