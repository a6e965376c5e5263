"""Does a strong/weak router carry across datasets?  Leave-one-dataset-out, and the packaged
router's own test scores (issue 30, items 1 and 3).

Units (``tinydancer.llm.public_tables``): MMLU, GSM8K, MT-bench, LLMRouter's math, code,
knowledge and commonsense groups, AlpacaEval; LLMRouter's other tasks are always trained on.
For each unit: train on every other unit (rows whose prompt appears verbatim in the held-out
unit dropped: LLMRouter repeats some MMLU and GSM8K prompts), test on the unit.

Routers, all trained on the same rows and the same embeddings:
- ours: ``QueryRouter.fit`` (outcome memory off, as the packaged router), on the embedding alone;
- ours, features forced: the same with the prompt features appended; "ours + features (cv)" is
  the one of the two the training table's own folds prefer (``router_fit``'s rule: the embedding
  alone unless the features win by more than a standard error; the note says which);
- ridge and kNN on the embedding, alpha / k tuned by AIQ on the same folds (``robustness.tuned``);
- prompt length (words: longer goes strong), and random: the mean and the 97.5th percentile of
  1,000 random scorings of the held-out rows (the "95 % upper bound" a router must beat).

Metrics: APGR (RouteLLM's, strong = the better model) and AIQ, each with a 95 % bootstrap interval
over the same resamples of the held-out rows for every router.  Verdict: "ok" when ours is above
random's upper bound and at or above the lower end of the best baseline's interval.

Then the packaged router: trained on the training splits of every table (as
``tools/build_default_router.py`` does), scored on each test split, beside today's packaged router.

    .venv/bin/python benchmarks/quality.py --generalization [--embedders static,minilm] [--resamples 1000]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from _common import console, environment, table
from quality import knn_predict
from robustness import KNN_K, RIDGE_ALPHA, ridge_predict, tuned

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.evaluation import choices_aiq, routellm_curve, sweep_choices
from tinydancer.llm.prompt_features import FEATURES_ID, with_features
from tinydancer.llm.public_tables import held_out_units, merge, packaged_splits
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.selection import _best
from tinydancer.llm.tables import RoutingTable

Scorer = Callable[[RoutingTable, RoutingTable], tuple[np.ndarray, str]]


# ---------------------------------------------------------------------- metrics
def _curve_choices(score: np.ndarray) -> np.ndarray:
    """(K, N) choices of a strong-advantage score swept over its quantiles (0 = strong, 1 = weak)."""
    out = np.column_stack([np.zeros_like(score), np.zeros_like(score), score])
    return sweep_choices(out, np.ones((len(score), 2)), (0, 1))


def metrics(score: np.ndarray, test: RoutingTable, resamples: np.ndarray) -> dict[str, np.ndarray]:
    """APGR and AIQ on the test rows (index 0) and on each resample (the rest)."""
    s, w = test.scores[:, 0].astype(np.float64), test.scores[:, 1].astype(np.float64)
    choices = _curve_choices(score)
    rows = [np.arange(len(test))] + list(resamples)
    apgr = np.array([routellm_curve(score[r], s[r], w[r]).apgr for r in rows])
    aiq = np.array([choices_aiq(choices[:, r], test.scores[r], test.costs[r]) for r in rows])
    return {"apgr": apgr, "aiq": aiq}


def random_bounds(test: RoutingTable, draws: int, seed: int = 1) -> dict[str, tuple[float, float]]:
    """(mean, 97.5th percentile) of APGR and AIQ over random scorings of the test rows."""
    rng = np.random.default_rng(seed)
    s, w = test.scores[:, 0].astype(np.float64), test.scores[:, 1].astype(np.float64)
    apgr, aiq = [], []
    for _ in range(draws):
        score = rng.random(len(test))
        apgr.append(routellm_curve(score, s, w).apgr)
        aiq.append(choices_aiq(_curve_choices(score), test.scores, test.costs))
    return {k: (float(np.mean(v)), float(np.percentile(v, 97.5))) for k, v in (("apgr", apgr), ("aiq", aiq))}


def interval(values: np.ndarray) -> str:
    lo, hi = np.percentile(values[1:], [2.5, 97.5])
    return f"{values[0]:.3f} [{lo:.3f}, {hi:.3f}]"


# ---------------------------------------------------------------------- routers
def fit_ours(train: RoutingTable, test: RoutingTable, feature_set: str) -> tuple[np.ndarray, list[float], str]:
    """Our router on the embedding alone ("none") or with the prompt features: its held-out
    scores, its chosen setting's fold AIQs (the same folds for both inputs), and a note."""
    t0 = time.perf_counter()
    router = QueryRouter.fit(train, QueryRouterConfig(memory=False, feature_sets=(feature_set,), workers=1))
    x = test.embeddings if feature_set == "none" else with_features(test.embeddings, test.queries)
    sel = router.info["selection"]
    c = sel["chosen"]
    folds = sel["candidates"]["network"][f"hidden {c['hidden_dim']}, network weight {c['network_weight']:g}"]
    note = (f"hidden {c['hidden_dim']}, k {c['neighbours']}, net weight {c['network_weight']:g}, cv AIQ "
            f"{np.mean(folds):.4f}, {time.perf_counter() - t0:.0f} s")
    return router.estimate(x)[:, 2], folds, note


def ours_rows(train: RoutingTable, test: RoutingTable, features: bool) -> dict[str, tuple[np.ndarray, str]]:
    """"ours" (embedding alone); with ``features`` also the router with the prompt features, and
    the cross-validated choice between the two (``router_fit``'s rule: the embedding alone unless
    the folds prefer the features by more than a standard error), as ``fit`` with
    ``feature_sets=("none", FEATURES_ID)`` would make it, without training the first twice."""
    score, folds, note = fit_ours(train, test, "none")
    out = {"ours": (score, note)}
    if features:
        f_score, f_folds, f_note = fit_ours(train, test, FEATURES_ID)
        out["ours, features forced"] = (f_score, f_note)
        chosen = _best({"none": folds, FEATURES_ID: f_folds}, prefer_first=True)
        out["ours + features (cv)"] = (score if chosen == "none" else f_score, f"inputs chosen: {chosen}")
    return out


def tuned_baseline(name: str) -> Scorer:
    grid, fn = (RIDGE_ALPHA, ridge_predict) if name == "ridge" else (KNN_K, lambda xf, yf, xe, k: knn_predict(xf, yf, xe, min(int(k), len(xf))))

    def run(train: RoutingTable, test: RoutingTable) -> tuple[np.ndarray, str]:
        knob, note = tuned(grid, fn, train)
        pred = fn(train.embeddings, train.scores, test.embeddings, knob)
        return pred[:, 0] - pred[:, 1], f"{'alpha' if name == 'ridge' else 'k'} = {note}"
    return run


def length(_train: RoutingTable, test: RoutingTable) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(0)  # ties (equal lengths) broken at random, not by row order
    return np.array([len(q.split()) for q in test.queries], dtype=np.float64) + 1e-3 * rng.random(len(test)), "words"


def baselines() -> dict[str, Scorer]:
    return {"ridge": tuned_baseline("ridge"), "kNN": tuned_baseline("kNN"), "prompt length": length}


# ---------------------------------------------------------------------- the runs
def embed(t: RoutingTable, emb: object) -> RoutingTable:
    return t.with_embeddings(emb)


def lodo(data: Path, emb: object, resamples: int, features: bool) -> list[list[str]]:
    units, always = held_out_units(data)
    units = {k: embed(t, emb) for k, t in units.items()}
    always = embed(always, emb)
    rows, started = [], time.perf_counter()
    for name, test in units.items():
        held = set(test.queries)
        parts = [u for k, u in units.items() if k != name] + [always]
        train = merge(parts, f"all but {name}")
        train.embeddings = np.vstack([p.embeddings for p in parts])
        keep = np.array([q not in held for q in train.queries])
        dropped = int((~keep).sum())
        train = train.subset(np.flatnonzero(keep))
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(test), len(test)) for _ in range(resamples)]
        rand = random_bounds(test, resamples)
        values, notes = {}, {}
        scored = ours_rows(train, test, features)
        for rname, fn in baselines().items():
            scored[rname] = fn(train, test)
        for rname, (score, notes[rname]) in scored.items():
            values[rname] = metrics(score, test, draws)
        base = max(("ridge", "kNN", "prompt length"), key=lambda r: values[r]["apgr"][0])
        lo_best = np.percentile(values[base]["apgr"][1:], 2.5)
        for rname in values:
            v = values[rname]
            verdict = ""
            if rname.startswith("ours"):
                ok = v["apgr"][0] > rand["apgr"][1] and v["apgr"][0] >= lo_best
                verdict = ("ok" if ok else "MISS") + f" (best baseline {base})"
            rows.append([name if rname == "ours" else "", rname, interval(v["apgr"]), interval(v["aiq"]), verdict,
                         notes[rname]])
        rows.append(["", "random (mean / 97.5 %)", f"{rand['apgr'][0]:.3f} / {rand['apgr'][1]:.3f}",
                     f"{rand['aiq'][0]:.3f} / {rand['aiq'][1]:.3f}", "",
                     f"train {len(train):,} (dropped {dropped} repeats), test {len(test):,}"])
        console.print(f"{name}: done ({time.perf_counter() - started:.0f} s)")
    return rows


def packaged(data: Path, emb: object, resamples: int, features: bool, today: QueryRouter | None,
             today_emb: object | None) -> list[list[str]]:
    """The packaged router's recipe (train splits of everything) on each test split, and today's."""
    from build_default_router import train_router  # tools/, on the path via quality.py

    splits = packaged_splits(data)
    router = train_router(splits, emb, features=features, progress=None)
    rows = []
    for name, (_train, test) in splits.items():
        if test is None:
            continue
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(test), len(test)) for _ in range(resamples)]
        rand = random_bounds(test, resamples)
        new = metrics(router.strong_scores(test.queries), test, draws)
        row = [name, f"{len(test):,}", interval(new["apgr"]), interval(new["aiq"])]
        if today is not None:
            old = metrics(today.estimate(test.with_embeddings(today_emb).embeddings)[:, 2], test, draws)
            row += [interval(old["apgr"]), interval(old["aiq"])]
        rows.append(row + [f"{rand['apgr'][1]:.3f}", f"{rand['aiq'][1]:.3f}"])
    rows.append(["(router)", "", router.embedder_id, str(router.info.get("features", {}).get("chosen", "none")), "", "", "", ""])
    return rows


def main(data: Path, resamples: int, embedders: list[str], features: bool, today_path: Path | None) -> None:
    console.print(environment())
    today = QueryRouter.load(today_path) if today_path is not None else None
    today_emb = make_embedder("minilm") if today is not None else None
    for name in embedders:
        emb = make_embedder(name)
        t0 = time.perf_counter()
        rows = lodo(data, emb, resamples, features)
        console.print(table(f"Leave one dataset out, {emb.id}: APGR and AIQ with 95 % bootstrap intervals "
                            f"({resamples} resamples of the held-out rows) [{time.perf_counter() - t0:.0f} s]",
                            ["held out", "router", "APGR", "AIQ", "verdict", "note"], rows, key=f"generalization-{name}"))
        rows = packaged(data, emb, resamples, features, today, today_emb)
        console.print(table(f"The packaged router's recipe on {emb.id}: trained on every table's training split, scored on "
                            "each test split, beside today's packaged router (MiniLM, MMLU + GSM8K)",
                            ["test split", "rows", "APGR (new)", "AIQ (new)", "APGR (today)", "AIQ (today)",
                             "random APGR 97.5 %", "random AIQ 97.5 %"], rows, key=f"generalization-packaged-{name}"))
