"""The service's settings: where the model and the log live, limits, thresholds, credentials."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .._validation import check_number
from ..candidates import default_model_path
from .model_files import DEFAULT_MAX_BYTES


@dataclass
class ServiceSettings:
    model_path: Path = field(default_factory=default_model_path)
    database_path: Path = Path("tinydancer.db")
    query_router_path: Path | None = None
    auth_token: str | None = field(default_factory=lambda: os.environ.get("TINY_DANCER_AUTH_TOKEN") or None)
    #: poll the model file this often and hot-reload when it changes (0 disables)
    watch_interval_s: float = 1.0
    max_body_bytes: int = 2 * 1024 * 1024
    confidence_threshold: float = 0.85
    max_uncertainty: float = 0.15
    enable_quantization: bool = True
    #: share of /v1/route/query requests sent to a model drawn at random, so that retraining
    #: learns about models the router would not pick (0: never explore)
    query_exploration: float = 0.0
    #: folders POST /admin/reload may read model files from (None: the served model's folder, which
    #: holds the default registry models/registry too); see tinydancer.server.model_files
    model_dirs: tuple[Path, ...] | None = None
    max_model_bytes: int = DEFAULT_MAX_BYTES
    #: seeds the exploration draws (None: fresh entropy each start), so a run can be replayed
    exploration_seed: int | None = None

    def __post_init__(self) -> None:
        check_number("ServiceSettings", "query_exploration", self.query_exploration, low=0.0, high=1.0)
        check_number("ServiceSettings", "max_model_bytes", self.max_model_bytes, low=1, integer=True)
