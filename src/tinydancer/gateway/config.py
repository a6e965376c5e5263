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

__all__ = ["GatewayConfig", "OperatingPointSpec", "UpstreamConfig", "load_config"]

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

    @model_validator(mode="after")
    def _one(self) -> "OperatingPointSpec":
        if sum(v is not None for v in (self.strong_share, self.cost_weight, self.quality_bar)) > 1:
            raise ValueError("give one of strong_share, cost_weight or quality_bar")
        return self


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
    #: dollars each client key (by name: ``name:key`` entries) may spend per UTC day; ``"*"`` sets
    #: it for every key not named (see tinydancer.gateway.budgets)
    key_budgets: dict[str, float] = Field(default_factory=dict)
    #: with a shared PostgreSQL log, how often each replica re-reads today's spend per key from it
    key_budget_refresh_s: float = Field(10.0, gt=0.0, allow_inf_nan=False)

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
    return config
