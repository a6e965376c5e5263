"""The seed's candidate scorer: requests, features, conformal uncertainty and the :class:`Router`.

Modules, bottom up: ``request`` (validated columns), ``features``, ``uncertainty``,
``decisions`` (ranked columns and the response), ``router``.
"""

from .decisions import DecisionColumns, Decisions, RoutingDecision, RoutingResponse
from .features import FEATURE_NAMES, FeatureConfig, FeatureEngineer
from .request import Candidate, RoutingRequest, check_timestamp
from .router import CircuitOpenError, Router, RouterConfig, ServedModel, default_model_path, load_served_model
from .uncertainty import ConformalCalibrator

__all__ = [
    "FEATURE_NAMES",
    "Candidate",
    "CircuitOpenError",
    "ConformalCalibrator",
    "DecisionColumns",
    "Decisions",
    "FeatureConfig",
    "FeatureEngineer",
    "Router",
    "RouterConfig",
    "RoutingDecision",
    "RoutingRequest",
    "RoutingResponse",
    "ServedModel",
    "check_timestamp",
    "default_model_path",
    "load_served_model",
]
