"""Routing quality on real outcome data, side by side with the alternatives, in one command.

Fixed, seeded splits (``tinydancer.llm.tables.standard_splits``): MMLU and GSM8K — all rows in file
order (files sorted by name), ``numpy.random.default_rng(0).permutation``, first 80 % train, the
rest test, contaminated prompts dropped; LLMRouter — its own train/test, each model's input price
as cost per query.  Every router sees the same MiniLM embeddings (cached on disk after the first
run) and is scored on the test split only; ours picks its hyperparameters on a validation slice of
the training split.

Rows: tinydancer's FastGRNN router (and ablations), random, always-weak, always-strong, oracle,
kNN, logistic regression (two models) / ridge (N models) from scikit-learn, and the Rust
crate's own ``trainRouter``/``score`` (npm @ruvector/tiny-dancer 0.1.22, through Node).

The baselines are tuned as ours is: kNN's k, ridge's alpha and logistic regression's C are each
chosen by the same 3-fold cross-validation of the training split that our router chooses its
settings by (``selection.kfold``), by mean APGR for two models and AIQ for more, then refit on
the whole training split.  The note column says what was tried and chosen.

Some test queries appear verbatim in the training split (119 of LLMRouter's 500, 44 of MMLU's
2,809).  Our router remembers training outcomes for such repeats (``tinydancer.llm.memory``), so the
table also shows it without that memory, the baselines with the same memory, and — where there
are repeats — a second table that scores the repeated and the new test queries separately.

    .venv/bin/python benchmarks/quality.py                  # all three datasets, ~10 min the first time
    .venv/bin/python benchmarks/quality.py --only mmlu      # one dataset
    .venv/bin/python benchmarks/quality.py --robustness     # stress tables with bootstrap intervals (robustness.py)
    .venv/bin/python benchmarks/quality.py --robustness --embedders minilm,static   # the same tables, embedders compared
    .venv/bin/python benchmarks/quality.py --generalization --embedders static,minilm  # leave one dataset out (generalization.py)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from _common import console, environment, table, time_call

from tinydancer.llm.embeddings import MiniLMEmbedder, make_embedder
from tinydancer.llm.evaluation import (aiq, brier_score, expected_calibration_error, lambda_grid, oracle_points, oracle_scores,
                                   random_point, routellm_curve, sweep_points)
from tinydancer.llm.memory import OutcomeMemory, query_keys
from tinydancer.plotting import plot_lines
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.selection import kfold
from tinydancer.llm.tables import RoutingTable, shared_data_dir, standard_splits

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
#: the fine-tuned MiniLM teacher's test numbers, as measured by the data's authors (SOURCES.md);
#: its test logits are not shipped, so it is reported, not run
TEACHER_REPORTED = {"apgr": 0.710, "cpt50": 24.4, "cpt80": 47.9}


class Row:
    def __init__(self, name: str, **values: object) -> None:
        self.name = name
        self.values = values


def pair_metrics(scores: np.ndarray, test: RoutingTable) -> dict[str, float]:
    """APGR / CPT from per-query 'strong needed' scores, plus AIQ from the threshold sweep."""
    s_i, w_i = test.strong_weak()
    s, w = test.scores[:, s_i], test.scores[:, w_i]
    curve = routellm_curve(scores, s, w)
    knobs = np.quantile(scores, np.linspace(0, 1, 201))
    pts = [sweep_points(np.where(scores >= t, s_i, w_i), test.scores, test.costs) for t in knobs]
    pts.append(sweep_points(np.full(len(test), w_i), test.scores, test.costs))
    c = test.mean_costs
    return {
        "apgr": curve.apgr, "cpt50": curve.cpt(0.5), "cpt80": curve.cpt(0.8),
        "aiq": aiq([p[0] for p in pts], [p[1] for p in pts], float(c.min()), float(c.max())),
        "_curve": ([p[0] for p in pts], [p[1] for p in pts]),
    }


def multi_metrics(pred: np.ndarray, test: RoutingTable) -> dict[str, float]:
    """AIQ from sweeping argmax(predicted quality - lambda * cost)."""
    pts = [sweep_points(np.argmax(pred - lam * test.costs, axis=1), test.scores, test.costs)
           for lam in lambda_grid(pred, test.costs, 201)]
    c = test.mean_costs
    return {"aiq": aiq([p[0] for p in pts], [p[1] for p in pts], float(c.min()), float(c.max())),
            "_curve": ([p[0] for p in pts], [p[1] for p in pts])}


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, k: int = 50) -> np.ndarray:
    sims = x @ train_x.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return train_y[idx].mean(axis=1)


#: what each baseline is tuned over on the validation slice
#: (wide enough that no choice in this run sits on an edge of its grid)
KNN_K = (5, 10, 20, 50, 100, 200, 400, 800)
RIDGE_ALPHA = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
LOGISTIC_C = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def tune(grid: tuple, predict: Callable[[object, np.ndarray, np.ndarray, np.ndarray], np.ndarray], train: RoutingTable,
         target: np.ndarray) -> tuple[object, str]:
    """The grid value whose predictions cross-validate best, and a note saying what was tried.

    ``predict(value, x_fit, y_fit, x_eval)`` fits on ``x_fit`` and predicts ``x_eval``.  The folds
    are our router's (``selection.kfold`` with QueryRouterConfig's defaults); the criterion is the
    mean over folds of APGR for two models and AIQ for more.
    """
    cfg = QueryRouterConfig()
    x = train.embeddings
    metric = "apgr" if len(train.models) == 2 else "aiq"
    scores: dict[object, list[float]] = {value: [] for value in grid}
    for fit_i, val_i in kfold(len(train), cfg.folds, cfg.seed):
        val = train.subset(val_i)
        for value in grid:
            pred = predict(value, x[fit_i], target[fit_i], x[val_i])
            scores[value].append((pair_metrics if metric == "apgr" else multi_metrics)(pred, val)[metric])
    best = max(grid, key=lambda v: np.mean(scores[v]))
    return best, (f"{best} chosen by {cfg.folds}-fold {metric.upper()} from "
                  + ", ".join(f"{v}: {np.mean(scores[v]):.3f}" for v in grid))


def rust_crate(train: RoutingTable, test: RoutingTable, workdir: Path) -> dict[str, object] | None:
    """Run the crate's trainRouter/score through Node; None when Node or the package is missing."""
    script = HERE / "peers" / "rust_crate.js"
    if shutil.which("node") is None or not (HERE / "node_modules" / "@ruvector" / "tiny-dancer").is_dir():
        console.print("[yellow]Rust crate skipped: run `npm ci --prefix benchmarks` (Node.js needed)[/]")
        return None
    prices = {m: float(c) for m, c in zip(train.models, train.mean_costs)}
    job = {
        "train": [{"embedding": [round(float(v), 6) for v in e], "scores": {m: float(q) for m, q in zip(train.models, row)}}
                  for e, row in zip(train.embeddings, train.scores)],
        "prices": prices,
        "options": {},
        "test": [[round(float(v), 6) for v in e] for e in test.embeddings],
    }
    (workdir / "job.json").write_text(json.dumps(job))
    proc = subprocess.run(["node", str(script), str(workdir / "job.json"), str(workdir / "out.json"), str(workdir / "crate.safetensors")],
                          capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        console.print(f"[red]Rust crate failed:[/] {proc.stderr[-500:]}")
        return None
    return json.loads((workdir / "out.json").read_text())


def remembered(pred: np.ndarray, train: RoutingTable, targets: np.ndarray, test: RoutingTable) -> np.ndarray:
    """A baseline's predictions with the same outcome memory our router uses (prior weight 1)."""
    out = pred[:, None] if pred.ndim == 1 else pred
    blended = OutcomeMemory.build(train.queries, targets.reshape(len(train), -1)).blend(test.queries, out)[0]
    return blended[:, 0] if pred.ndim == 1 else blended


def subset_rows(predictions: dict[str, np.ndarray], test: RoutingTable, seen: np.ndarray) -> list[list[str]]:
    """AIQ (N models) or APGR (two) of each predictor on the repeated and on the new test queries."""
    pair = len(test.models) == 2
    cells = []
    for label, pred in predictions.items():
        row = [label]
        for mask in (seen, ~seen):
            part = test.subset(np.flatnonzero(mask))
            row.append(f"{(pair_metrics(pred[mask], part)['apgr'] if pair else multi_metrics(pred[mask], part)['aiq']):.3f}")
        cells.append(row)
    if not pair:  # the references on each part, for scale
        parts = [test.subset(np.flatnonzero(mask)) for mask in (seen, ~seen)]
        lo_hi = [(float(p.mean_costs.min()), float(p.mean_costs.max())) for p in parts]
        cells.append(["best single models (hull)"] + [f"{aiq(list(p.mean_costs), list(p.scores.mean(axis=0)), *b):.3f}" for p, b in zip(parts, lo_hi)])
        cells.append(["oracle"] + [f"{aiq(*oracle_points(p.scores, p.costs), *b):.3f}" for p, b in zip(parts, lo_hi)])
    return cells


def run_dataset(name: str, train: RoutingTable, test: RoutingTable, teacher: np.ndarray | None,
                skip_rust: bool) -> tuple[list[Row], list[list[str]], np.ndarray]:
    pair = len(train.models) == 2
    rows: list[Row] = []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    metrics = pair_metrics if pair else multi_metrics
    x_tr, x_te = train.embeddings, test.embeddings
    assert x_tr is not None and x_te is not None
    one = x_te[0]
    seen = np.isin(query_keys(test.queries), query_keys(train.queries))
    by_subset: dict[str, np.ndarray] = {}

    def add(label: str, values: dict, train_s: float | None, latency_s: float | None, note: str = "",
            quality: np.ndarray | None = None) -> None:
        """``quality``: the predictor's per-model quality on test, when it makes one (for Brier and ECE)."""
        curve = values.pop("_curve", None)
        if curve is not None:
            curves[label] = curve
        if quality is not None:
            q = np.clip(quality, 0.0, 1.0)
            values = {**values, "brier": brier_score(q, test.scores), "ece": expected_calibration_error(q, test.scores)}
        rows.append(Row(label, train_s=train_s, latency_s=latency_s, note=note, **values))

    # ours, and ablations
    variants = [("tinydancer FastGRNN", QueryRouterConfig(), None),
                ("  without neighbour smoothing", QueryRouterConfig(neighbours=0), None)]
    if teacher is not None:
        variants.append(("  + distilled from the MiniLM teacher", QueryRouterConfig(), teacher))
    for label, cfg, logits in variants:
        t0 = time.perf_counter()
        router = QueryRouter.fit(train, cfg, teacher_logits=logits)
        train_s = time.perf_counter() - t0
        net_out = router.estimate(x_te)  # the network, blended with the linear head if CV kept one
        out, hit = router.remember(test.queries, net_out)
        cols = 2 if pair else slice(0, len(train.models))
        head = ("" if router.head is None else
                f" + linear head {router.head.nbytes:,} B, network weight {router.network_weight:g}")
        note = f"hidden {router.info['hidden_dim']}, {router.model.size_bytes():,} B{head}"
        if router.memory is not None:
            note += f"; memory {router.memory.nbytes:,} B knew {int(hit.sum())} test queries"
        m = len(train.models)
        add(label, metrics(out[:, cols], test), train_s, time_call(lambda: router.route(one)), note, out[:, :m])
        if label == "tinydancer FastGRNN":
            by_subset[label] = out[:, cols]
            by_subset["  without outcome memory"] = net_out[:, cols]
            add("  without outcome memory", metrics(net_out[:, cols], test), train_s, None, "the same router, memory off",
                net_out[:, :m])

    # references
    if pair:
        s_i, w_i = test.strong_weak()
        s, w = test.scores[:, s_i], test.scores[:, w_i]
        rng = np.random.default_rng(0)
        add("random", pair_metrics(rng.random(len(test)), test), None, None)
        add("oracle", pair_metrics(oracle_scores(s, w) + 1e-9 * rng.random(len(test)), test), None, None)
        rows.append(Row("always-weak", aiq=None, note=f"quality {w.mean():.3f}, ${test.mean_costs[w_i]:.5f} a call"))
        rows.append(Row("always-strong", aiq=None, note=f"quality {s.mean():.3f}, ${test.mean_costs[s_i]:.5f} a call"))
    else:
        c = test.mean_costs
        ox, oy = oracle_points(test.scores, test.costs)
        rows.append(Row("oracle", aiq=aiq(ox, oy, float(c.min()), float(c.max()))))
        rc, rq = random_point(test.scores, test.costs)
        rows.append(Row("random model per query", aiq=aiq([rc], [rq], float(c.min()), float(c.max()))))
        best = int(np.argmax(test.scores.mean(axis=0)))
        rows.append(Row("best single models (hull of the 9)", aiq=aiq(list(c), list(test.scores.mean(axis=0)), float(c.min()), float(c.max())),
                        note=f"best alone: {test.models[best]} {test.scores[:, best].mean():.3f} at the top price"))

    # scikit-learn and kNN baselines on the same embeddings
    from sklearn.linear_model import LogisticRegression, Ridge

    def knn(k: object, xf: np.ndarray, yf: np.ndarray, xe: np.ndarray) -> np.ndarray:
        return knn_predict(xf, yf, xe, min(int(k), len(xf)))  # type: ignore[call-overload]

    if pair:
        s_tr, w_tr = train.scores[:, train.strong_weak()[0]], train.scores[:, train.strong_weak()[1]]
        adv = s_tr - w_tr
        k, note = tune(KNN_K, knn, train, adv)
        knn_scores = knn_predict(x_tr, adv, x_te, k)
        add("kNN", pair_metrics(knn_scores, test), 0.0, time_call(lambda: knn_predict(x_tr, adv, one[None], k)),
            f"mean advantage q_strong − q_weak of the k nearest; k = {note}")
        by_subset["kNN"] = knn_scores
        by_subset["kNN + outcome memory"] = remembered(knn_scores, train, adv, test)
        add("kNN + outcome memory", pair_metrics(by_subset["kNN + outcome memory"], test), 0.0, None, f"k = {k}")
        win = (s_tr > w_tr).astype(np.float64)
        k_win, note = tune(KNN_K, knn, train, win)
        add("kNN, win labels", pair_metrics(knn_predict(x_tr, win, x_te, k_win), test), 0.0, None,
            f"share of the k nearest where only the strong model was right; k = {note}")

        def logistic(c: object, xf: np.ndarray, yf: np.ndarray, xe: np.ndarray) -> np.ndarray:
            return LogisticRegression(C=float(c), max_iter=2000).fit(xf, yf > 0.5).predict_proba(xe)[:, 1]  # type: ignore[arg-type]

        c_best, note = tune(LOGISTIC_C, logistic, train, win)
        t0 = time.perf_counter()
        clf = LogisticRegression(C=float(c_best), max_iter=2000).fit(x_tr, s_tr > w_tr)  # type: ignore[arg-type]
        lr_s = time.perf_counter() - t0
        add("logistic regression", pair_metrics(clf.predict_proba(x_te)[:, 1], test), lr_s,
            time_call(lambda: clf.predict_proba(one[None])), f"C = {note}")
    else:
        k, k_note = tune(KNN_K, knn, train, train.scores)
        knn_q = knn_predict(x_tr, train.scores, x_te, k)
        add("kNN", multi_metrics(knn_q, test), 0.0, time_call(lambda: knn_predict(x_tr, train.scores, one[None], k)),
            f"k = {k_note}", quality=knn_q)

        def ridge_fit(a: object, xf: np.ndarray, yf: np.ndarray, xe: np.ndarray) -> np.ndarray:
            return Ridge(alpha=float(a)).fit(xf, yf).predict(xe)  # type: ignore[arg-type]

        alpha, a_note = tune(RIDGE_ALPHA, ridge_fit, train, train.scores)
        t0 = time.perf_counter()
        ridge = Ridge(alpha=float(alpha)).fit(x_tr, train.scores)  # type: ignore[arg-type]
        r_s = time.perf_counter() - t0
        ridge_q = ridge.predict(x_te)
        add("ridge regression", multi_metrics(ridge_q, test), r_s, time_call(lambda: ridge.predict(one[None])),
            f"alpha = {a_note}", quality=ridge_q)
        for label, pred in (("kNN", knn_q), ("ridge regression", ridge_q)):
            by_subset[label] = pred
            by_subset[f"{label} + outcome memory"] = remembered(pred, train, train.scores, test)
            add(f"{label} + outcome memory", multi_metrics(by_subset[f"{label} + outcome memory"], test), None, None,
                quality=by_subset[f"{label} + outcome memory"])

    if not skip_rust:
        with tempfile.TemporaryDirectory() as tmp:
            res = rust_crate(train, test, Path(tmp))
        if res is not None:
            crate_scores = 1.0 - np.asarray(res["scores"])  # the crate scores "cheap is good enough"
            if pair:
                values = pair_metrics(crate_scores, test)
            else:
                # the crate's binary decision: the cheapest model when 'good enough', else the best single model
                cheap = int(np.argmin(train.mean_costs))
                best = int(np.argmax(train.scores.mean(axis=0)))
                knobs = np.quantile(crate_scores, np.linspace(0, 1, 201))
                pts = [sweep_points(np.where(crate_scores >= t, best, cheap), test.scores, test.costs) for t in knobs]
                c = test.mean_costs
                values = {"aiq": aiq([p[0] for p in pts], [p[1] for p in pts], float(c.min()), float(c.max())),
                          "_curve": ([p[0] for p in pts], [p[1] for p in pts])}
            add(f"Rust crate trainRouter (npm {res['version']})", values, float(res["trainSeconds"]),
                float(res["scoreUsPerCall"]) * 1e-6, "score() per call from Node; binary cheap-vs-best" if not pair else "score() per call from Node")
    if teacher is not None:
        rows.append(Row("MiniLM fine-tuned teacher (reported)", note="SOURCES.md; GPU, ~1000x the compute per decision", **TEACHER_REPORTED))

    OUT.mkdir(exist_ok=True)
    singles = {m: (float(c), float(q)) for m, c, q in zip(test.models, test.mean_costs, test.scores.mean(axis=0))}
    path = plot_lines(curves, OUT / f"quality_{name}.png", xlabel="mean cost per query", ylabel="mean quality",
                      title=f"{name}: cost against quality on the test split", points=singles)
    if path:
        console.print(f"plot: {path}")
    return rows, subset_rows(by_subset, test, seen) if seen.any() else [], seen


def fmt(v: object, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["mmlu", "gsm8k", "llmrouter"])
    parser.add_argument("--skip-rust", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--robustness", action="store_true", help="the stress tables with bootstrap intervals "
                                                                   "(benchmarks/robustness.py) instead")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples, with --robustness or --generalization")
    parser.add_argument("--embedders", default=None, help="with --robustness: compare embedders (make_embedder names, "
                        "the first is the reference), e.g. minilm,static; with --generalization: run each")
    parser.add_argument("--generalization", action="store_true", help="leave one dataset out, and the packaged router's "
                        "recipe on every test split (benchmarks/generalization.py)")
    parser.add_argument("--no-features", action="store_true", help="with --generalization: skip the prompt features row")
    parser.add_argument("--held-out", default=None, help="with --generalization: hold out only these units "
                        "(comma-separated names, e.g. AlpacaEval,MMLU)")
    parser.add_argument("--features-only", action="store_true", help="with --generalization: also hold each dataset "
                        "out with ridge on the prompt features alone (no embedding)")
    parser.add_argument("--no-balance", action="store_true", help="with --generalization: train on each pair's own "
                        "strong-weak gap (the packaged recipe balances them)")
    parser.add_argument("--pick-by-folds", action="store_true", help="with --generalization: add ridge on the prompt "
                        "features alone, and the router the training table's folds prefer among all of them")
    parser.add_argument("--random-folds", action="store_true", help="with --generalization: our router's, "
                        "ridge's and kNN's settings chosen on random rows of the pooled training table, not on folds "
                        "that hold out whole training units (before issue 30's grouped folds)")
    parser.add_argument("--routers", default=None, help="with --generalization: router files to score on every test "
                        "split, as label=PATH,... (default: the packaged router; none: skip)")
    args = parser.parse_args()
    data = args.data_dir or shared_data_dir()
    if data is None:
        sys.exit("the routing-quality benchmark needs ../shared/data (or --data-dir / TINY_DANCER_DATA)")
    if args.generalization:
        import generalization
        from tinydancer.gateway import default_router_path

        if args.routers == "none":
            routers: dict[str, str] = {}
        elif args.routers:
            routers = dict(item.split("=", 1) for item in args.routers.split(","))
        else:
            routers = {"packaged": str(default_router_path())}
        embedders = [e for e in (args.embedders if args.embedders is not None else "static").split(",") if e]
        generalization.main(data, args.resamples, embedders, not args.no_features,
                            {label: Path(path) for label, path in routers.items()}, not args.no_balance,
                            args.held_out.split(",") if args.held_out else None, args.features_only,
                            not args.random_folds, args.pick_by_folds)
        return
    if args.robustness:
        import robustness

        if args.embedders:
            robustness.compare_embedders(data, args.resamples, args.embedders.split(","))
        else:
            robustness.main(data, args.resamples)
        return
    console.print(environment())
    emb = make_embedder("minilm")
    teacher = np.load(data / "teacher" / "mmlu_train_logits.npy")
    results = {}
    for name, (train, test) in standard_splits(data).items():
        if args.only and name != args.only:
            continue
        t0 = time.perf_counter()
        train, test = train.with_embeddings(emb), test.with_embeddings(emb)
        console.print(f"{name}: {len(train)} train / {len(test)} test queries, {len(train.models)} models (embeddings {time.perf_counter() - t0:.1f} s)")
        rows, subsets, seen = run_dataset(name, train, test, teacher if name == "mmlu" else None, args.skip_rust)
        pair = len(train.models) == 2
        cols = (["router", "APGR", "CPT50 %", "CPT80 %", "AIQ"] if pair else ["router", "AIQ"]) + [
            "Brier", "ECE", "train", "decision", "note"]
        body = []
        for r in rows:
            v = r.values
            lat = v.get("latency_s")
            cells = [r.name]
            if pair:
                cells += [fmt(v.get("apgr"), ".3f"), fmt(v.get("cpt50"), ".1f"), fmt(v.get("cpt80"), ".1f")]
            cells += [fmt(v.get("aiq"), ".3f"), fmt(v.get("brier"), ".3f"), fmt(v.get("ece"), ".3f"),
                      "—" if v.get("train_s") is None else f"{v['train_s']:.1f} s",
                      "—" if lat is None else f"{lat * 1e6:,.1f} µs", str(v.get("note", ""))]
            body.append(cells)
        console.print(table(f"{name} test split ({len(test)} queries)", cols, body, key=f"quality-{name}"))
        if subsets:
            metric = "APGR" if pair else "AIQ"
            console.print(table(f"{name}: {int(seen.sum())} test queries also in train (verbatim) vs {int((~seen).sum())} new",
                                ["router", f"{metric} repeated", f"{metric} new"], subsets, key=f"quality-{name}-repeats"))
        results[name] = {r.name: {k: v for k, v in r.values.items()} for r in rows}
    one = MiniLMEmbedder("onnx", threads=1)
    text = "Which of the following best describes the function of the mitochondria in eukaryotic cells?"
    t_embed = time_call(lambda: one.embed([text]), min_time=1.0)
    console.print(f"embedding one query with MiniLM (ONNX Runtime, 1 thread): {t_embed * 1e3:.2f} ms — the embedder's share of a decision from text")
    (OUT / "quality.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
