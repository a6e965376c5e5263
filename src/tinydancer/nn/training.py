"""The training loop: mini-batch BPTT, Adam, clipping, L2, LR decay, early stopping, distillation.

Everything the seed's training guide documents, for real.  The seed's trainer never updates a
weight; this one does, and its gradients are checked against finite differences in the tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from .._io import atomic_write_json
from .._validation import DictConfig, check_number
from .data import Batch, BatchIterator, TrainingDataset
from ..errors import TinyDancerError, ValidationError
from .losses import LossSpec, accuracy, bce_with_logits, cross_entropy_with_logits, objective, output_probabilities
from .model import FastGRNN, FastGRNNConfig
from .optim import Adam, clip_by_global_norm
from .sparse import IterativeHardThresholding, sparsity_targets


@dataclass
class TrainingConfig(DictConfig):
    """Hyperparameters, with the seed's defaults.

    ``grad_clip`` bounds the *global* L2 norm of the gradient (the seed's text says elementwise
    clipping to [-c, c]; global-norm clipping keeps the update's direction, which is what RNN
    practice means by it).  ``l2_reg`` adds ``l2_reg/2 * sum(w^2)`` over the weight matrices
    (not biases or the two scalars), i.e. a gradient of ``l2_reg * w``.
    """

    learning_rate: float = 0.001
    batch_size: int = 32
    epochs: int = 100
    validation_split: float = 0.2
    early_stopping_patience: int | None = 10
    lr_decay: float = 0.5
    lr_decay_step: int = 20
    grad_clip: float = 5.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    l2_reg: float = 1e-5
    enable_distillation: bool = False
    distillation_temperature: float = 3.0
    distillation_alpha: float = 0.5
    #: seeds the validation split and the batch order
    seed: int = 0
    #: at the end (or on early stop), put back the weights of the best validation epoch
    restore_best_weights: bool = True
    #: fraction of W (or W1, W2) / U (or U1, U2) entries removed by the paper's sparse training:
    #: epochs split in thirds — dense, iterative hard thresholding, fine-tuning on the support
    w_sparsity: float = 0.0
    u_sparsity: float = 0.0
    #: hard-threshold every this many optimizer steps during stage 2 (the paper: ~15 batches)
    iht_every: int = 15

    def __post_init__(self) -> None:
        def field(name: str, **bounds: Any) -> None:
            check_number("TrainingConfig", name, getattr(self, name), **bounds)

        field("learning_rate", low=0.0, low_open=True)
        field("batch_size", low=1, integer=True)
        field("epochs", low=1, integer=True)
        field("validation_split", low=0.0, high=1.0, high_open=True)
        field("early_stopping_patience", low=1, integer=True, optional=True)
        field("lr_decay", low=0.0, high=1.0, low_open=True)
        field("lr_decay_step", low=1, integer=True)
        field("grad_clip", low=0.0)  # 0 disables clipping
        field("adam_beta1", low=0.0, high=1.0, high_open=True)
        field("adam_beta2", low=0.0, high=1.0, high_open=True)
        field("adam_epsilon", low=0.0, low_open=True)
        field("l2_reg", low=0.0)
        field("distillation_temperature", low=0.0, low_open=True)
        field("distillation_alpha", low=0.0, high=1.0)
        field("w_sparsity", low=0.0, high=1.0, high_open=True)
        field("u_sparsity", low=0.0, high=1.0, high_open=True)
        field("iht_every", low=1, integer=True)

    @property
    def sparse(self) -> bool:
        return self.w_sparsity > 0 or self.u_sparsity > 0



@dataclass
class TrainingMetrics:
    """One epoch's numbers.  Losses are the data loss (without the L2 penalty)."""

    epoch: int
    train_loss: float
    val_loss: float
    train_accuracy: float
    val_accuracy: float
    learning_rate: float
    epoch_time_s: float = 0.0


class StepHook(Protocol):
    """Called after every optimizer step (used by sparse training to re-threshold weights)."""

    def __call__(self, model: FastGRNN, step: int, epoch: int) -> None: ...


class TrainingDivergedError(TinyDancerError, FloatingPointError):
    """The loss became NaN or Inf."""


def _check_compatible(model: FastGRNN, dataset: TrainingDataset, what: str) -> None:
    cfg = model.config
    if dataset.feature_dim != cfg.input_dim:
        raise ValidationError(f"{what} has {dataset.feature_dim} features but the model expects {cfg.input_dim}")
    if dataset.output_dim != cfg.output_dim:
        raise ValidationError(f"{what} has {dataset.output_dim} label column(s) but the model has {cfg.output_dim} output(s)")


def evaluate_model(model: FastGRNN, dataset: TrainingDataset) -> tuple[float, float]:
    """(mean hard loss, accuracy) of ``model`` on ``dataset`` — sample-weighted loss if weights exist."""
    _check_compatible(model, dataset, "evaluation data")
    logits = model.logits(dataset.features_3d().astype(model.dtype, copy=False)).astype(np.float64)
    labels = dataset.labels_2d().astype(np.float64)
    act = model.config.output_activation
    if act == "sigmoid":
        per_sample = bce_with_logits(logits, labels).mean(axis=1)
    else:
        per_sample = cross_entropy_with_logits(logits, labels)
    w = dataset.sample_weights
    loss = float(per_sample.mean() if w is None else (per_sample * w).sum() / w.sum())
    return loss, accuracy(output_probabilities(logits, act), labels, act)


class Trainer:
    """Trains a :class:`FastGRNN` in place and keeps the per-epoch metrics."""

    def __init__(self, model_config: FastGRNNConfig | None = None, training_config: TrainingConfig | None = None) -> None:
        self.model_config = model_config
        self.config = training_config if training_config is not None else TrainingConfig()
        self.metrics: list[TrainingMetrics] = []
        self.best_epoch: int | None = None
        self.stopped_early = False

    # ------------------------------------------------------------------ one step's math
    def loss_spec(self, model: FastGRNN) -> LossSpec:
        c = self.config
        return LossSpec(
            activation=model.config.output_activation or "sigmoid",
            distillation=c.enable_distillation,
            temperature=c.distillation_temperature,
            alpha=c.distillation_alpha,
        )

    def loss_and_grad(self, model: FastGRNN, batch: Batch, *, with_logits: bool = False) -> Any:
        """Total objective (data loss + L2 penalty) and its flat gradient for one batch."""
        x = batch.features.astype(model.dtype, copy=False)
        logits, cache = model.forward_train(x)
        loss, dlogits = objective(
            logits,
            batch.labels.astype(model.dtype, copy=False),
            self.loss_spec(model),
            None if batch.soft_targets is None else batch.soft_targets.astype(model.dtype, copy=False),
            batch.weights,
        )
        grad = model.backward(cache, dlogits)
        l2 = self.config.l2_reg
        if l2 > 0:
            w = model.flat * model.weight_mask()
            loss += 0.5 * l2 * float(np.dot(w, w))
            grad += l2 * w
        return (loss, grad, logits) if with_logits else (loss, grad)

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        model: FastGRNN,
        dataset: TrainingDataset,
        *,
        validation: TrainingDataset | None = None,
        on_epoch_end: Callable[[TrainingMetrics], None] | None = None,
        hooks: Sequence[StepHook] = (),
        start_epoch: int = 0,
    ) -> list[TrainingMetrics]:
        """Train ``model`` in place; return the metrics of every epoch run.

        Without an explicit ``validation`` set, ``validation_split`` of ``dataset`` is held out
        (seeded).  Early stopping watches the validation loss; with ``restore_best_weights`` the
        best epoch's weights are put back at the end.  With ``w_sparsity``/``u_sparsity`` set,
        the paper's three-stage sparse training runs instead (see :meth:`_train_sparse`).
        ``start_epoch`` continues the epoch count and learning-rate schedule of an earlier run.

        BLAS runs one thread meanwhile.  A step's products (a mini-batch by a few hundred inputs by
        the hidden size) are too small to share: alone, the MMLU router's network trains in about
        the same time either way (1.5 s on one thread, 1.6 s on two).  But routers train their
        cross-validation folds in parallel processes, and two processes with two BLAS threads
        each on two cores took 14 s for six MMLU fold networks, against 3.7 s on one thread each.
        """
        with threadpool_limits(limits=1, user_api="blas"):
            return self._train(model, dataset, validation=validation, on_epoch_end=on_epoch_end, hooks=hooks,
                               start_epoch=start_epoch)

    def _train(
        self,
        model: FastGRNN,
        dataset: TrainingDataset,
        *,
        validation: TrainingDataset | None,
        on_epoch_end: Callable[[TrainingMetrics], None] | None,
        hooks: Sequence[StepHook],
        start_epoch: int,
    ) -> list[TrainingMetrics]:
        cfg = self.config
        train_set, val_set = self._sets(model, dataset, validation)
        if cfg.sparse:
            return self._train_sparse(model, train_set, val_set, on_epoch_end)

        # training changes the weights: any int8 copy is stale from here on
        model.quantized = None
        sparse_mask = model.flat_mask()
        optimizer = Adam(model.num_params, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon, dtype=model.dtype)
        batches = BatchIterator(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed)

        self.metrics = []
        self.best_epoch = None
        self.stopped_early = False
        best_loss = math.inf
        best_flat: np.ndarray | None = None
        waited = 0
        step = 0
        started = time.perf_counter()
        for epoch in range(start_epoch, start_epoch + cfg.epochs):
            t0 = time.perf_counter()
            lr = cfg.learning_rate * cfg.lr_decay ** (epoch // cfg.lr_decay_step)
            train_loss, train_acc, step, sparse_mask = self._epoch(model, batches, optimizer, lr, epoch, step,
                                                                   sparse_mask, hooks)
            if val_set is not None:
                val_loss, val_acc = evaluate_model(model, val_set)
            else:
                val_loss, val_acc = math.nan, math.nan
            record = TrainingMetrics(epoch=epoch, train_loss=train_loss, val_loss=val_loss, train_accuracy=train_acc,
                                     val_accuracy=val_acc, learning_rate=lr, epoch_time_s=time.perf_counter() - t0)
            self.metrics.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if val_set is None:
                continue
            if val_loss < best_loss - 1e-7:
                best_loss = val_loss
                best_flat = model.get_flat()
                self.best_epoch = epoch
                waited = 0
            else:
                waited += 1
                if cfg.early_stopping_patience is not None and waited >= cfg.early_stopping_patience:
                    self.stopped_early = True
                    break
        if cfg.restore_best_weights and best_flat is not None:
            model.flat[...] = best_flat
            model.refresh()
        if dataset.normalization is not None:
            model.normalizer = dataset.normalization
        best = self.metrics[self.best_epoch - start_epoch] if self.best_epoch is not None else self.metrics[-1]
        model.training_summary = {
            "epochs_run": len(self.metrics),
            "best_epoch": best.epoch,
            "val_loss": best.val_loss if math.isfinite(best.val_loss) else None,
            "val_accuracy": best.val_accuracy if math.isfinite(best.val_accuracy) else None,
            "train_samples": len(train_set),
            "val_samples": 0 if val_set is None else len(val_set),
            "stopped_early": self.stopped_early,
            "seconds": round(time.perf_counter() - started, 3),
            "trained_at": time.time(),
            "training_config": cfg.to_dict(),
        }
        return self.metrics

    def _sets(self, model: FastGRNN, dataset: TrainingDataset,
              validation: TrainingDataset | None) -> tuple[TrainingDataset, TrainingDataset | None]:
        """The training and validation sets, checked against the model before any work is done
        (a mismatch found after an hour of training would be a waste of the hour)."""
        cfg = self.config
        if self.model_config is not None and model.config != self.model_config:
            raise ValidationError(
                "the model's configuration differs from the Trainer's model_config; "
                "build the Trainer with model.config"
            )
        _check_compatible(model, dataset, "training data")
        if cfg.enable_distillation and dataset.soft_targets is None:
            raise ValidationError(
                "enable_distillation is set but the dataset has no soft targets; "
                "call dataset.with_soft_targets(generate_teacher_predictions(teacher, features, T))"
            )
        if validation is None and cfg.validation_split > 0:
            train_set, val_set = dataset.split(cfg.validation_split, seed=cfg.seed)
        else:
            train_set, val_set = dataset, validation
        if val_set is not None:
            _check_compatible(model, val_set, "validation data")
        return train_set, val_set

    def _epoch(self, model: FastGRNN, batches: BatchIterator, optimizer: Adam, lr: float, epoch: int, step: int,
               sparse_mask: np.ndarray | None, hooks: Sequence[StepHook]) -> tuple[float, float, int, np.ndarray | None]:
        """One pass over the training batches: (mean loss, mean accuracy, the step count after it,
        the sparsity mask, which a hook may have replaced)."""
        cfg = self.config
        act = model.config.output_activation or "sigmoid"
        loss_sum = 0.0
        correct = 0.0
        seen = 0
        for batch in batches:
            loss, grad, logits = self.loss_and_grad(model, batch, with_logits=True)
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss became {loss} at epoch {epoch}; lower the learning rate or check the data"
                )
            clip_by_global_norm(grad, cfg.grad_clip)
            if sparse_mask is not None:
                grad *= sparse_mask
            optimizer.step(model.flat, grad, lr)
            if sparse_mask is not None:
                model.flat[...] *= sparse_mask
            step += 1
            if hooks:
                masks_before = model.masks
                for hook in hooks:
                    hook(model, step, epoch)
                if model.masks is not masks_before:  # a hook set a new support
                    sparse_mask = model.flat_mask()
            n = len(batch)
            loss_sum += loss * n
            correct += accuracy(output_probabilities(logits, act), batch.labels, act) * n
            seen += n
        model.refresh()
        return loss_sum / seen, correct / seen, step, sparse_mask

    def _train_sparse(
        self,
        model: FastGRNN,
        dataset: TrainingDataset,
        validation: TrainingDataset | None,
        on_epoch_end: Callable[[TrainingMetrics], None] | None,
    ) -> list[TrainingMetrics]:
        """The paper's three stages over ``config.epochs`` split in thirds.

        1. dense training of the (low-rank) model;
        2. iterative hard thresholding to the target sparsities;
        3. fine-tuning on the fixed support, with early stopping and best-weight restore.
        Early stopping acts only in stage 3, so the returned model always has the final support.
        """
        cfg = self.config
        if cfg.epochs < 3:
            raise ValidationError("sparse training needs at least 3 epochs (one per stage)")
        targets = sparsity_targets(model, cfg.w_sparsity, cfg.u_sparsity)
        if validation is None and cfg.validation_split > 0:
            dataset, validation = dataset.split(cfg.validation_split, seed=cfg.seed)
        e1 = cfg.epochs // 3
        e2 = cfg.epochs // 3
        dense_cfg = replace(cfg, w_sparsity=0.0, u_sparsity=0.0)
        stages = [
            (replace(dense_cfg, epochs=e1, early_stopping_patience=None), None),
            (replace(dense_cfg, epochs=e2, early_stopping_patience=None, restore_best_weights=False),
             IterativeHardThresholding(targets, cfg.iht_every)),
            (replace(dense_cfg, epochs=cfg.epochs - e1 - e2), None),
        ]
        metrics: list[TrainingMetrics] = []
        for stage_cfg, iht in stages:
            stage = Trainer(self.model_config, stage_cfg)
            if iht is not None:
                iht.start(model)
            stage.train(model, dataset, validation=validation, on_epoch_end=on_epoch_end,
                        hooks=() if iht is None else (iht,), start_epoch=len(metrics))
            if iht is not None:
                iht.finish(model)
            metrics.extend(stage.metrics)
            self.best_epoch = stage.best_epoch
            self.stopped_early = stage.stopped_early
        self.metrics = metrics
        model.training_summary["epochs_run"] = len(metrics)
        model.training_summary["sparse_training"] = {
            "w_sparsity": cfg.w_sparsity,
            "u_sparsity": cfg.u_sparsity,
            "iht_every": cfg.iht_every,
            "stage_epochs": [e1, e2, cfg.epochs - e1 - e2],
        }
        return metrics

    def save_metrics(self, path: str | Path) -> Path:
        """Write the per-epoch metrics as a JSON list (NaN written as null)."""
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(m).items()} for m in self.metrics]
        return atomic_write_json(path, rows)
