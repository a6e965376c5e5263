"""The service's settings: where the model and the log live, limits, thresholds, credentials."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .._validation import check_number
from ..errors import ValidationError
from ..candidates import default_model_path
from .client_keys import client_keys
from .model_files import DEFAULT_MAX_BYTES


def keys_from_environment() -> tuple[str, ...]:
    """Client key entries (``name:key`` or ``key``) from TINY_DANCER_API_KEYS and the file
    TINY_DANCER_API_KEYS_FILE names, checked here so that an error names the file and line."""
    entries = [(k, f"TINY_DANCER_API_KEYS entry {i + 1}")
               for i, k in enumerate(os.environ.get("TINY_DANCER_API_KEYS", "").split(","))]
    path = os.environ.get("TINY_DANCER_API_KEYS_FILE")
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValidationError(f"TINY_DANCER_API_KEYS_FILE={path}: {exc.strerror or exc}") from None
        entries += [(line, f"{path} line {i + 1}") for i, line in enumerate(lines)]
    client_keys(entries)
    return tuple(k.strip() for k, _ in entries if k.strip() and not k.strip().startswith("#"))


@dataclass
class ServiceSettings:
    model_path: Path = field(default_factory=default_model_path)
    database_path: Path = Path("tinydancer.db")
    #: a ``postgresql://`` URL (several replicas, one log): replaces database_path when set
    database_url: str | None = field(default_factory=lambda: os.environ.get("TINY_DANCER_DATABASE_URL") or None)
    #: PostgreSQL: a database silent this long is unreachable (readiness 503, feedback refused, the
    #: registry follower reconnects): libpq's connect and TCP timeouts, the server's statement_timeout
    #: and each call's deadline derive from it (parameters set in the URL win; see postgres.with_timeouts)
    database_timeout_s: float = field(default_factory=lambda: float(os.environ.get("TINY_DANCER_DATABASE_TIMEOUT_S")
                                                                    or 3.0))
    query_router_path: Path | None = None
    #: the admin token (admin and operator routes); see tinydancer.server.guards
    auth_token: str | None = field(default_factory=lambda: os.environ.get("TINY_DANCER_AUTH_TOKEN") or None)
    #: client keys for the data plane (/v1/*): TINY_DANCER_API_KEYS (comma-separated) or a file of
    #: them, one a line, named by TINY_DANCER_API_KEYS_FILE; each ``name:key`` or ``key`` (see client_keys)
    api_keys: tuple[str, ...] = field(default_factory=lambda: keys_from_environment())
    #: the address the service listens on: without credentials it serves only on a loopback one
    host: str = "127.0.0.1"
    #: a lab switch: serve every route without credentials on any address
    insecure: bool = False
    #: poll the model file this often and hot-reload when it changes (0 disables)
    watch_interval_s: float = 1.0
    max_body_bytes: int = 2 * 1024 * 1024
    #: retention of the decision log (with its outcomes), applied every minute in the background;
    #: None keeps everything
    retention_days: float | None = None
    retention_rows: int | None = None
    #: decision rows kept in memory for retry while storage fails; beyond them, new rows are dropped
    max_pending_rows: int = 10_000
    #: a request body whose next part takes longer than this to arrive is answered 408
    body_read_timeout_s: float = 10.0
    #: a request body not complete this long after it started is answered 408, however steadily it
    #: trickles (a byte every 5 s kept 300 connections open under the per-read timeout alone)
    body_deadline_s: float = 30.0
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
    #: the query router's operating point while served (None: the one saved with it); use the
    #: knob that fits the router: strong share for two models, cost weight or quality bar for more
    query_strong_share: float | None = None
    query_cost_weight: float | None = None
    query_quality_bar: float | None = None
    #: this process serves the candidate-scoring model, and readiness waits for it.  False (the
    #: gateway; ``serve --query-router`` without ``--model-path``): no candidate model is loaded,
    #: even if the default file exists, so /info and /v1/route say that none is served
    require_candidate_model: bool = True
    #: seeds the exploration draws (None: fresh entropy each start), so a run can be replayed
    exploration_seed: int | None = None

    def __post_init__(self) -> None:
        check_number("ServiceSettings", "query_exploration", self.query_exploration, low=0.0, high=1.0)
        check_number("ServiceSettings", "max_model_bytes", self.max_model_bytes, low=1, integer=True)
        check_number("ServiceSettings", "retention_days", self.retention_days, low=0.0, low_open=True, optional=True)
        check_number("ServiceSettings", "retention_rows", self.retention_rows, low=1, integer=True, optional=True)
        check_number("ServiceSettings", "max_pending_rows", self.max_pending_rows, low=0, integer=True)
        check_number("ServiceSettings", "body_read_timeout_s", self.body_read_timeout_s, low=0.0, low_open=True)
        check_number("ServiceSettings", "body_deadline_s", self.body_deadline_s, low=0.0, low_open=True)
        check_number("ServiceSettings", "database_timeout_s", self.database_timeout_s, low=0.0, low_open=True)
        client_keys(self.api_keys)  # names valid, none repeated
