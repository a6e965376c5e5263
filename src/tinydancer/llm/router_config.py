"""How a :class:`~tinydancer.llm.query_router.QueryRouter` is trained, and what is searched.

The defaults assume nothing about the user's table.  Settings left as ``None`` (and the
candidate tuples) are chosen by k-fold cross-validation on the training table, by AIQ — a
cost-aware criterion that means the same whichever model is dearer or better (see
:mod:`tinydancer.llm.selection`).  A fixed value skips that search.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._validation import check_number
from ..errors import ValidationError


@dataclass
class QueryRouterConfig:
    """Training settings and the candidate family cross-validation chooses from."""

    #: FastGRNN hidden sizes to choose from (the best cross-validated mean wins)
    hidden_dims: tuple[int, ...] = (16, 32)
    rank: int | None = None
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 60
    l2_reg: float = 1e-3
    patience: int = 8
    #: share of the rows a network is early-stopped on (the rest trains it)
    validation_fraction: float = 0.15
    #: cross-validation folds the settings are chosen by; 1 = no cross-validation: the hidden size
    #: is chosen on one validation slice, the network routes alone, and ``None`` settings take
    #: their plain defaults (100 neighbours, memory prior 1)
    folds: int = 3
    #: soft targets = mean target of this many nearest training queries (0: raw outcomes);
    #: None = chosen by cross-validation among ``neighbour_candidates``
    neighbours: int | None = None
    neighbour_candidates: tuple[int, ...] = (10, 25, 50, 100, 200, 400)
    #: the linear head's ridge penalties to choose from
    ridge_alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    #: the FastGRNN's share of the routing score, blended with the linear head's; 1.0 = the
    #: network alone.  The first weight is the default, kept unless the folds clearly prefer
    #: another (selection._best)
    network_weights: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)
    #: share of the loss on each query's own outcome; the rest is on the smoothed/teacher target
    label_weight: float = 0.0
    #: share of the advantage head's soft target that comes from teacher logits, when given
    teacher_weight: float = 0.5
    teacher_temperature: float = 2.0
    #: the paper's sparse training (dense → hard thresholding → fine-tuning), see TrainingConfig
    w_sparsity: float = 0.0
    u_sparsity: float = 0.0
    #: remember each training query's own outcomes for verbatim repeats (see tinydancer.llm.memory)
    memory: bool = True
    #: the network's weight in the memory's posterior mean, in observations; None = chosen by
    #: cross-validation among ``memory_priors`` (the first is the default) when the table repeats
    #: enough queries, else 1
    memory_prior: float | None = None
    memory_priors: tuple[float, ...] = (1.0, 0.25, 4.0)
    #: input variants cross-validation chooses between, on the same folds: "none" (the embedding
    #: alone) and/or a prompt feature set's id (``prompt_features.FEATURES_ID``: the embedding with
    #: cheap prompt features appended).  The first is the default, kept unless the folds clearly
    #: prefer another (the one-standard-error rule of ``selection._best``)
    feature_sets: tuple[str, ...] = ("none",)
    seed: int = 0
    #: processes that train the folds' networks; None = one per core for tables of 2,000 rows or
    #: more, else 1 (the result is the same either way: each network is seeded)
    workers: int | None = None

    def __post_init__(self) -> None:
        name = "QueryRouterConfig"
        from .prompt_features import FEATURES_ID

        unknown = [f for f in self.feature_sets if f not in ("none", FEATURES_ID)]
        if unknown or not self.feature_sets:
            raise ValidationError(f"{name}.feature_sets must list 'none' and/or {FEATURES_ID!r}, got {self.feature_sets!r}")
        for field, values in (("hidden_dims", self.hidden_dims), ("neighbour_candidates", self.neighbour_candidates),
                              ("ridge_alphas", self.ridge_alphas), ("network_weights", self.network_weights),
                              ("memory_priors", self.memory_priors)):
            if not values:
                raise ValidationError(f"{name}.{field} must list at least one value")
        for h in self.hidden_dims:
            check_number(name, "hidden_dims", h, low=1, integer=True)
        for k in self.neighbour_candidates:
            check_number(name, "neighbour_candidates", k, low=1, integer=True)
        for a in self.ridge_alphas:
            check_number(name, "ridge_alphas", a, low=0.0, low_open=True)
        for w in self.network_weights:
            check_number(name, "network_weights", w, low=0.0, high=1.0)
        for p in self.memory_priors:
            check_number(name, "memory_priors", p, low=0.0, low_open=True)
        check_number(name, "folds", self.folds, low=1, high=20, integer=True)
        check_number(name, "validation_fraction", self.validation_fraction, low=0.0, high=0.5,
                     low_open=True, high_open=True)
        check_number(name, "neighbours", self.neighbours, low=0, integer=True, optional=True)
        check_number(name, "teacher_weight", self.teacher_weight, low=0.0, high=1.0)
        check_number(name, "label_weight", self.label_weight, low=0.0, high=1.0)
        check_number(name, "memory_prior", self.memory_prior, low=0.0, low_open=True, optional=True)
        check_number(name, "workers", self.workers, low=1, integer=True, optional=True)
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
