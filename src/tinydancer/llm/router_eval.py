"""A :class:`~tinydancer.llm.query_router.QueryRouter` measured on a routing table: AIQ, APGR and
CPT for two models, calibration (Brier, ECE), the whole cost-quality curve and what it saves
against the best single model.

Apart from the router so that the router's class holds what routing needs; the metrics
themselves are in :mod:`~tinydancer.llm.evaluation`.  This module does not import
:mod:`~tinydancer.llm.query_router` (that module imports this one): a router is typed
:data:`Router` here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ValidationError
from .evaluation import (aiq, brier_score, expected_calibration_error, routellm_curve, savings, sweep_choices, sweep_curve,
                         sweep_points)
from .tables import RoutingTable

__all__ = ["evaluate", "table_embeddings"]

#: a QueryRouter (not imported: query_router imports this module)
Router = Any


def evaluate(router: Router, table: RoutingTable, n_settings: int = 201) -> dict[str, Any]:
    """AIQ (and for two models APGR, CPT20/50/80 in % strong calls), Brier score and ECE on a table."""
    if sorted(table.models) != sorted(router.models):
        raise ValidationError(f"the table scores {table.models}, this router routes {router.models}")
    table.require_complete("evaluation")
    col = [table.models.index(m) for m in router.models]
    scores, costs = table.scores[:, col], table.costs[:, col]
    x = table_embeddings(router, table)
    outputs, remembered = router.remember(table.queries, router.estimate(x))
    mean_costs = costs.mean(axis=0)
    result: dict[str, Any] = {"n_queries": len(table), "models": router.models, "remembered": int(remembered.sum())}
    predicted = outputs[:, : len(router.models)]  # calibration of the per-model qualities against what was observed
    result.update(brier=brier_score(predicted, scores), ece=expected_calibration_error(predicted, scores))
    if router.is_pair:
        s, w = scores[:, router.strong], scores[:, router.weak]
        curve = routellm_curve(outputs[:, 2], s, w)
        result.update(apgr=curve.apgr, cpt20=curve.cpt(0.2), cpt50=curve.cpt(0.5), cpt80=curve.cpt(0.8))
    # every setting of the knob at once: thresholds for a pair, cost weights on the router's prices otherwise
    choices = sweep_choices(outputs, costs, (router.strong, router.weak) if router.is_pair else None, n_settings,
                            prices=None if router.is_pair else router.costs)
    cost, quality = sweep_curve(choices, scores, costs)
    result["aiq"] = aiq(cost, quality, float(mean_costs.min()), float(mean_costs.max()))
    chosen = router.choose(outputs)
    result["default_setting"] = dict(zip(("mean_cost", "mean_quality"), sweep_points(chosen, scores, costs)))
    result["curve"] = {"mean_cost": cost.tolist(), "mean_quality": quality.tolist()}
    best = int(np.argmax(scores.mean(axis=0)))
    result["best_single_model"] = {"model": router.models[best], "mean_quality": float(scores[:, best].mean()),
                                   "mean_cost": float(mean_costs[best])}
    result["savings"] = savings(cost, quality, float(mean_costs[best]), float(scores[:, best].mean()))
    return result


def table_embeddings(router: Router, table: RoutingTable) -> np.ndarray:
    """The table's own embeddings when they fit the router, else its queries embedded by the router's embedder."""
    if table.embeddings is not None:
        if table.embeddings.shape[1] != router.model.config.input_dim:
            raise ValidationError(
                f"the table's embeddings have {table.embeddings.shape[1]} values; this router needs "
                f"{router.model.config.input_dim} ({router.embedder_id}); drop them to embed the queries"
            )
        return table.embeddings
    return router.embedder.embed(table.queries)
