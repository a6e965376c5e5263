"""Training a :class:`~tinydancer.llm.query_router.QueryRouter`: a routing table in, a router out.

Kept apart from the router's inference so that routing a query never reads the training code and
the training code can be read in one sitting: the table becomes a :class:`RoutingProblem`, its
settings are chosen (cross-validation, a fine-tuned router's own, or one validation slice), the
shipped network and linear head are trained on all of it, and the operating point is set from
outputs on queries the deciding network did not train on.

This module does not import :mod:`~tinydancer.llm.query_router` (that module imports this one):
the router class comes in as ``cls``, and a router is typed :data:`Router` here.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable, NamedTuple

import numpy as np

from .._validation import as_float_array
from ..errors import ValidationError
from ..nn import FastGRNN
from .evaluation import lambda_grid, router_aiq, sweep_choices, sweep_curve
from .linear_head import LinearHead
from .memory import OutcomeMemory
from .router_config import QueryRouterConfig
from .routing_problem import RoutingProblem, validation_split
from .prompt_features import FeaturedEmbedder, split_id, with_features
from .selection import Selection, _best, select
from .tables import RoutingTable

__all__ = ["fit", "problem_for", "default_cost_weight"]

#: a QueryRouter (not imported: query_router imports this module)
Router = Any


class Settings(NamedTuple):
    """What training chose: neighbours, hidden size, the network's share of the blend, the head's
    ridge alpha, the memory prior; the selection behind them, and a network already trained."""

    neighbours: int
    hidden: int
    network_weight: float
    alpha: float
    prior: float
    selection: Selection | None
    searched: tuple[FastGRNN, int] | None


def fit(
    cls: Callable[..., Router],
    table: RoutingTable,
    config: QueryRouterConfig | None = None,
    *,
    embedder: Any = None,
    teacher_logits: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
    init: Router | None = None,
    groups: Any = None,
) -> Router:
    """:meth:`QueryRouter.fit <tinydancer.llm.query_router.QueryRouter.fit>` (documented there)."""
    config = config or QueryRouterConfig()
    groups = _check_groups(groups, len(table), config)
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    if table.embeddings is None:
        if embedder is None:
            from .embeddings import make_embedder

            embedder = make_embedder("static")  # as `router train`: routes as well as MiniLM, 70-190x faster
        say(f"embedding {len(table)} queries with {embedder.id}")
        table = table.with_embeddings(embedder)
        embedder_id = embedder.id
    else:
        embedder_id = table.meta.get("embedder_id") or (embedder.id if embedder is not None else "unknown")
    problem, models, costs, s, table, embedder_id, features = _problem_and_settings(
        table, config, embedder_id, teacher_logits, init, say, groups)
    n, m = problem.n, problem.m
    k, hidden, weight, selection = s.neighbours, s.hidden, s.network_weight, s.selection

    all_rows = np.arange(n)
    if selection is None and init is None and s.searched is not None:
        net, epochs = s.searched  # trained on the same rows the shipped network would be
    else:
        say(f"training the router's network (hidden {hidden}) on {n} queries")
        net, epochs = problem.train_network(all_rows, hidden, k, init=None if init is None else init.model)
    head = None
    if weight < 1.0:
        head = LinearHead.fit(problem.x, problem.head_targets(all_rows, k), s.alpha,
                              prior=None if init is None else init.head)
    _fit_i, stop = validation_split(n, config.validation_fraction, config.seed)
    info = _info(problem, config, s, epochs, len(stop), teacher_logits is not None, init)
    if features is not None:
        info["features"] = features
    memory = None
    if config.memory:  # the observed outcomes only, added to the earlier router's when fine-tuning
        base = init.memory if init is not None and init.memory is not None else OutcomeMemory.empty(0, s.prior)
        observed = problem.targets.copy()
        memory = base.merged(table.queries, observed, observed=~np.isnan(observed))
    info["memory_entries"] = 0 if memory is None else len(memory)
    router = cls(net, models, costs, embedder_id, info=info, memory=memory, strong=problem.strong if m == 2 else None,
                 head=head, network_weight=weight)
    if selection is None:  # the shipped network on the slice it was early-stopped on (optimistic, but on file)
        info["validation_metric"] = "aiq (early-stopping slice)"
        info["validation_score"] = router_aiq(router.estimate(problem.x[stop]),
                                              problem.filled(stop, np.setdiff1d(all_rows, stop), k)[:, :m],
                                              problem.costs[stop], problem.pair)
    # the operating point comes from outputs on queries the deciding network did not train on:
    # the folds' out-of-fold outputs when cross-validated, else the early-stopping slice
    if selection is not None and selection.out_of_fold is not None:
        rows, outputs = all_rows, selection.out_of_fold
    else:
        rows, outputs = stop, router.estimate(problem.x[stop])
    if m == 2:
        router.score_quantiles = np.quantile(outputs[:, 2], np.linspace(0, 1, 101))
        router.calibrate(0.5)
    else:
        router.cost_weight = default_cost_weight(router, outputs, problem.filled(rows, all_rows)[:, :m], problem.costs[rows])
    info["seconds"] = round(time.perf_counter() - started, 2)
    if embedder is not None and split_id(embedder_id)[1] is not None and split_id(embedder_id)[0] == embedder.id:
        embedder = FeaturedEmbedder(embedder)
    if embedder is not None and embedder.id == embedder_id:
        router.embedder = embedder
    return router


def _check_groups(groups: Any, n: int, config: QueryRouterConfig) -> np.ndarray | None:
    """``groups`` as one label per row, or None; refused unless it can make ``config.folds`` folds."""
    if groups is None:
        return None
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValidationError(f"groups must give one label per query ({n}), got shape {labels.shape}")
    distinct = len(np.unique(labels))
    if config.folds >= 2 and distinct < config.folds:
        raise ValidationError(f"groups holds {distinct} distinct labels; grouped cross-validation with {config.folds} "
                              "folds needs at least as many (one per source table), or set fewer folds")
    return labels


def _problem_and_settings(table: RoutingTable, config: QueryRouterConfig, embedder_id: str,
                          teacher_logits: np.ndarray | None, init: Router | None, say: Callable[[str], None],
                          groups: np.ndarray | None = None) -> tuple[RoutingProblem, list[str], np.ndarray, Settings, RoutingTable, str, dict[str, Any] | None]:
    """The problem and settings to train with, and the table and embedder id they read.

    With more than one ``config.feature_sets`` (and cross-validation, and no router to fine-tune)
    each input variant is cross-validated on the same folds and the first listed is kept unless
    another is better by more than a standard error of the paired fold differences; the
    candidates' fold AIQs are returned for the router's info."""
    variants = list(dict.fromkeys(config.feature_sets)) if init is None and config.folds >= 2 else ["none"]
    if split_id(embedder_id)[1] is not None:  # the table's vectors carry features already
        variants = ["none"]
    tried: dict[str, tuple[Any, ...]] = {}
    for variant in variants:
        t, eid = table, embedder_id
        if variant != "none":
            assert t.embeddings is not None
            t = t.subset(np.arange(len(t)))
            t.embeddings = with_features(table.embeddings, table.queries)
            eid = f"{embedder_id}+{variant}"
            say(f"cross-validating with prompt features {variant}")
        problem, models, costs = problem_for(t, config, eid, teacher_logits, init)
        problem.groups = groups
        if problem.partial and config.neighbours == 0:
            raise ValidationError("a table with missing cells needs neighbour smoothing (neighbours > 0): a missing "
                                  "cell's target is the mean outcome of the query's neighbours that have one")
        min_rows = 20 * max(1, config.folds if init is None else 1)
        if problem.n < min_rows:
            raise ValidationError(f"{problem.n} queries are too few to train and validate a router with {config.folds} "
                                  f"folds; give at least {min_rows}, or fewer folds")
        tried[variant] = (problem, models, costs, _settings(problem, config, init, say), t, eid)
    if len(tried) == 1:
        return (*next(iter(tried.values())), None)
    folds = {v: item[3].selection.fold_aiq for v, item in tried.items()}
    chosen = _best(folds, prefer_first=True)
    say(f"inputs: {chosen} (fold AIQ " + ", ".join(f"{v} {np.mean(a):.4f}" for v, a in folds.items()) + ")")
    return (*tried[chosen], {"chosen": chosen, "fold_aiq": {v: [float(x) for x in a] for v, a in folds.items()}})


def _settings(problem: RoutingProblem, config: QueryRouterConfig, init: Router | None,
              say: Callable[[str], None]) -> Settings:
    """Fine-tuning keeps the router's architecture and settings; otherwise cross-validation
    chooses them (``folds`` >= 2), or the hidden size is chosen on one validation slice."""
    if init is not None:
        chosen = (init.info.get("selection") or {}).get("chosen", {})
        k = config.neighbours if config.neighbours is not None else int(chosen.get("neighbours", 100))
        alpha = init.head.alpha if init.head is not None else config.ridge_alphas[0]
        prior = init.memory.prior_weight if init.memory is not None else (config.memory_prior or 1.0)
        return Settings(k, init.model.config.hidden_dim, init.network_weight, alpha, prior, None, None)
    if config.folds >= 2:
        sel = select(problem, say)
        return Settings(sel.neighbours, sel.hidden_dim, sel.network_weight, sel.ridge_alpha, sel.memory_prior, sel, None)
    k = 100 if config.neighbours is None else config.neighbours
    hidden, searched = _hidden_on_one_slice(problem, k, say)
    return Settings(k, hidden, 1.0, config.ridge_alphas[0], config.memory_prior or 1.0, None, searched)


def _info(problem: RoutingProblem, config: QueryRouterConfig, s: Settings, epochs: Any, n_stop: int,
          teacher: bool, init: Router | None) -> dict[str, Any]:
    """What the router file records about its training (``router info`` shows it)."""
    info: dict[str, Any] = {
        "trained_at": time.time(),
        "train_queries": problem.n - n_stop,
        "validation_queries": n_stop,
        "hidden_dim": int(s.hidden),
        "neighbours": int(s.neighbours),
        "network_weight": float(s.network_weight),
        "epochs": epochs,
        "teacher": teacher,
        "missing_cells": int(np.isnan(problem.targets[:, : problem.m]).sum()),
        "fine_tuned_from": None if init is None else init.model.extra_metadata.get("version") or init.info.get("trained_at"),
        "config": {key: (list(v) if isinstance(v, tuple) else v) for key, v in asdict(config).items()},
    }
    if s.selection is not None:
        info["selection"] = s.selection.to_info()
        info["validation_metric"], info["validation_score"] = f"aiq ({config.folds}-fold cv)", info["selection"]["cv_aiq"]
    elif init is not None and init.info.get("selection"):
        info["selection"] = init.info["selection"]
    return info


def problem_for(table: RoutingTable, config: QueryRouterConfig, embedder_id: str, teacher_logits: np.ndarray | None,
                init: Router | None) -> tuple[RoutingProblem, list[str], np.ndarray]:
    """The table as a :class:`RoutingProblem` in the router's model order, its models and costs."""
    x = table.embeddings
    assert x is not None
    n = len(table)
    if n < 20:
        raise ValidationError(f"{n} queries are too few to train and validate a router; give at least 20")
    models, scores, cost_matrix = list(table.models), table.scores, table.costs
    costs = table.mean_costs
    if init is not None:
        models, scores, cost_matrix, costs = _aligned(table, init, embedder_id)
    m = len(models)
    if m == 2 and init is not None:
        strong, weak = init.strong, init.weak
    elif m == 2:
        # the strong model is the better one on these outcomes, whatever it costs: when the cheaper
        # model is also the better, "strong calls" still means calls to the better model and APGR
        # keeps its sense (price says nothing reliable about quality); ties go to the dearer one
        quality = [float(np.nanmean(scores[:, j])) for j in range(2)]
        strong = int(np.argmax(quality)) if quality[0] != quality[1] else int(np.argmax(costs))
        weak = 1 - strong
    else:
        strong, weak = 0, 0
    targets = scores.astype(np.float32)
    if m == 2:  # NaN where either score is missing
        targets = np.column_stack([targets, (1.0 + targets[:, strong] - targets[:, weak]) / 2.0]).astype(np.float32)
    teacher = None
    if teacher_logits is not None:
        if m != 2:
            raise ValidationError("teacher logits are supported for two-model tables")
        teacher = as_float_array(teacher_logits, "teacher logits", ndim=1)
        if teacher.shape[0] != n:
            raise ValidationError(f"{teacher.shape[0]} teacher logits for {n} queries")
    filled_costs = np.where(np.isnan(cost_matrix), costs[None, :], cost_matrix)
    problem = RoutingProblem(np.asarray(x, dtype=np.float32), targets, filled_costs, list(table.queries), strong, weak,
                             config, teacher)
    return problem, models, costs


def _hidden_on_one_slice(problem: RoutingProblem, k: int,
                         say: Callable[[str], None]) -> tuple[int, tuple[FastGRNN, int] | None]:
    """Without cross-validation: the hidden size whose network routes best on the early-stopping
    slice, and that network (trained on exactly the rows the shipped one would be), if trained."""
    cfg = problem.config
    if len(cfg.hidden_dims) == 1:
        return cfg.hidden_dims[0], None
    everything = np.arange(problem.n)
    fit, val = validation_split(problem.n, cfg.validation_fraction, cfg.seed)
    val_scores = problem.filled(val, fit, k)[:, : problem.m]
    best: tuple[float, int, tuple[FastGRNN, int]] | None = None
    for hidden in cfg.hidden_dims:
        trained = problem.train_network(everything, hidden, k)
        score = router_aiq(trained[0].predict(problem.x[val]), val_scores, problem.costs[val], problem.pair)
        say(f"hidden {hidden}: validation AIQ {score:.4f}")
        if best is None or score > best[0]:
            best = (score, hidden, trained)
    assert best is not None
    return best[1], best[2]


def _aligned(table: RoutingTable, init: Router, embedder_id: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The table's scores and costs in ``init``'s model order, with NaN for models it does not score."""
    if embedder_id != init.embedder_id:
        raise ValidationError(f"the router to fine-tune reads {init.embedder_id!r} embeddings; the table has "
                              f"{embedder_id!r} ones: embed it with the router's embedder")
    unknown = [mod for mod in table.models if mod not in init.models]
    if unknown:
        raise ValidationError(f"the table scores {unknown}, which the router does not route ({init.models}); "
                              "train a new router for a new set of models")
    col = {mod: i for i, mod in enumerate(table.models)}
    n = len(table)
    scores = np.full((n, len(init.models)), np.nan, np.float32)
    cost_matrix = np.full((n, len(init.models)), np.nan)
    for j, mod in enumerate(init.models):
        if mod in col:
            scores[:, j] = table.scores[:, col[mod]]
            cost_matrix[:, j] = table.costs[:, col[mod]]
    means = table.mean_costs
    costs = np.array([means[col[mod]] if mod in col else init.costs[j] for j, mod in enumerate(init.models)])
    return list(init.models), scores, cost_matrix, costs


def default_cost_weight(router: Router, outputs: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> float:
    """An N-model router's cost weight: the cheapest knob setting that matches the best single
    model's validation quality."""
    best_single = float(scores.mean(axis=0).max())
    lambdas = lambda_grid(outputs[:, : len(router.models)], costs)
    _cost, quality = sweep_curve(sweep_choices(outputs, costs, prices=router.costs, lambdas=lambdas), scores, costs)
    good = lambdas[quality >= best_single]
    # the sweep weighs dollars; the router's knob weighs each cost as a share of the dearest one's
    return float(good.max()) * float(router.costs.max()) if good.size else 0.0
