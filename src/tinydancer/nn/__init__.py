"""The network and how it learns: the FastGRNN cell, its files, data, losses, Adam, training, compression.

Modules, bottom up: ``config``, ``normalization``, ``cell`` (the equations and BPTT),
``compression``, ``model_file``, ``model`` (:class:`FastGRNN`), ``data``, ``losses``, ``optim``,
``sparse`` (hard thresholding), ``training`` (:class:`Trainer`), ``datafiles``.
"""

from .config import FastGRNNConfig
from .data import BatchIterator, TrainingDataset, balanced_sample_weights
from .losses import binary_cross_entropy, generate_teacher_predictions, soft_targets_from_logits, temperature_softmax
from .model import FastGRNN
from .normalization import Normalizer, load_normalization_params, save_normalization_params
from .training import Trainer, TrainingConfig, TrainingDivergedError, TrainingMetrics, evaluate_model

__all__ = [
    "BatchIterator",
    "FastGRNN",
    "FastGRNNConfig",
    "Normalizer",
    "Trainer",
    "TrainingConfig",
    "TrainingDataset",
    "TrainingDivergedError",
    "TrainingMetrics",
    "balanced_sample_weights",
    "binary_cross_entropy",
    "evaluate_model",
    "generate_teacher_predictions",
    "load_normalization_params",
    "save_normalization_params",
    "soft_targets_from_logits",
    "temperature_softmax",
]
