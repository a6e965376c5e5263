"""Routing quality under stress: our router against tuned baselines, with bootstrap intervals (issue 15, item 3).

Tables, each a (train, test) pair from ``../shared/data``:
- mmlu, gsm8k, llmrouter: the standard splits of ``quality.py``;
- llmrouter restricted to 3 and to 5 models (chosen by price rank: cheapest, middle, dearest,
  and evenly spaced for 5), every query kept;
- mmlu with the two models' prices swapped (the better model is then also the cheaper one);
- llmrouter priced by output tokens: its price file gives every model the same output price as
  input price, so this table would equal llmrouter's; it is reported as such, not run;
- cross-domain: trained on the mmlu + gsm8k training splits, tested on MT-bench's 80 questions
  (first turn as the prompt), quality = the GPT-4 judge's score / 10, averaged over both turns,
  as RouteLLM evaluates it.

Rows: ours (``QueryRouter.fit`` with its defaults, as ``tinydancer router train`` runs it, outcome
memory on), ridge regression, kNN, logistic regression (one per model, on quality ≥ 0.5), the
hull of the single models, and the oracle.  Baselines tune their knob (alpha, k, C) by mean AIQ
over the same k folds of the training table that our router chooses its settings on.  Every router is
scored by AIQ on the test table: for each, the same 1,000 bootstrap resamples of the test
queries give a 95 % interval, and "ours − best" is the paired difference to the baseline with the
best point AIQ (best single included), with its interval.

    .venv/bin/python benchmarks/quality.py --robustness [--resamples 1000]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
from _common import console, environment, table
from quality import knn_predict

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.evaluation import aiq, sweep_choices
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.selection import group_kfold, kfold
from tinydancer.llm.tables import ROUTELLM_PRICES, ROUTELLM_STRONG, ROUTELLM_WEAK, RoutingTable, standard_splits

KNN_K = (5, 10, 20, 50, 100, 200, 400)
RIDGE_ALPHA = (0.1, 1.0, 10.0, 100.0, 1000.0)
LOGISTIC_C = (0.001, 0.01, 0.1, 1.0, 10.0)


# ---------------------------------------------------------------------- choices and AIQ
def resampled_aiq(choice: np.ndarray, test: RoutingTable, weights: np.ndarray) -> np.ndarray:
    """AIQ of a router's (K, N) choices under each row of ``weights`` (B, N), a resample's counts
    (a row of ones: the test table itself)."""
    n = len(test)
    rows = np.arange(n)
    quality = test.scores[rows[None, :], choice].astype(np.float64) @ weights.T / n  # (K, B)
    cost = test.costs[rows[None, :], choice].astype(np.float64) @ weights.T / n
    model_costs = weights @ test.costs.astype(np.float64) / n  # (B, M)
    return np.array([aiq(cost[:, b], quality[:, b], float(model_costs[b].min()), float(model_costs[b].max()))
                     for b in range(len(weights))])


def bootstrap_weights(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(np.float64)


# ---------------------------------------------------------------------- the routers
def ridge_predict(xf: np.ndarray, yf: np.ndarray, xe: np.ndarray, alpha: float) -> np.ndarray:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(xf, yf).predict(xe)


def logistic_predict(xf: np.ndarray, yf: np.ndarray, xe: np.ndarray, c: float) -> np.ndarray:
    """Per model, P(quality ≥ 0.5); a model always (or never) good on the fit rows keeps its rate."""
    from sklearn.linear_model import LogisticRegression

    out = np.empty((len(xe), yf.shape[1]))
    for j in range(yf.shape[1]):
        y = yf[:, j] >= 0.5
        out[:, j] = (LogisticRegression(C=c, max_iter=2000).fit(xf, y).predict_proba(xe)[:, 1]
                     if 0 < y.sum() < len(y) else y.mean())
    return out


def tuned(grid: tuple, predict: Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray],
          train: RoutingTable, groups: np.ndarray | None = None) -> tuple[float, str]:
    """The knob whose predictions give the best mean AIQ over the same k folds of train that our
    router's settings are chosen on (``selection.kfold``, or ``selection.group_kfold`` with
    ``groups``: whole source tables held out)."""
    cfg = QueryRouterConfig()
    scores = {v: [] for v in grid}
    folds = kfold(len(train), cfg.folds, cfg.seed) if groups is None else group_kfold(groups, cfg.folds, cfg.seed)
    for fit_i, val_i in folds:
        val = train.subset(val_i)
        ones = np.ones((1, len(val)))
        for v in grid:
            pred = predict(train.embeddings[fit_i], train.scores[fit_i], train.embeddings[val_i], v)
            scores[v].append(float(resampled_aiq(sweep_choices(pred, val.costs), val, ones)[0]))
    best = max(grid, key=lambda v: np.mean(scores[v]))
    return best, f"{best:g}"


def chosen_note(router: QueryRouter) -> str:
    """What cross-validation chose, and the folds' AIQ spread."""
    sel = router.info["selection"]
    c = sel["chosen"]
    lo, hi = sel["cv_aiq_range"]
    return (f"hidden {c['hidden_dim']}, network weight {c['network_weight']:g}, k {c['neighbours']}, "
            f"prior {c['memory_prior']:g}; folds {lo:.3f}–{hi:.3f}")


def route_all(train: RoutingTable, test: RoutingTable, baselines: tuple[str, ...] = ("ridge", "kNN", "logistic"),
              ) -> dict[str, tuple[np.ndarray, str]]:
    """Every router's (K, N) choices on test, with a note (``baselines``: which tuned ones to run)."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    m = len(train.models)
    t0 = time.perf_counter()
    router = QueryRouter.fit(train, QueryRouterConfig())
    fit_s = time.perf_counter() - t0
    pred, _hit = router.remember(test.queries, router.estimate(test.embeddings))
    if router.is_pair:
        out["ours"] = (sweep_choices(pred, test.costs, (router.strong, router.weak)), f"{chosen_note(router)}, {fit_s:.0f} s")
    else:
        out["ours"] = (sweep_choices(pred[:, :m], test.costs), f"{chosen_note(router)}, {fit_s:.0f} s")
    def knn(xf: np.ndarray, yf: np.ndarray, xe: np.ndarray, k: float) -> np.ndarray:
        return knn_predict(xf, yf, xe, min(int(k), len(xf)))

    for name, grid, fn in (("ridge", RIDGE_ALPHA, ridge_predict), ("kNN", KNN_K, knn),
                           ("logistic", LOGISTIC_C, logistic_predict)):
        if name not in baselines:
            continue
        knob, note = tuned(grid, fn, train)
        out[name] = (sweep_choices(fn(train.embeddings, train.scores, test.embeddings, knob), test.costs),
                     f"{'alpha' if name == 'ridge' else 'k' if name == 'kNN' else 'C'} = {note}")
    out["best single (hull)"] = (np.repeat(np.arange(m)[:, None], len(test), axis=1), f"{m} models")
    out["oracle"] = (sweep_choices(test.scores.astype(np.float64), test.costs), "")
    return out


# ---------------------------------------------------------------------- the tables
def restrict(table: RoutingTable, keep: list[int]) -> RoutingTable:
    return RoutingTable(table.queries, [table.models[i] for i in keep], table.scores[:, keep], table.costs[:, keep],
                        table.embeddings)


def by_price(table: RoutingTable, count: int) -> list[int]:
    order = list(np.argsort(table.costs[0], kind="stable"))
    return sorted(order[int(round(i))] for i in np.linspace(0, len(order) - 1, count))


def mt_bench(data: Path) -> RoutingTable:
    folder = data / "routellm" / "mt_bench"
    questions = {q["question_id"]: q["turns"][0] for q in map(json.loads, (folder / "question.jsonl").read_text().splitlines())}
    names = {"gpt-4-1106-preview": ROUTELLM_STRONG, "mistralai/Mixtral-8x7B-Instruct-v0.1": ROUTELLM_WEAK}
    sums: dict[tuple[int, str], list[float]] = {}
    for j in map(json.loads, (folder / "judgements.jsonl").read_text().splitlines()):
        sums.setdefault((j["question_id"], names[j["model"]]), []).append(float(j["score"]) / 10.0)
    models = [ROUTELLM_STRONG, ROUTELLM_WEAK]
    ids = sorted(questions)
    scores = np.array([[np.mean(sums[(i, m)]) for m in models] for i in ids], dtype=np.float32)
    return RoutingTable([questions[i] for i in ids], models, scores,
                        np.tile([ROUTELLM_PRICES[m] for m in models], (len(ids), 1)))


def concat(a: RoutingTable, b: RoutingTable) -> RoutingTable:
    assert a.models == b.models
    return RoutingTable(a.queries + b.queries, a.models, np.vstack([a.scores, b.scores]), np.vstack([a.costs, b.costs]),
                        None if a.embeddings is None else np.vstack([a.embeddings, b.embeddings]))


def tables(data: Path, embed: Callable[[RoutingTable], RoutingTable]) -> list[tuple[str, RoutingTable, RoutingTable]]:
    std = {k: (embed(tr), embed(te)) for k, (tr, te) in standard_splits(data).items()}
    (mm_tr, mm_te), (gs_tr, gs_te), (lr_tr, lr_te) = std["mmlu"], std["gsm8k"], std["llmrouter"]
    swapped = [1, 0]
    out = [("mmlu", mm_tr, mm_te), ("gsm8k", gs_tr, gs_te), ("llmrouter", lr_tr, lr_te)]
    for k in (3, 5):
        keep = by_price(lr_tr, k)
        out.append((f"llmrouter, {k} models", restrict(lr_tr, keep), restrict(lr_te, keep)))
    out.append(("mmlu, prices swapped", RoutingTable(mm_tr.queries, mm_tr.models, mm_tr.scores, mm_tr.costs[:, swapped],
                                                     mm_tr.embeddings),
                RoutingTable(mm_te.queries, mm_te.models, mm_te.scores, mm_te.costs[:, swapped], mm_te.embeddings)))
    out.append(("mmlu + gsm8k → MT-bench", concat(mm_tr, gs_tr), embed(mt_bench(data))))
    return out


def output_pricing_note(data: Path) -> str:
    prices = json.loads((data / "llmrouter" / "llm_prices.json").read_text())
    same = sum(v["input_price"] == v["output_price"] for v in prices.values())
    return (f"llmrouter priced by output tokens: {same} of {len(prices)} models have output price = input price in "
            "llm_prices.json, so the table equals llmrouter's and is not run again")


def main(data: Path, resamples: int) -> None:
    console.print(environment())
    emb = make_embedder("minilm")
    rows, summary = [], []
    for name, train, test in tables(data, lambda t: t.with_embeddings(emb)):
        weights = np.vstack([np.ones((1, len(test))), bootstrap_weights(len(test), resamples)])
        routed = route_all(train, test)
        values = {r: resampled_aiq(choice, test, weights) for r, (choice, _) in routed.items()}
        baselines = [r for r in routed if r not in ("ours", "oracle")]
        best = max(baselines, key=lambda r: values[r][0])
        diff = values["ours"][1:] - values[best][1:]
        lo, hi = np.percentile(diff, [2.5, 97.5])
        for r, (_, note) in routed.items():
            v = values[r]
            a, b = np.percentile(v[1:], [2.5, 97.5])
            rows.append([name if r == "ours" else "", r, f"{v[0]:.3f}", f"[{a:.3f}, {b:.3f}]", note])
        verdict = "ahead" if lo > 0 else "behind" if hi < 0 else "within the interval"
        summary.append([name, f"{len(train):,} / {len(test):,}", str(len(train.models)), best,
                        f"{values['ours'][0] - values[best][0]:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]", verdict])
        console.print(f"{name}: done")
    console.print(table(f"AIQ on each test table, 95 % bootstrap intervals ({resamples} resamples of the test queries)",
                        ["table", "router", "AIQ", "95 % interval", "note"], rows, key="robustness-aiq"))
    console.print(table("ours − the best baseline (paired over the same resamples)",
                        ["table", "train / test", "models", "best baseline", "ours − best", "95 % interval", "ours is"],
                        summary, key="robustness-summary"))
    console.print(output_pricing_note(data))


# ---------------------------------------------------------------------- embedders compared
def compare_embedders(data: Path, resamples: int, names: list[str]) -> None:
    """Each router (ours, ridge, kNN) on each table with each embedder, scored on the same
    bootstrap resamples of the test queries, so the difference between embedders is paired.

    Verdict per row: the candidate (every embedder after the first) is "within" when its point AIQ
    is at or above the lower end of the first embedder's 95 % interval for the same router, the
    rule issue 29 sets for a default embedder.  The paired interval of the difference is shown
    too: it is the tighter test.

        .venv/bin/python benchmarks/quality.py --robustness --embedders minilm,static
    """
    console.print(environment())
    embedders = {n: make_embedder(n) for n in names}
    per_embedder = {n: tables(data, lambda t, e=e: t.with_embeddings(e)) for n, e in embedders.items()}
    first, rest = names[0], names[1:]
    rows, verdicts = [], []
    started = time.perf_counter()
    for i, (tname, _, test) in enumerate(per_embedder[first]):
        weights = np.vstack([np.ones((1, len(test))), bootstrap_weights(len(test), resamples)])
        values: dict[str, dict[str, np.ndarray]] = {}
        notes: dict[str, dict[str, str]] = {}
        for n in names:
            _, train_n, test_n = per_embedder[n][i]
            routed = route_all(train_n, test_n, baselines=("ridge", "kNN"))
            values[n] = {r: resampled_aiq(c, test_n, weights) for r, (c, _) in routed.items() if r in ("ours", "ridge", "kNN")}
            notes[n] = {r: note for r, (_, note) in routed.items()}
        for r in ("ours", "ridge", "kNN"):
            base = values[first][r]
            a, b = np.percentile(base[1:], [2.5, 97.5])
            row = [tname if r == "ours" else "", r, f"{base[0]:.3f} [{a:.3f}, {b:.3f}]"]
            for n in rest:
                v = values[n][r]
                c, d = np.percentile(v[1:], [2.5, 97.5])
                lo, hi = np.percentile(v[1:] - base[1:], [2.5, 97.5])
                ok = v[0] >= a
                row += [f"{v[0]:.3f} [{c:.3f}, {d:.3f}]", f"{v[0] - base[0]:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                        "within" if ok else "BELOW"]
                if r == "ours":
                    verdicts.append(ok)
            rows.append(row)
        console.print(f"{tname}: done ({time.perf_counter() - started:.0f} s); ours: "
                      + ", ".join(f"{n} {notes[n]['ours']}" for n in names))
    columns = ["table", "router", f"{first} AIQ [95 %]"]
    for n in rest:
        columns += [f"{embedders[n].id} AIQ [95 %]", f"− {first} (paired) [95 %]", f"vs {first}'s interval"]
    console.print(table(f"AIQ by embedder, same routers, same {resamples} resamples of each test table",
                        columns, rows, key="robustness-embedders"))
    console.print(f"ours with {', '.join(rest)}: within {first}'s interval on {sum(verdicts)} of {len(verdicts)} tables")
