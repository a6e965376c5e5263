"""Tiny Dancer inside LiteLLM's proxy: name ``proxy_handler`` in ``litellm_settings.callbacks``.

The proxy builds its ``litellm.Router`` from its config (and again when models change), after it
has imported the callbacks; a strategy cannot be installed at import time.  ``proxy_handler`` is a
``CustomLogger`` whose ``async_pre_call_hook`` (run by the proxy before each request) installs a
:class:`~tinydancer.integrations.litellm.TinyDancerRoutingStrategy` on the proxy's current router
the first time it sees that router, and whose logging hooks are the
:class:`~tinydancer.integrations.litellm.TinyDancerLogger`'s (one decision per call, an outcome per
failed attempt, the decision id as the ``x-tinydancer-decision-id`` response header).

Which deployment plays which router model: ``model_info: {tinydancer_model: strong}`` on each
deployment of the config (or ``TINY_DANCER_LITELLM_DEPLOYMENTS``, a JSON object from
``litellm_params.model`` to router model).  The rest comes from environment variables, which the
config's ``environment_variables:`` section can set:

=================================  ===========================================================
``TINY_DANCER_LITELLM_ROUTER``      a query router folder or file (default: the packaged one)
``TINY_DANCER_LITELLM_SERVICE_URL`` ask a running Tiny Dancer service instead (and
                                    ``TINY_DANCER_LITELLM_SERVICE_KEY``, its API key)
``TINY_DANCER_LITELLM_GROUPS``      the model groups to route, comma-separated (default: every
                                    group whose deployments play two or more router models)
``TINY_DANCER_LITELLM_DB``          the log (default ``tinydancer-litellm.db`` in the working dir)
``TINY_DANCER_LITELLM_STRONG_SHARE`` / ``_COST_WEIGHT`` / ``_QUALITY_BAR``   the operating point
``TINY_DANCER_LITELLM_BUDGET_MS``   the latency budget of a decision
``TINY_DANCER_LITELLM_JUDGE``       ``module:function`` grading successes (prompt, answer, model) →
                                    quality in [0, 1] (and ``_JUDGE_RATE``, the share graded)
``TINY_DANCER_LITELLM_JUDGE_MODEL`` a judge model grading a sample of successes (a model group of
                                    the proxy, or with ``_JUDGE_BASE_URL`` / ``_JUDGE_API_KEY`` a
                                    model at an OpenAI-compatible endpoint); ``_JUDGE_SHARE``,
                                    ``_JUDGE_DAILY_DOLLARS``, ``_JUDGE_RUBRIC`` (a file),
                                    ``_JUDGE_SEED``, ``_JUDGE_INPUT_PER_MILLION`` /
                                    ``_JUDGE_OUTPUT_PER_MILLION`` (see ``JudgeSettings``)
``TINY_DANCER_LITELLM_EXPLORATION_SHARE``  the share of routed calls sent to a model the router
                                    did not pick (at most 0.2; ``_SEED`` seeds it)
=================================  ===========================================================

A configuration that cannot work (no deployment mapped, a router file that does not load) is
logged as an error naming the setting, and the proxy keeps serving with LiteLLM's own routing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from ..errors import ValidationError
from .litellm import JudgeSettings, TinyDancerLogger, TinyDancerRoutingStrategy

__all__ = ["ProxySettings", "TinyDancerProxyHandler", "proxy_handler"]

log = logging.getLogger("tinydancer.litellm")

#: the ``model_info`` key that says which router model a deployment plays
MODEL_INFO_KEY = "tinydancer_model"
ENV = "TINY_DANCER_LITELLM_"


def _env_float(name: str) -> float | None:
    raw = os.environ.get(ENV + name)
    if raw is None or not raw.strip():
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValidationError(f"{ENV}{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class ProxySettings:
    """What the handler reads from the environment (see the module's table)."""

    router: str | None
    service_url: str | None
    service_key: str | None
    groups: tuple[str, ...] | None
    database: str
    strong_share: float | None
    cost_weight: float | None
    quality_bar: float | None
    budget_s: float | None
    deployments: dict[str, str]
    judge: str | None = None
    judge_rate: float = 1.0
    judging: JudgeSettings | None = None
    exploration_share: float = 0.0
    seed: int | None = None

    @classmethod
    def from_env(cls) -> "ProxySettings":
        groups = os.environ.get(ENV + "GROUPS")
        raw_map = os.environ.get(ENV + "DEPLOYMENTS")
        try:
            deployments = json.loads(raw_map) if raw_map else {}
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{ENV}DEPLOYMENTS is not a JSON object ({exc})") from None
        if not isinstance(deployments, dict):
            raise ValidationError(f"{ENV}DEPLOYMENTS must be a JSON object from litellm_params.model to router model")
        budget_ms = _env_float("BUDGET_MS")
        return cls(router=os.environ.get(ENV + "ROUTER") or None, service_url=os.environ.get(ENV + "SERVICE_URL") or None,
                   service_key=os.environ.get(ENV + "SERVICE_KEY") or None,
                   groups=None if not groups else tuple(g.strip() for g in groups.split(",") if g.strip()),
                   database=os.environ.get(ENV + "DB") or "tinydancer-litellm.db",
                   strong_share=_env_float("STRONG_SHARE"), cost_weight=_env_float("COST_WEIGHT"),
                   quality_bar=_env_float("QUALITY_BAR"), budget_s=None if budget_ms is None else budget_ms / 1e3,
                   deployments={str(k): str(v) for k, v in deployments.items()},
                   judge=os.environ.get(ENV + "JUDGE") or None,
                   judge_rate=1.0 if _env_float("JUDGE_RATE") is None else float(_env_float("JUDGE_RATE") or 0.0),
                   judging=_judging_from_env(), exploration_share=_env_float("EXPLORATION_SHARE") or 0.0,
                   seed=None if _env_float("SEED") is None else int(_env_float("SEED") or 0))


def _judging_from_env() -> JudgeSettings | None:
    """``TINY_DANCER_LITELLM_JUDGE_*`` as judge settings (None without ``_JUDGE_MODEL``)."""
    model = os.environ.get(ENV + "JUDGE_MODEL")
    if not model:
        return None
    optional = {"sample_share": _env_float("JUDGE_SHARE"), "daily_dollars": _env_float("JUDGE_DAILY_DOLLARS"),
                "input_per_million": _env_float("JUDGE_INPUT_PER_MILLION"),
                "output_per_million": _env_float("JUDGE_OUTPUT_PER_MILLION"),
                "seed": None if _env_float("JUDGE_SEED") is None else int(_env_float("JUDGE_SEED") or 0)}
    return JudgeSettings(model=model, base_url=os.environ.get(ENV + "JUDGE_BASE_URL") or None,
                         api_key=os.environ.get(ENV + "JUDGE_API_KEY") or None,
                         rubric=os.environ.get(ENV + "JUDGE_RUBRIC") or None,
                         **{k: v for k, v in optional.items() if v is not None})


def load_judge(spec: str) -> Any:
    """``module:function`` (or ``module.function``) → the function."""
    import importlib

    module, sep, name = spec.partition(":")
    if not sep:
        module, _, name = spec.rpartition(".")
    if not module or not name:
        raise ValidationError(f"{ENV}JUDGE={spec!r}: give module:function")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValidationError(f"{ENV}JUDGE={spec!r}: {name} is not a function of {module}")
    return fn


def packaged_router_path() -> Path:
    """The packaged two-model router (``strong`` / ``weak``), located as package data: the
    integrations layer does not import the gateway's code (tests/test_layout.py)."""
    return Path(str(resources.files("tinydancer") / "gateway" / "default_router"))


def deployment_map(model_list: list[dict[str, Any]], extra: dict[str, str]) -> dict[str, str]:
    """Router model per deployment id, from ``model_info.tinydancer_model`` (and ``extra`` by
    ``litellm_params.model``)."""
    out = dict(extra)
    for d in model_list:
        info = d.get("model_info") or {}
        plays = info.get(MODEL_INFO_KEY)
        if plays and info.get("id") is not None:
            out[str(info["id"])] = str(plays)
    return out


class TinyDancerProxyHandler(CustomLogger):
    """The strategy's installer and the logger, as one proxy callback."""

    def __init__(self) -> None:
        super().__init__()
        self.strategy: TinyDancerRoutingStrategy | None = None
        self.logger: TinyDancerLogger | None = None
        self.problem: str | None = None
        self._router: Any = None
        self._lock = threading.Lock()

    def install(self, llm_router: Any, settings: ProxySettings | None = None) -> TinyDancerRoutingStrategy | None:
        """Put the strategy on ``llm_router`` (once per router object); None, logged, if it cannot be."""
        with self._lock:
            if llm_router is None or llm_router is self._router:
                return self.strategy
            self._router = llm_router
            try:
                s = settings or ProxySettings.from_env()
                mapping = deployment_map(llm_router.model_list, s.deployments)
                if not mapping:
                    raise ValidationError(f"no deployment says which router model it plays: add model_info: "
                                          f"{{{MODEL_INFO_KEY}: strong}} (or weak, ...) to the deployments, or set "
                                          f"{ENV}DEPLOYMENTS")
                source: dict[str, Any]
                if s.service_url:
                    source = {"service_url": s.service_url, "api_key": s.service_key}
                else:
                    source = {"query_router": s.router or packaged_router_path()}
                self.strategy = TinyDancerRoutingStrategy(
                    llm_router, mapping, groups=s.groups, strong_share=s.strong_share, cost_weight=s.cost_weight,
                    quality_bar=s.quality_bar, budget_s=s.budget_s, exploration_share=s.exploration_share, seed=s.seed,
                    **source).install(warm=False)
                # not on the proxy's event loop: calls get LiteLLM's choice (cause "budget") until it is loaded
                threading.Thread(target=self.strategy.warm, name="tinydancer-warm", daemon=True).start()
                if self.logger is None:
                    judge = load_judge(s.judge) if s.judge else None
                    self.logger = TinyDancerLogger(s.database, self.strategy, judge=judge, judge_rate=s.judge_rate,
                                                   judging=s.judging)
                else:
                    self.logger.strategy = self.strategy
                self.problem = None
                log.info("tinydancer routes the proxy's groups %s (%d deployments mapped)",
                         list(s.groups) if s.groups else "with a choice", len(mapping))
            except Exception as exc:  # the proxy keeps serving with LiteLLM's own routing
                self.problem = f"{type(exc).__name__}: {exc}"
                log.error("tinydancer is not routing the LiteLLM proxy: %s", self.problem)
            return self.strategy

    # ------------------------------------------------------------------ the proxy's hooks
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> Any:
        from litellm.proxy import proxy_server

        if proxy_server.llm_router is not self._router:
            self.install(proxy_server.llm_router)
        return data

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        if self.logger is not None:
            await self.logger.async_log_success_event(kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        if self.logger is not None:
            await self.logger.async_log_failure_event(kwargs, response_obj, start_time, end_time)

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict: Any, response: Any,
                                                    request_headers: dict[str, str] | None = None,
                                                    litellm_call_info: dict[str, object] | None = None) -> dict[str, str] | None:
        if self.logger is not None:
            return await self.logger.async_post_call_response_headers_hook(data, user_api_key_dict, response,
                                                                           request_headers, litellm_call_info)
        return None

    async def async_post_call_success_deployment_hook(self, request_data: dict, response: Any, call_type: Any) -> Any:
        if self.logger is not None:
            return await self.logger.async_post_call_success_deployment_hook(request_data, response, call_type)
        return None


#: the instance to name in the proxy config: ``litellm_settings: {callbacks:
#: tinydancer.integrations.litellm_proxy.proxy_handler}``
proxy_handler = TinyDancerProxyHandler()
