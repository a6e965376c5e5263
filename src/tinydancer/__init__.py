"""Tiny Dancer: a FastGRNN router that decides in microseconds where each AI request should go.

The public API is re-exported here; each concept lives in its own module.
"""

from . import _aliases
from ._version import __version__
from .errors import ModelFileError, NotFittedError, TinyDancerError, ValidationError
from .nn import (
    BatchIterator,
    FastGRNN,
    FastGRNNConfig,
    Normalizer,
    Trainer,
    TrainingConfig,
    TrainingDataset,
    TrainingDivergedError,
    TrainingMetrics,
    balanced_sample_weights,
    binary_cross_entropy,
    evaluate_model,
    generate_teacher_predictions,
    load_normalization_params,
    save_normalization_params,
    soft_targets_from_logits,
    temperature_softmax,
)
from .llm import OutcomeMemory, QueryRouter, QueryRouterConfig, RouteDecision
from .candidates import (
    Candidate,
    CircuitOpenError,
    FeatureConfig,
    FeatureEngineer,
    Router,
    RouterConfig,
    RoutingDecision,
    RoutingRequest,
    RoutingResponse,
)

_aliases.install(__name__)

__all__ = [
    "__version__",
    "BatchIterator",
    "Candidate",
    "CircuitOpenError",
    "FeatureConfig",
    "FeatureEngineer",
    "QueryRouter",
    "QueryRouterConfig",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "RoutingDecision",
    "RoutingRequest",
    "RoutingResponse",
    "FastGRNN",
    "FastGRNNConfig",
    "ModelFileError",
    "Normalizer",
    "NotFittedError",
    "OutcomeMemory",
    "TinyDancerError",
    "Trainer",
    "TrainingConfig",
    "TrainingDataset",
    "TrainingDivergedError",
    "TrainingMetrics",
    "ValidationError",
    "balanced_sample_weights",
    "binary_cross_entropy",
    "evaluate_model",
    "generate_teacher_predictions",
    "load_normalization_params",
    "save_normalization_params",
    "soft_targets_from_logits",
    "temperature_softmax",
]
