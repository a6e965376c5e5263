"""Does a strong/weak router carry across datasets?  Leave-one-dataset-out, and the packaged
router's own test scores (issue 30, items 1 and 3).

Units (``tinydancer.llm.public_tables``): MMLU, GSM8K, MT-bench, LLMRouter's math, code,
knowledge and commonsense groups, AlpacaEval; LLMRouter's other tasks are always trained on.
For each unit: train on every other unit (rows whose prompt appears verbatim in the held-out
unit dropped: LLMRouter repeats some MMLU and GSM8K prompts), test on the unit.  MMLU, the only
unit over 4,000 rows, is a seeded 4,000-row sample of its 14,037 (``UNIT_CAP``), both as training
rows and held out.  The training units' strong-weak gaps are balanced as the packaged recipe does
(``public_tables.balance_gaps``; ``--no-balance``: each pair's own gap).

Routers, all trained on the same rows and the same embeddings:
- ours: ``QueryRouter.fit`` as the packaged recipe runs it (outcome memory off; the prompt
  features offered to cross-validation, kept only where the training table's own folds prefer
  them by more than a standard error: the note says which, with each input's fold AIQ);
- ridge and kNN on the embedding, alpha / k tuned by AIQ on the same folds (``robustness.tuned``);
  the folds hold out whole training units (``selection.group_kfold``, the packaged recipe's since
  issue 30's grouped selection; ``--random-folds``: random rows of the pooled table, as before);
- prompt length (words: longer goes strong), and random: the mean and the 97.5th percentile of
  1,000 random scorings of the held-out rows (the "95 % upper bound" a router must beat);
- with ``--pick-by-folds``: ridge on the 11 prompt features alone (no embedding: the cheap model
  that reads only what might carry); ours on embeddings with the training tables' mean
  directions projected out (``without_sources``: what tells the datasets apart, first order);
  and "ours, picked by the folds": whichever of these and ours, ridge, kNN and prompt length has
  the best mean AIQ on the training table's folds (the notes give each one's), held out as it
  is.  The held-out unit never enters the pick.

Metrics: APGR (RouteLLM's, strong = the better model) and AIQ, each with a 95 % bootstrap interval
over the same resamples of the held-out rows for every router.  Verdict: "ok" when ours is above
random's upper bound and at or above the lower end of the best baseline's interval.

Then router files (by default the packaged router; ``--routers label=DIR,...`` others, such as the
packaged router before a rebuild) on every table's test split, which the packaged router's
training (``tools/build_default_router.py``: every table's training split) never saw.

    .venv/bin/python benchmarks/quality.py --generalization [--embedders static,minilm] [--no-features] \
        [--routers packaged=src/tinydancer/gateway/default_router,before=/tmp/old] [--resamples 1000]
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
from tinydancer.llm.evaluation import choices_aiq, router_aiq, routellm_curve, sweep_choices
from tinydancer.llm.prompt_features import FEATURES_ID, with_features
from tinydancer.llm.public_tables import balance_gaps, held_out_units, merge, packaged_splits, source_groups
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.selection import group_kfold, kfold
from tinydancer.llm.tables import RoutingTable

Scorer = Callable[[RoutingTable, RoutingTable], tuple[np.ndarray, str]]


# ---------------------------------------------------------------------- metrics
def _curve_choices(score: np.ndarray) -> np.ndarray:
    """(K, N) choices of a strong-advantage score swept over its quantiles (0 = strong, 1 = weak)."""
    out = np.column_stack([np.zeros_like(score), np.zeros_like(score), score])
    return sweep_choices(out, np.ones((len(score), 2)), (0, 1))


def apgr_or_nan(score: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    """APGR, or NaN on a resample where the two models score the same (no gap to recover)."""
    return float("nan") if s.mean() == w.mean() else routellm_curve(score, s, w).apgr


def metrics(score: np.ndarray, test: RoutingTable, resamples: np.ndarray) -> dict[str, np.ndarray]:
    """APGR and AIQ on the test rows (index 0) and on each resample (the rest)."""
    s, w = test.scores[:, 0].astype(np.float64), test.scores[:, 1].astype(np.float64)
    choices = _curve_choices(score)
    rows = [np.arange(len(test))] + list(resamples)
    apgr = np.array([apgr_or_nan(score[r], s[r], w[r]) for r in rows])
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
    lo, hi = np.nanpercentile(values[1:], [2.5, 97.5])
    return f"{values[0]:.3f} [{lo:.3f}, {hi:.3f}]"


# ---------------------------------------------------------------------- routers
def ours(train: RoutingTable, test: RoutingTable, features: bool, groups: np.ndarray | None = None,
         label: str = "ours") -> tuple[np.ndarray, str]:
    """Our router as the packaged recipe trains it (outcome memory off; with ``features`` the
    prompt features offered to cross-validation, kept only if the folds prefer them; with
    ``groups``, the training rows' source tables, folds that hold out whole tables): its
    held-out scores and a note with what was chosen and the folds' AIQ for each input."""
    t0 = time.perf_counter()
    sets = ("none", FEATURES_ID) if features else ("none",)
    router = QueryRouter.fit(train, QueryRouterConfig(memory=False, feature_sets=sets), groups=groups)
    x = test.embeddings if "+" not in router.embedder_id else with_features(test.embeddings, test.queries)
    c = router.info["selection"]["chosen"]
    picked = router.info.get("features")
    inputs = "embedding" if picked is None else (
        f"inputs {picked['chosen']} (fold AIQ " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in picked["fold_aiq"].items()) + ")")
    note = (f"hidden {c['hidden_dim']}, k {c['neighbours']}, net weight {c['network_weight']:g}, {inputs}, "
            f"{time.perf_counter() - t0:.0f} s")
    CV_AIQ[label] = float(router.info["selection"]["cv_aiq"])
    return router.estimate(x)[:, 2], note


#: each router's mean AIQ over the training table's cross-validation folds (the folds our router's
#: settings are chosen on), by name, for the unit being run: what a pick among them may read
CV_AIQ: dict[str, float] = {}


def _folds(train: RoutingTable, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds our router's settings are chosen on (QueryRouterConfig's folds and seed)."""
    cfg = QueryRouterConfig()
    return kfold(len(train), cfg.folds, cfg.seed) if groups is None else group_kfold(groups, cfg.folds, cfg.seed)


def fold_aiq(score: np.ndarray, val: RoutingTable) -> float:
    """AIQ of a strong-advantage score on a held-out fold, as our router's selection scores it."""
    zero = np.zeros_like(score)
    return router_aiq(np.column_stack([zero, zero, score]), val.scores, val.costs, (0, 1))


def without_sources(train: RoutingTable, test: RoutingTable, groups: np.ndarray) -> tuple[RoutingTable, RoutingTable]:
    """Both tables with the directions that tell the training tables apart removed from their
    embeddings: the span of the groups' mean embeddings (about the overall mean), learnt on the
    training rows only, projected out, and each row re-normalized.  A router then cannot lean on
    the first-order "which dataset is this" signal that does not carry to a new one."""
    x = train.embeddings.astype(np.float64)
    labels = np.unique(groups)
    means = np.stack([x[groups == g].mean(axis=0) for g in labels]) - x.mean(axis=0)
    _u, sv, vt = np.linalg.svd(means, full_matrices=False)
    basis = vt[sv > 1e-6 * sv[0]]
    out = []
    for t in (train, test):
        y = t.embeddings.astype(np.float64)
        y = y - (y @ basis.T) @ basis
        c = t.subset(np.arange(len(t)))
        c.embeddings = (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        out.append(c)
    return out[0], out[1]


def tuned_baseline(name: str, groups: np.ndarray | None = None) -> Scorer:
    """Ridge or kNN, alpha / k tuned on the folds our router's settings are chosen on; its best
    knob's mean fold AIQ goes to ``CV_AIQ``."""
    grid, fn = (RIDGE_ALPHA, ridge_predict) if name == "ridge" else (KNN_K, lambda xf, yf, xe, k: knn_predict(xf, yf, xe, min(int(k), len(xf))))

    def run(train: RoutingTable, test: RoutingTable) -> tuple[np.ndarray, str]:
        knob, note = tuned(grid, fn, train, groups)
        folds = _folds(train, groups)
        CV_AIQ[name] = float(np.mean([fold_aiq(_advantage(fn(train.embeddings[f], train.scores[f], train.embeddings[h], knob)),
                                               train.subset(h)) for f, h in folds]))
        return _advantage(fn(train.embeddings, train.scores, test.embeddings, knob)), f"{'alpha' if name == 'ridge' else 'k'} = {note}"
    return run


def _advantage(pred: np.ndarray) -> np.ndarray:
    return pred[:, 0] - pred[:, 1]


def _words(t: RoutingTable) -> np.ndarray:
    rng = np.random.default_rng(0)  # ties (equal lengths) broken at random, not by row order
    return np.array([len(q.split()) for q in t.queries], dtype=np.float64) + 1e-3 * rng.random(len(t))


def length_scorer(groups: np.ndarray | None = None) -> Scorer:
    """Prompt length in words (longer goes strong): nothing to train; its mean fold AIQ on the
    training table goes to ``CV_AIQ`` like the others'."""
    def run(train: RoutingTable, test: RoutingTable) -> tuple[np.ndarray, str]:
        CV_AIQ["prompt length"] = float(np.mean([fold_aiq(_words(train.subset(h)), train.subset(h))
                                                 for _f, h in _folds(train, groups)]))
        return _words(test), "words"
    return run


def length(_train: RoutingTable, test: RoutingTable) -> tuple[np.ndarray, str]:
    return _words(test), "words"


def features_ridge(groups: np.ndarray | None = None) -> Scorer:
    """Ridge on the 11 prompt features alone (no embedding), alpha tuned on the same folds: the
    cheap model that reads only what might carry across datasets."""
    inner = tuned_baseline("ridge", groups)

    def run(train: RoutingTable, test: RoutingTable) -> tuple[np.ndarray, str]:
        on_embedding = CV_AIQ.pop("ridge", None)
        score, note = inner(_featured(train), _featured(test))
        CV_AIQ["ridge on prompt features"] = CV_AIQ.pop("ridge")
        if on_embedding is not None:
            CV_AIQ["ridge"] = on_embedding
        return score, note
    return run


def baselines(groups: np.ndarray | None = None) -> dict[str, Scorer]:
    return {"ridge": tuned_baseline("ridge", groups), "kNN": tuned_baseline("kNN", groups),
            "prompt length": length_scorer(groups)}



# ---------------------------------------------------------------------- the runs
def embed(t: RoutingTable, emb: object) -> RoutingTable:
    return t.with_embeddings(emb)


#: rows kept of a larger unit (only MMLU, 14,037), a seeded sample: otherwise MMLU is 60 % of every
#: training table, and its 14k held-out rows and their MiniLM embeddings dominate the run's time
UNIT_CAP = 4000


def capped(t: RoutingTable, cap: int = UNIT_CAP) -> RoutingTable:
    if len(t) <= cap:
        return t
    return t.subset(np.sort(np.random.default_rng(0).choice(len(t), cap, replace=False)))


def lodo_units(data: Path) -> tuple[dict[str, RoutingTable], RoutingTable]:
    units, always = held_out_units(data)
    return {k: capped(t) for k, t in units.items()}, always


def lodo(data: Path, emb: object, resamples: int, features: bool, balance: bool = True,
         only: list[str] | None = None, grouped: bool = True, pick: bool = False) -> list[list[str]]:
    """The LODO rows; ``only``: hold out just these units (the others still train); ``grouped``:
    our router's cross-validation holds out whole training units (the packaged recipe's), else
    random rows of the pooled training table."""
    units, always = lodo_units(data)
    units = {k: embed(t, emb) for k, t in units.items()}
    always = embed(always, emb)
    rows, started = [], time.perf_counter()
    for name, test in units.items():
        if only and name not in only:
            continue
        held = set(test.queries)
        parts = [u for k, u in units.items() if k != name] + [always]
        if balance:  # the packaged recipe's (tools/build_default_router.py)
            parts = balance_gaps(parts)
        train = merge(parts, f"all but {name}")
        train.embeddings = np.vstack([p.embeddings for p in parts])
        keep = np.array([q not in held for q in train.queries])
        dropped = int((~keep).sum())
        train = train.subset(np.flatnonzero(keep))
        groups = source_groups(parts)[keep] if grouped else None
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(test), len(test)) for _ in range(resamples)]
        rand = random_bounds(test, resamples)
        values, notes = {}, {}
        CV_AIQ.clear()
        scored = {"ours": ours(train, test, features, groups)}
        for rname, fn in baselines(groups).items():
            scored[rname] = fn(train, test)
        if pick:
            scored["ridge on prompt features"] = features_ridge(groups)(train, test)
            if groups is not None:
                scored["ours, source directions removed"] = ours(*without_sources(train, test, groups), features,
                                                                 groups, label="ours, source directions removed")
        for rname, (score, notes[rname]) in scored.items():
            values[rname] = metrics(score, test, draws)
            if rname in CV_AIQ:
                notes[rname] += f"; fold AIQ {CV_AIQ[rname]:.4f}"
        if pick:  # the candidate the training table's folds prefer, held out as it is
            chosen = max(CV_AIQ, key=CV_AIQ.__getitem__)
            values["ours, picked by the folds"] = values[chosen]
            notes["ours, picked by the folds"] = f"= {chosen} (best fold AIQ of " + ", ".join(CV_AIQ) + ")"
        base = max(("ridge", "kNN", "prompt length"), key=lambda r: values[r]["apgr"][0])
        lo_best = np.nanpercentile(values[base]["apgr"][1:], 2.5)
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
        for row in rows[-(len(values) + 1):]:
            console.print(" | ".join(str(c) for c in row), soft_wrap=True)
    return rows


def features_only(data: Path, resamples: int, balance: bool = True, grouped: bool = True) -> list[list[str]]:
    """Leave one dataset out with no embedding at all: ridge on the prompt features alone (alpha
    tuned on the same folds), against prompt length and random, on the same units and resamples.
    Does what the features read carry across datasets where the embedding's signal does not?"""
    units, always = lodo_units(data)
    units = {k: _featured(t) for k, t in units.items()}
    always = _featured(always)
    rows = []
    for name, test in units.items():
        held = set(test.queries)
        parts = [u for k, u in units.items() if k != name] + [always]
        if balance:
            parts = balance_gaps(parts)
        train = merge(parts, f"all but {name}")
        train.embeddings = np.vstack([p.embeddings for p in parts])
        keep = np.array([q not in held for q in train.queries])
        train = train.subset(np.flatnonzero(keep))
        groups = source_groups(parts)[keep] if grouped else None
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(test), len(test)) for _ in range(resamples)]
        rand = random_bounds(test, resamples)
        scored = {"ridge on prompt features only": tuned_baseline("ridge", groups)(train, test),
                  "prompt length": length(train, test)}
        for rname, (score, note) in scored.items():
            v = metrics(score, test, draws)
            verdict = "above random" if v["apgr"][0] > rand["apgr"][1] else ""
            rows.append([name if rname.startswith("ridge") else "", rname, interval(v["apgr"]), interval(v["aiq"]), verdict, note])
        rows.append(["", "random (mean / 97.5 %)", f"{rand['apgr'][0]:.3f} / {rand['apgr'][1]:.3f}",
                     f"{rand['aiq'][0]:.3f} / {rand['aiq'][1]:.3f}", "", f"train {len(train):,}, test {len(test):,}"])
        console.print(f"{name}: done")
    return rows


def _featured(t: RoutingTable) -> RoutingTable:
    """The table with its prompt features (unweighted, in [0, 1]) as its embeddings."""
    from tinydancer.llm.prompt_features import prompt_features

    out = t.subset(np.arange(len(t)))
    out.embeddings = prompt_features(t.queries)
    return out


def packaged(data: Path, routers: dict[str, QueryRouter], resamples: int) -> list[list[str]]:
    """Each router file (the packaged one, today's, ...) on every table's test split, scored on the
    same resamples; prompt length's APGR (what grouped folds prefer held out) and random's 97.5th
    percentile beside."""
    rows = []
    for name, (_train, test) in packaged_splits(data).items():
        if test is None:
            continue
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(test), len(test)) for _ in range(resamples)]
        rand = random_bounds(test, resamples)
        row = [name, f"{len(test):,}"]
        for router in routers.values():
            v = metrics(router.strong_scores(test.queries), test, draws)
            row += [interval(v["apgr"]), interval(v["aiq"])]
        rows.append(row + [interval(metrics(_words(test), test, draws)["apgr"]), f"{rand['apgr'][1]:.3f}",
                           f"{rand['aiq'][1]:.3f}"])
    return rows


def main(data: Path, resamples: int, embedders: list[str], features: bool, routers: dict[str, Path],
         balance: bool = True, only: list[str] | None = None, features_baseline: bool = False,
         grouped: bool = True, pick: bool = False) -> None:
    """LODO for each embedder (skipped with an empty list), then each router file on the test splits."""
    console.print(environment() + " (shared with other jobs)")
    for name in embedders:
        emb = make_embedder(name)
        t0 = time.perf_counter()
        rows = lodo(data, emb, resamples, features, balance, only, grouped, pick)
        console.print(table(f"Leave one dataset out, {emb.id}{'' if balance else ', gaps not balanced'}"
                            f"{', folds by row' if not grouped else ', folds by training unit'}: APGR and AIQ "
                            "with 95 % bootstrap intervals "
                            f"({resamples} resamples of the held-out rows) [{time.perf_counter() - t0:.0f} s]",
                            ["held out", "router", "APGR", "AIQ", "verdict", "note"], rows, key=f"generalization-{name}{'' if balance else '-unbalanced'}{'' if grouped else '-random-folds'}"
                            f"{'-' + ','.join(only) if only else ''}"))
    if features_baseline:
        rows = features_only(data, resamples, balance, grouped)
        console.print(table(f"Leave one dataset out, no embedding: the prompt features alone ({resamples} resamples)",
                            ["held out", "router", "APGR", "AIQ", "verdict", "note"], rows,
                            key="generalization-features-only"))
    if routers:
        loaded = {label: QueryRouter.load(path) for label, path in routers.items()}
        cols = ["test split", "rows"]
        for label, r in loaded.items():
            cols += [f"APGR {label}", f"AIQ {label}"]
            console.print(f"{label}: {routers[label]} ({r.embedder_id}; {r.info.get('trained_on', '')[:160]})")
        rows = packaged(data, loaded, resamples)
        console.print(table("Router files on every table's test split (their training never saw these rows)",
                            cols + ["APGR prompt length", "random APGR 97.5 %", "random AIQ 97.5 %"], rows,
                            key="generalization-packaged"))
