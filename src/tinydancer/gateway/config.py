"""The gateway's configuration file (``gateway.yaml``), validated with pydantic.

A config names the upstream LLMs (any OpenAI-compatible server), their prices, and the router
that chooses among them.  Errors name the key at fault (``upstreams.1.base_url: ...``) so a user
can fix the file without reading this module.  Provider keys never sit in the file: an upstream
names the environment variable that holds its key (``api_key_env``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError as PydanticError, field_validator, model_validator

from ..errors import ValidationError

__all__ = ["ExplorationSpec", "GatewayConfig", "JudgeConfig", "LearningSpec", "OperatingPointSpec", "UpstreamConfig",
           "load_config"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamConfig(_Strict):
    """One OpenAI-compatible upstream and what it costs."""

    #: what clients may name in ``model``; by default also the router's model this upstream plays
    name: str
    #: the router's model this upstream plays (default: ``name``)
    router_model: str | None = None
    base_url: str
    #: the upstream's own model id, sent in the forwarded body
    model: str
    #: the name of the environment variable holding the provider key (None: no key is sent)
    api_key_env: str | None = None
    input_per_million: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    output_per_million: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    timeout_s: float = Field(60.0, gt=0.0, allow_inf_nan=False)
    #: a stream's whole life at most (``timeout_s`` bounds each wait for its next chunk): an upstream
    #: that never ends its stream cannot hold a slot for ever
    stream_timeout_s: float = Field(600.0, gt=0.0, allow_inf_nan=False)
    #: the time allowed to connect (a refused or unreachable upstream fails over this fast)
    connect_timeout_s: float = Field(5.0, gt=0.0, allow_inf_nan=False)
    #: calls in flight to this upstream at most; more wait for a slot (queue time is not upstream time)
    max_concurrency: int = Field(64, ge=1, le=100_000)
    #: calls waiting for a slot at most; past it a call is turned away at once (503, Retry-After)
    max_queue: int = Field(256, ge=0, le=1_000_000)
    #: how long a call may wait for a slot before it is turned away
    queue_timeout_s: float = Field(10.0, gt=0.0, allow_inf_nan=False)
    #: the largest answer taken, counted after decompression as it arrives; a larger one is an
    #: upstream failure (the next model is tried), so no upstream can fill the gateway's memory
    max_response_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024**3)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or v == "tinydancer" or v.startswith("router-"):
            raise ValueError("use letters, digits and . _ : / - (at most 128), not 'tinydancer' nor a 'router-' prefix, "
                             "which name the routed aliases")
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL, such as https://api.openai.com/v1")
        return v.rstrip("/")

    @property
    def plays(self) -> str:
        return self.router_model or self.name

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for one call from its token counts."""
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        return os.environ.get(self.api_key_env) or None


class OperatingPointSpec(_Strict):
    """At most one knob; the one that fits the router (strong share for two models)."""

    strong_share: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    cost_weight: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    quality_bar: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    #: dollars a call, predicted from the router's per-model costs: the operating point that keeps
    #: the mean over the live window at this budget (two models: a strong share; more: a cost weight)
    budget: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    #: routed calls in the live score window that strong_share and budget are taken on (see
    #: gateway/operating.py); warm-started from the router file's training scores
    live_window: int = Field(2000, ge=20, le=1_000_000)

    @model_validator(mode="after")
    def _one(self) -> "OperatingPointSpec":
        if sum(v is not None for v in (self.strong_share, self.cost_weight, self.quality_bar, self.budget)) > 1:
            raise ValueError("give one of strong_share, budget, cost_weight or quality_bar")
        return self

    def knobs(self) -> dict[str, float]:
        """The router's own knobs that are set (budget and the window are the gateway's)."""
        return {k: v for k in ("strong_share", "cost_weight", "quality_bar") if (v := getattr(self, k)) is not None}


class ExplorationSpec(_Strict):
    """``exploration``: a bounded share of routed calls goes to a model the router did not pick, so
    that outcomes arrive for every model (see server/exploration.py).  Off by default."""

    share: float = Field(0.0, ge=0.0, le=0.2, allow_inf_nan=False)
    #: seeds the draws, so a run can be replayed (None: a fresh seed each start)
    seed: int | None = None


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|m|h|d)?\s*$")


class LearningSpec(_Strict):
    """``learning``: retrain the router from the log in the gateway process, on a schedule."""

    #: how often to look (seconds, or a string such as 90s, 30m, 1h, 1d)
    every: float = Field(3600.0, gt=0.0)
    #: outcomes logged since the last retrain before another is worth running
    min_new_outcomes: int = Field(200, ge=1)
    #: the registry folder beside a SQLite log (PostgreSQL keeps versions as rows)
    registry: Path = Path("models/registry")

    @field_validator("every", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if isinstance(v, str):
            match = _DURATION.match(v)
            if not match:
                raise ValueError("give seconds or a duration such as 90s, 30m, 1h or 1d")
            return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
        return v


class JudgeConfig(_Strict):
    """Judged samples: an upstream grades a share of answered routed calls (see gateway/judging.py)."""

    #: the upstream that grades (one of ``upstreams``; usually one the router does not route to)
    upstream: str
    #: the share of answered routed calls sent for grading (their answers are kept until graded)
    sample_share: float = Field(0.05, ge=0.0, le=1.0, allow_inf_nan=False)
    #: dollars the judge may spend a UTC day (its usage × its prices); past them grading stops until the next day
    daily_dollars: float = Field(5.0, ge=0.0, allow_inf_nan=False)
    #: a text file of grading instructions replacing the default ones (as ``tinydancer label --rubric``)
    rubric: Path | None = None
    #: answers waiting for grading, at most: a sample that finds the queue full is not taken
    max_pending: int = Field(1000, ge=1, le=1_000_000)
    #: the judge's max_tokens (bounds each grading call's worst case, which is what the budget reserves)
    max_tokens: int = Field(512, ge=16, le=100_000)
    #: seeds the sampling, so a run can be replayed (None: a fresh seed each start)
    seed: int | None = None


class GatewayConfig(_Strict):
    #: a folder written by ``tinydancer router train`` (None: the packaged strong/weak router)
    router: Path | None = None
    operating_point: OperatingPointSpec = OperatingPointSpec()
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    #: how many upstreams one call may try (the first choice and its fallbacks)
    max_attempts: int = Field(3, ge=1, le=10)
    #: how long ``x-session-id`` keeps a conversation on one model
    session_ttl_s: float = Field(1800.0, gt=0.0, allow_inf_nan=False)
    max_sessions: int = Field(100_000, ge=1)
    #: a per-upstream circuit breaker: this many failures in a row open it for ``breaker_reset_s``
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_s: float = Field(30.0, gt=0.0, allow_inf_nan=False)
    #: concurrent requests whose prompts are embedded in one batch, at most
    embed_batch: int = Field(32, ge=1, le=1024)
    #: routed prompts waiting to be embedded at most; past it a routed call is turned away at once
    #: (503, Retry-After) instead of queuing behind a backlog (MiniLM embeds ~300 prompts/s here, so
    #: 256 is under a second of waiting; the static embedder clears it in milliseconds)
    max_embed_queue: int = Field(256, ge=1, le=1_000_000)
    #: how deep a request body may nest (JSON arrays and objects); deeper is a 400
    max_json_depth: int = Field(100, ge=8, le=900)
    #: how many arrays and objects a request body may hold: a 2 MB body of 690,000 empty arrays cost
    #: seconds of the event loop to decode and walk; real bodies (long tool lists included) hold thousands
    max_json_containers: int = Field(20_000, ge=100, le=1_000_000)
    #: characters of the last user turn the router reads: MiniLM reads 256 tokens of it anyway, and a
    #: 690,000-character prompt cost 2 s of tokenizing that every other routed call waited behind
    max_routed_chars: int = Field(8192, ge=256, le=1_000_000)
    #: the longest ``x-session-id`` taken (characters); longer is a 400, so the session store's
    #: memory stays within max_sessions × this
    max_session_id_chars: int = Field(256, ge=8, le=4096)
    #: keep the text each call was routed on (the last user turn) in the log, for
    #: ``tinydancer label --from-db``; off by default: prompts can hold what users would not share
    log_prompts: bool = False
    #: judged samples (None: no judging)
    judge: JudgeConfig | None = None
    #: dollars each client key (by name: ``name:key`` entries) may spend per UTC day; ``"*"`` sets
    #: it for every key not named (see tinydancer.gateway.budgets)
    key_budgets: dict[str, float] = Field(default_factory=dict)
    #: with a shared PostgreSQL log, how often each replica re-reads today's spend per key from it
    key_budget_refresh_s: float = Field(10.0, gt=0.0, allow_inf_nan=False)
    exploration: ExplorationSpec = ExplorationSpec()
    #: None: no retraining in the gateway (run ``tinydancer retrain`` yourself)
    learning: LearningSpec | None = None

    @field_validator("key_budgets")
    @classmethod
    def _budgets(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [f"{name}: {amount!r}" for name, amount in v.items() if not 0.0 <= amount < float("inf")]
        if bad:
            raise ValueError(f"budgets are dollars per UTC day, 0 or more: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "GatewayConfig":
        names = [u.name for u in self.upstreams]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"upstream names must be unique; repeated: {', '.join(dup)}")
        plays = [u.plays for u in self.upstreams]
        dup = sorted({n for n in plays if plays.count(n) > 1})
        if dup:
            raise ValueError(f"two upstreams play the same router model ({', '.join(dup)}); give each its own router_model")
        if self.judge is not None and self.judge.upstream not in names:
            raise ValueError(f"judge.upstream {self.judge.upstream!r} is not one of the upstreams ({', '.join(names)})")
        return self

    def upstream(self, name: str) -> UpstreamConfig | None:
        return next((u for u in self.upstreams if u.name == name), None)

    def missing_keys(self) -> list[str]:
        """Environment variables named by ``api_key_env`` that are not set."""
        return [u.api_key_env for u in self.upstreams if u.api_key_env and not os.environ.get(u.api_key_env)]


def describe(error: PydanticError) -> str:
    """pydantic's errors as ``key.path: message`` lines."""
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "(top level)"
        msg = e.get("msg", "").removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = "unknown key (check its spelling)"
        lines.append(f"{where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, where: str = "gateway config") -> GatewayConfig:
    if not isinstance(data, dict):
        raise ValidationError(f"{where}: expected a mapping of keys (router, operating_point, upstreams, ...)")
    try:
        return GatewayConfig.model_validate(data)
    except PydanticError as exc:
        raise ValidationError(f"{where} is not valid:\n{describe(exc)}") from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway YAML file; a relative ``router`` is taken from the file's folder."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationError(f"cannot read the gateway config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path} is not valid YAML: {exc}") from None
    config = parse_config(data, str(path))
    if config.router is not None and not config.router.is_absolute():
        config = config.model_copy(update={"router": (path.parent / config.router).resolve()})
    if config.judge is not None and config.judge.rubric is not None and not config.judge.rubric.is_absolute():
        judge = config.judge.model_copy(update={"rubric": (path.parent / config.judge.rubric).resolve()})
        config = config.model_copy(update={"judge": judge})
    return config
