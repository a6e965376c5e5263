"""Choose a router's settings by k-fold cross-validation on its own training table.

Defaults tuned on someone else's data do not carry over to a user's table, so the settings are
chosen on the user's table, by AIQ (the cost-aware area under the cost-quality curve, which
means the same whichever model is dearer or better), each candidate scored on every fold and
the best mean kept; where the first candidate listed is the default (the network alone against
a blend, the memory prior 1), it is kept unless the best beats it by more than a standard error
of the paired fold differences (see :func:`_best`):

1. ``neighbours`` — the smoothing the network is distilled from.  Every ``k`` is scored as the
   kNN estimate it produces for the held-out fold (one similarity pass serves all ``k``), a
   network-free proxy for how good a target it is.
2. ``ridge_alpha`` — the linear head: ridge on the outcomes (closed form; ridge averages the
   noise itself, so it needs no smoothing).
3. ``hidden_dim`` × ``network_weight`` — one FastGRNN per hidden size and fold (the only costly
   step), each blended with the fold's linear head at every weight (1.0: the network alone).
   The hidden size whose best blend has the best mean wins; at that size, the weight.
4. ``memory_prior`` — the outcome memory's prior weight, scored on the held-out queries that
   repeat a query of the other folds word for word (skipped, prior 1, when too few repeat).

The folds are random rows, or, when the problem carries ``groups`` (one label per row: the source
table a pooled training row came from), whole groups (:func:`group_kfold`): a pooled table's
random folds reward recognising the source, which does not carry to traffic from a new one.

The result records every candidate's per-fold AIQ, so the spread across folds is on file.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import TinyDancerError, ValidationError
from .evaluation import router_aiq
from .linear_head import LinearHead
from .memory import OutcomeMemory, query_keys
from .neighbours import NeighbourIndex
from ..nn.data import TrainingDataset
from .router_config import QueryRouterConfig
from .routing_problem import FILL_NEIGHBOURS, RoutingProblem, train_network

#: held-out queries that must repeat a training query, over all folds, before the memory's
#: prior is chosen by cross-validation rather than left at 1
MIN_REPEATS = 30
#: the neighbour index holds ``depth`` int32 row numbers per row (about 1,400 at the defaults):
#: above this many rows it would take gigabytes, and subsets are smoothed directly instead
INDEX_MAX_ROWS = 40_000
#: tables from this many rows train their fold networks in parallel (when cores allow)
PARALLEL_MIN_ROWS = 2_000


def kfold(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) per fold: a seeded permutation cut into ``folds`` parts."""
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(part)) for i, part in enumerate(parts)]


def group_kfold(groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) per fold, each group's rows all in one fold.

    Why: on a table pooled from several sources (datasets, task families, tenants), random folds
    share every source between a fold's training and held-out rows, so they reward recognising
    which source a query comes from — exactly what does not carry to a source the router has
    never seen.  Holding out whole groups scores a setting as it will be used on new traffic.
    Groups go largest first (ties in seeded order) to the fold with the fewest rows so far, so the
    folds stay as even as the groups allow."""
    labels, codes, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if len(labels) < folds:
        raise ValidationError(f"{len(labels)} groups cannot fill {folds} grouped folds: give at least {folds} groups "
                              "(datasets, sources), or fewer folds")
    tie = np.random.default_rng(seed).permutation(len(labels))
    fold_of = np.empty(len(labels), dtype=np.int64)
    rows_in = np.zeros(folds, dtype=np.int64)
    for g in np.lexsort((tie, -sizes)):
        fold_of[g] = int(np.argmin(rows_in))
        rows_in[fold_of[g]] += sizes[g]
    row_fold = fold_of[codes]
    return [(np.flatnonzero(row_fold != i), np.flatnonzero(row_fold == i)) for i in range(folds)]


@dataclass
class Selection:
    """The chosen settings, and every candidate's AIQ on each fold."""

    neighbours: int
    ridge_alpha: float
    hidden_dim: int
    network_weight: float
    memory_prior: float
    folds: int
    #: stage → candidate label → AIQ per fold
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: the chosen setting's out-of-fold outputs (before the memory), one row per training query
    out_of_fold: np.ndarray | None = None
    seconds: float = 0.0
    #: processes the fold networks trained in
    workers: int = 1
    #: distinct groups the folds held out whole (None: random folds)
    groups: int | None = None

    @property
    def fold_aiq(self) -> list[float]:
        """The chosen network and blend's AIQ on each held-out fold."""
        return self.scores["network"][_blend_label(self.hidden_dim, self.network_weight)]

    def to_info(self) -> dict[str, Any]:
        folds = np.asarray(self.fold_aiq)
        return {
            "folds": self.folds, "criterion": "aiq",
            "chosen": {"neighbours": self.neighbours, "ridge_alpha": self.ridge_alpha, "hidden_dim": self.hidden_dim,
                       "network_weight": self.network_weight, "memory_prior": self.memory_prior},
            "cv_aiq": float(folds.mean()), "cv_aiq_std": float(folds.std()),
            "cv_aiq_range": [float(folds.min()), float(folds.max())],
            "candidates": self.scores, "seconds": round(self.seconds, 2), "workers": self.workers,
            "folds_by": "random rows" if self.groups is None else f"group ({self.groups} groups held out whole)",
        }


def _blend_label(hidden: int, weight: float) -> str:
    return f"hidden {hidden}, network weight {weight:g}"


def _best(candidates: dict[Any, list[float]], prefer_first: bool = False) -> Any:
    """The candidate with the best mean over folds (the first on ties).

    With ``prefer_first`` (the first listed is the default), the first candidate in listed order
    whose paired shortfall to the best is within one standard error of that shortfall wins: the
    one-standard-error rule, pointed at the default.  Fold networks train on less data than the
    shipped one, which flatters the low-variance candidates (the linear head), and a gain of
    +0.001 AIQ on three folds is mostly noise; the rule keeps the default unless the folds agree.
    """
    best = max(candidates, key=lambda c: float(np.mean(candidates[c])))
    if not prefer_first:
        return best
    top = np.asarray(candidates[best])
    for c, scores in candidates.items():
        shortfall = top - np.asarray(scores)
        se = float(shortfall.std(ddof=1)) / np.sqrt(len(shortfall)) if len(shortfall) > 1 else 0.0
        if float(shortfall.mean()) <= se:
            return c
    return best


def _fold_outputs(train_set: TrainingDataset, val_set: TrainingDataset, hidden: int, cfg: QueryRouterConfig,
                  distill: bool, x_held: np.ndarray) -> tuple[np.ndarray, int]:
    """One fold's network (a worker process's task): its outputs on the held-out queries, and epochs."""
    net, epochs = train_network(train_set, val_set, hidden, cfg, distill=distill)
    return net.predict(x_held), epochs


def _workers(cfg: QueryRouterConfig, n: int, tasks: int) -> int:
    """Processes for the fold networks: forked, so only from a process with no other Python
    thread (a fork copies one thread; a lock another held would stay locked in the child)."""
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return 1
    if cfg.workers is not None:
        return max(1, min(cfg.workers, tasks))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # a worker costs a fork and a copy of its fold: worth it on tables whose networks take seconds
    return max(1, min(cores, tasks)) if n >= PARALLEL_MIN_ROWS else 1


def _fold_networks(problem: RoutingProblem, folds: list[tuple[np.ndarray, np.ndarray]], k: int,
                   say: Callable[[str], None]) -> tuple[dict[tuple[int, int], tuple[np.ndarray, int]], int]:
    """(fold, hidden) → the held-out outputs of a network trained on the fold's other rows, in
    fold-then-hidden order.  The networks are independent and seeded, so with more than one core
    they train in worker processes, with the same result as one after another."""
    cfg = problem.config
    tasks = [(i, hidden) for i in range(len(folds)) for hidden in cfg.hidden_dims]
    distill = k > 0 or problem.teacher is not None

    def task(i: int, hidden: int) -> tuple[Any, ...]:
        f, h = folds[i]
        train_set, val_set = problem.network_data(f, k)  # fresh sets: training normalizes them in place
        return train_set, val_set, hidden, cfg, distill, problem.x[h]

    results: dict[tuple[int, int], tuple[np.ndarray, int]] = {}

    def done(key: tuple[int, int], result: tuple[np.ndarray, int]) -> None:
        results[key] = result
        say(f"fold {key[0] + 1}/{len(folds)}, hidden {key[1]}: trained ({result[1]} epochs)")

    workers = _workers(cfg, problem.n, len(tasks))
    say(f"training {len(tasks)} fold networks in {workers} process{'es' if workers > 1 else ''}")
    if workers == 1:
        for key in tasks:
            done(key, _fold_outputs(*task(*key)))
    else:
        # training runs BLAS on one thread (Trainer.train), so the workers do not compete for cores
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {pool.submit(_fold_outputs, *task(*key)): key for key in tasks}
                for future in as_completed(futures):
                    done(futures[future], future.result())
        except BrokenProcessPool as exc:
            raise TinyDancerError(
                f"a process training the cross-validation networks died ({len(results)} of {len(tasks)} had "
                "finished), most likely killed for memory; train them one after another with "
                "QueryRouterConfig(workers=1) (`tinydancer router train --workers 1`), or with fewer folds") from exc
    return {key: results[key] for key in tasks}, workers


def select(problem: RoutingProblem, progress: Callable[[str], None] | None = None) -> Selection:
    """Choose neighbours, ridge alpha, hidden size, network weight and memory prior (see the
    module docstring); settings fixed in ``problem.config`` are taken as given."""
    cfg = problem.config
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    folds = kfold(problem.n, cfg.folds, cfg.seed) if problem.groups is None else group_kfold(problem.groups, cfg.folds, cfg.seed)
    k_most = cfg.neighbours if cfg.neighbours is not None else max(cfg.neighbour_candidates)
    if problem.index is None and k_most > 0 and problem.n <= INDEX_MAX_ROWS:
        # the smallest subset smoothed is a fold's training slice; twice the expected need is margin
        smallest = (cfg.folds - 1) / cfg.folds * (1.0 - cfg.validation_fraction)
        problem.index = NeighbourIndex(problem.x, int(np.ceil(2 * max(k_most, FILL_NEIGHBOURS) / smallest)))
    held = [(problem.filled(h, f)[:, : problem.m], problem.costs[h]) for f, h in folds]

    def fold_aiq(i: int, outputs: np.ndarray) -> float:
        return router_aiq(outputs, held[i][0], held[i][1], problem.pair)

    scores: dict[str, dict[str, list[float]]] = {}

    # 1. the neighbour smoothing, scored as the kNN estimate it makes of each held-out fold
    if cfg.neighbours is not None:
        k = cfg.neighbours
    else:
        ks = list(cfg.neighbour_candidates)
        by_k: dict[int, list[float]] = {c: [] for c in ks}
        for i, (f, h) in enumerate(folds):
            means = problem.neighbour_means(h, f, ks)
            for c in ks:
                by_k[c].append(fold_aiq(i, problem.with_advantage(means[c]) if problem.partial else means[c]))
        k = int(_best(by_k))
        scores["neighbours"] = {str(c): v for c, v in by_k.items()}
        say(f"neighbour smoothing: k = {k} (kNN AIQ {np.mean(by_k[k]):.4f} over {cfg.folds} folds)")

    # 2. the linear head's ridge penalty
    alphas = list(cfg.ridge_alphas)
    needs_head = any(w < 1.0 for w in cfg.network_weights)
    head_out: list[np.ndarray] = []
    alpha = alphas[0]
    if needs_head:
        fold_heads = [LinearHead.fit_path(problem.x[f], problem.head_targets(f, k), alphas) for f, _h in folds]
        by_alpha = {a: [fold_aiq(i, heads[j].predict(problem.x[h])) for i, ((_f, h), heads) in enumerate(zip(folds, fold_heads))]
                    for j, a in enumerate(alphas)}
        alpha = float(_best(by_alpha))
        head_out = [heads[alphas.index(alpha)].predict(problem.x[h]) for (_f, h), heads in zip(folds, fold_heads)]
        scores["ridge_alpha"] = {f"{a:g}": v for a, v in by_alpha.items()}
        say(f"linear head: alpha = {alpha:g} (AIQ {np.mean(by_alpha[alpha]):.4f} alone)")

    # 3. the network's hidden size, and its weight against the linear head
    blends: dict[tuple[int, float], list[float]] = {}
    outputs: dict[tuple[int, float], list[np.ndarray]] = {}
    trained, workers = _fold_networks(problem, folds, k, say)
    for (i, hidden), (net_out, _epochs) in trained.items():
        for w in cfg.network_weights:
            out = net_out if w >= 1.0 else w * net_out + (1.0 - w) * head_out[i]
            blends.setdefault((hidden, w), []).append(fold_aiq(i, out))
            outputs.setdefault((hidden, w), []).append(out)
    # the hidden size by its best mean (no size is the default); then, at that size, the blend
    # with the default (the network alone) kept unless the folds clearly prefer another weight
    hidden = _best({hd: max((v for (h2, _w), v in blends.items() if h2 == hd), key=np.mean) for hd in cfg.hidden_dims})
    weight = _best({w: blends[(hidden, w)] for w in cfg.network_weights}, prefer_first=True)
    scores["network"] = {_blend_label(hd, w): v for (hd, w), v in blends.items()}
    chosen_out = outputs[(hidden, weight)]
    say(f"chosen: hidden {hidden}, network weight {weight:g} (AIQ {np.mean(blends[(hidden, weight)]):.4f} "
        f"± {np.std(blends[(hidden, weight)]):.4f} over folds)")

    # 4. the outcome memory's prior, on held-out queries that repeat a training query
    prior = cfg.memory_prior if cfg.memory_prior is not None else 1.0
    if cfg.memory and cfg.memory_prior is None:
        keys = query_keys(problem.queries)
        memories = [OutcomeMemory.empty(0).merged_keys(keys[f], problem.targets[f], ~np.isnan(problem.targets[f]))
                    for f, _h in folds]
        repeats = sum(int(mem.blend_keys(keys[h], out)[1].sum()) for mem, (_f, h), out in zip(memories, folds, chosen_out))
        if repeats >= MIN_REPEATS:
            by_prior = {p: [fold_aiq(i, dataclasses.replace(mem, prior_weight=p).blend_keys(keys[h], out)[0])
                            for i, (mem, (_f, h), out) in enumerate(zip(memories, folds, chosen_out))]
                        for p in cfg.memory_priors}
            prior = float(_best(by_prior, prefer_first=True))
            scores["memory_prior"] = {f"{p:g}": v for p, v in by_prior.items()}
            say(f"outcome memory: prior {prior:g} ({repeats} held-out queries repeat a training query)")
        else:
            say(f"outcome memory: prior 1 ({repeats} held-out repeats are too few to choose it)")

    oof = np.empty((problem.n, chosen_out[0].shape[1]), dtype=np.float32)
    for (_f, h), out in zip(folds, chosen_out):
        oof[h] = out
    return Selection(neighbours=k, ridge_alpha=alpha, hidden_dim=int(hidden), network_weight=float(weight),
                     memory_prior=float(prior), folds=cfg.folds, scores=scores, out_of_fold=oof,
                     seconds=time.perf_counter() - started, workers=workers,
                     groups=None if problem.groups is None else len(np.unique(problem.groups)))
