"""A routing table in a router's terms, and how one network is trained on part of it.

Shared by cross-validation (:mod:`tinydancer.llm.selection`), which trains a network per fold,
and :meth:`QueryRouter.fit <tinydancer.llm.query_router.QueryRouter.fit>`, which trains the one
that ships, so that the two train exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..nn import FastGRNN, FastGRNNConfig
from ..nn.data import TrainingDataset
from ..nn.losses import soft_targets_from_logits
from ..nn.training import Trainer, TrainingConfig
from .neighbours import NeighbourIndex, neighbour_means_by_k
from .router_config import QueryRouterConfig

#: neighbours that fill a held-out row's missing cells when the smoothing itself is off or searched
FILL_NEIGHBOURS = 100


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a table of ``n`` queries: the slice a network is
    early-stopped on (and, without cross-validation, its hidden size chosen on)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(int(round(fraction * n)), 5)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class RoutingProblem:
    """Embeddings, targets and costs of a table, in the router's model order.

    ``targets`` holds one quality column per model and, for two models, the strong model's
    advantage ``(1 + q_strong - q_weak) / 2``; NaN marks an outcome nobody observed.
    """

    x: np.ndarray
    targets: np.ndarray
    costs: np.ndarray  # (n, m) per query, a model's mean cost where missing
    queries: list[str]
    strong: int
    weak: int
    config: QueryRouterConfig
    teacher: np.ndarray | None = None  # two models: teacher logits per query
    #: every row's nearest rows, when cross-validation will smooth many subsets (see neighbours)
    index: NeighbourIndex | None = None
    #: one label per row (its source table, dataset or tenant): cross-validation then holds out
    #: whole groups (``selection.group_kfold``); None = random folds
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        # smoothing is the costly part of a fold; each hidden size of a fold reuses the fold's
        self._smoothed: dict[tuple[bytes, int], np.ndarray] = {}
        self._partial = bool(np.isnan(self.targets).any())  # the targets never change

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def m(self) -> int:
        return int(self.costs.shape[1])

    @property
    def pair(self) -> tuple[int, int] | None:
        """(strong, weak) for two models: the router's score is then the advantage column."""
        return (self.strong, self.weak) if self.m == 2 else None

    @property
    def partial(self) -> bool:
        """Whether some outcome was never observed (a logged or sampled table)."""
        return self._partial

    def neighbour_means(self, rows: np.ndarray, ref_rows: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
        """Each row's mean target over its ``k`` nearest ``ref_rows`` (not itself), for every ``k``."""
        if self.index is not None:
            return self.index.means_by_k(rows, ref_rows, self.targets, ks)
        position = np.full(self.n, -1)
        position[ref_rows] = np.arange(len(ref_rows))
        return neighbour_means_by_k(self.x[rows], self.x[ref_rows], self.targets[ref_rows], ks, exclude=position[rows])

    def with_advantage(self, filled: np.ndarray) -> np.ndarray:
        """Two models: ``filled``'s advantage column recomputed (in place) from its smoothed
        qualities; more models: ``filled`` as it is."""
        if self.m == 2:  # a row rarely has both scores: the advantage comes from the smoothed qualities
            filled[:, 2] = (1.0 + filled[:, self.strong] - filled[:, self.weak]) / 2.0
        return filled

    def smoothed(self, rows: np.ndarray, k: int) -> np.ndarray:
        """Soft targets of ``rows``, each the mean over its ``k`` nearest among ``rows`` (k = 0: the
        outcomes themselves), with the teacher's logits blended into the advantage when given."""
        key = (np.asarray(rows, dtype=np.int64).tobytes(), int(k))
        if key in self._smoothed:
            return self._smoothed[key].copy()
        soft = self.neighbour_means(rows, rows, [k])[k] if k > 0 and len(rows) > 1 else self.targets[rows].copy()
        if self.partial:
            soft = self.with_advantage(soft)
        if self.teacher is not None:
            cfg = self.config
            probs = soft_targets_from_logits(self.teacher[rows], cfg.teacher_temperature)
            # put the teacher's probabilities on the advantage target's scale (mean and spread)
            adv = soft[:, 2]
            matched = (probs - probs.mean()) / max(float(probs.std()), 1e-6) * adv.std() + adv.mean()
            soft[:, 2] = np.clip((1 - cfg.teacher_weight) * adv + cfg.teacher_weight * matched, 0.0, 1.0)
        self._smoothed = {key: soft}  # the last one only: a fold's hidden sizes come one after another
        return soft.copy()

    def observed_or(self, rows: np.ndarray, soft: np.ndarray) -> np.ndarray:
        """The outcomes of ``rows``, with ``soft`` (their smoothed targets) where none was observed."""
        return np.where(np.isnan(self.targets[rows]), soft, self.targets[rows]) if self.partial else self.targets[rows]

    def head_targets(self, rows: np.ndarray, k: int) -> np.ndarray:
        """What a linear head of ``rows`` is fit to: their outcomes, smoothed ones where missing
        (ridge averages the noise itself); with a teacher, the network's own distillation targets."""
        if self.teacher is not None:
            return self.smoothed(rows, k)
        return self.observed_or(rows, self.smoothed(rows, k)) if self.partial else self.targets[rows]

    def filled(self, rows: np.ndarray, ref_rows: np.ndarray, k: int = 0) -> np.ndarray:
        """Targets of ``rows`` with each missing cell the mean outcome of its ``k`` nearest
        ``ref_rows`` that observed it (never from ``rows`` themselves)."""
        own = self.targets[rows]
        if not self.partial:
            return own
        k = k or FILL_NEIGHBOURS
        fill = self.neighbour_means(rows, ref_rows, [k])[k]
        return np.where(np.isnan(own), self.with_advantage(fill), own)

    def network_data(self, rows: np.ndarray, k: int) -> tuple[TrainingDataset, TrainingDataset]:
        """(training set, early-stopping set) for a network of ``rows``: a ``validation_fraction``
        slice of them to stop on, the rest towards targets smoothed over ``k`` neighbours."""
        fit_i, stop_i = validation_split(len(rows), self.config.validation_fraction, self.config.seed)
        fit, stop = rows[fit_i], rows[stop_i]
        soft = self.smoothed(fit, k)
        return (TrainingDataset(self.x[fit], self.observed_or(fit, soft), soft_targets=soft),
                TrainingDataset(self.x[stop], self.filled(stop, fit, k)))

    def train_network(self, rows: np.ndarray, hidden: int, k: int, init: FastGRNN | None = None) -> tuple[FastGRNN, int]:
        """A network trained on ``rows`` (see :meth:`network_data`); ``init`` fine-tunes a copy of
        that network with its normalization.  Returns the network and the epochs it ran."""
        train_set, val_set = self.network_data(rows, k)
        return train_network(train_set, val_set, hidden, self.config, distill=k > 0 or self.teacher is not None, init=init)


def train_network(train_set: TrainingDataset, val_set: TrainingDataset, hidden: int, cfg: QueryRouterConfig, *,
                  distill: bool, init: FastGRNN | None = None) -> tuple[FastGRNN, int]:
    """Train a router's sigmoid FastGRNN (or fine-tune a copy of ``init``) on raw-feature sets,
    which it normalizes; a module-level function so that folds can train in worker processes."""
    if init is not None and init.normalizer is not None:
        train_set.apply_normalization(init.normalizer)
    else:
        train_set.normalize()
    val_set.apply_normalization(train_set.normalization)  # type: ignore[arg-type]
    if init is not None:
        mcfg, net = init.config, init.copy()
        net.quantized = None
    else:
        mcfg = FastGRNNConfig(input_dim=train_set.feature_dim, hidden_dim=int(hidden), output_dim=train_set.output_dim,
                              rank=cfg.rank, output_activation="sigmoid")
        net = FastGRNN(mcfg, seed=cfg.seed)
    tcfg = TrainingConfig(
        learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, epochs=cfg.epochs,
        early_stopping_patience=cfg.patience, l2_reg=cfg.l2_reg, seed=cfg.seed,
        enable_distillation=distill, distillation_alpha=1.0 - cfg.label_weight, distillation_temperature=1.0,
        w_sparsity=cfg.w_sparsity, u_sparsity=cfg.u_sparsity,
    )
    trainer = Trainer(mcfg, tcfg)
    trainer.train(net, train_set, validation=val_set)
    return net, len(trainer.metrics)
