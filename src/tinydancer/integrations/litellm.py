"""Tiny Dancer inside LiteLLM: a routing strategy for ``litellm.Router``, and an outcome logger.

Read from the installed ``litellm`` (1.108.7): ``Router.set_custom_routing_strategy`` replaces the
router's ``get_available_deployment`` / ``async_get_available_deployment`` with a
``CustomRoutingStrategyBase``'s, which must return one element of ``Router.model_list``.  The
replaced method is the whole of LiteLLM's choice, cooldowns included, so the strategy asks
``Router.async_get_healthy_deployments`` (cooldowns, blocked deployments, tags, order, retry
skips) before it chooses.  LiteLLM retries a call by calling the chosen function again with the
same request ``metadata`` dict (``Router.log_retry`` appends ``previous_models``), and a fallback
copies that dict into the next group's call: the decision rides there, so every attempt of a call
is one decision.  A ``CustomLogger`` receives ``async_log_success_event`` /
``async_log_failure_event`` once per attempt, with the call's kwargs, whose
``standard_logging_object`` carries LiteLLM's cost, tokens, status and the attempt's deployment
id; ``async_post_call_success_deployment_hook`` sees each response before the caller does (its
``_hidden_params["additional_headers"]`` become response headers in the proxy).

- :class:`TinyDancerRoutingStrategy` reads the request's last user turn, asks a
  :class:`~tinydancer.llm.QueryRouter` (a local file, or a running Tiny Dancer service's
  ``/v1/route/query``) which of the model group's healthy deployments to use, within a latency
  budget, and tags the request with its decision.  Anything going wrong on our side (the
  embedder, the budget, the service, its breaker, an unmapped deployment) falls back to LiteLLM's
  own choice, logged with its cause and counted: a user's call never fails because of us.
- :class:`TinyDancerLogger` records each call's decision, each attempt's deployment, tokens,
  LiteLLM's cost figure, latency and failures in Tiny Dancer's storage (for decisions a service
  made, outcomes go to the service's ``/v1/feedback``), so ``tinydancer retrain --query-router``
  learns from LiteLLM traffic, and hands the decision id to the caller.  It never blocks the call:
  records go to a bounded queue that a background thread writes; when the queue is full, records
  are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections import Counter as CounterType
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..circuit import CircuitBreaker
from ..errors import TinyDancerError, ValidationError
from ..llm import QueryRouter, query_key
from ..server.storage import CallRecord, SQLiteStorage, decision_record, new_request_id, open_storage
from ..server.storage.base import clean_log

try:
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.types.router import CustomRoutingStrategyBase
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("tinydancer.integrations.litellm needs LiteLLM: pip install 'tinydancer[litellm]'") from exc

__all__ = ["TinyDancerLogger", "TinyDancerRoutingStrategy"]

log = logging.getLogger("tinydancer.litellm")

#: the request metadata key our decision travels under (from the strategy to the logger)
METADATA_KEY = "tinydancer"


def _last_user_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str) and content.strip():
                return content
    return None


#: request keys LiteLLM's ``async_get_healthy_deployments`` pops (order, failover exclusions, retry
#: skips): put back before LiteLLM's own choice runs, so it sees the request as it came
_POPPED_KEYS = ("_target_order", "_excluded_deployment_ids", "_retry_skipped_deployment_ids")

#: the default latency budget of a decision: a local router embeds the prompt (MiniLM: 10-30 ms per
#: fresh prompt on this kind of machine, GUIDE §5), a service adds a loopback or LAN round trip
LOCAL_BUDGET_S = 0.05
SERVICE_BUDGET_S = 0.05

#: why a call got LiteLLM's own choice instead of ours (the label of the fallback counter)
FALLBACK_CAUSES = {
    "budget": "Tiny Dancer took longer than its latency budget",
    "breaker_open": "the Tiny Dancer service's circuit breaker is open",
    "service_error": "the Tiny Dancer service failed",
    "router_error": "the query router failed",
    "no_mapped_deployment": "no healthy deployment plays a model the router ranks",
}

_FALLBACKS: Any = None


def _fallback_counter() -> Any:
    """The process's one counter of calls left to LiteLLM's choice, by cause (every strategy adds to it)."""
    global _FALLBACKS
    if _FALLBACKS is None:
        from prometheus_client import Counter

        _FALLBACKS = Counter("tiny_dancer_litellm_fallbacks", "LiteLLM calls Tiny Dancer left to LiteLLM's own "
                             "deployment choice, by cause", ["cause"])
    return _FALLBACKS


class _LeaveToLiteLLM(Exception):
    """Our choice cannot be made for this call: LiteLLM's own is used (``cause`` is a FALLBACK_CAUSES key)."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


def _describe(exc: BaseException) -> str:
    """An exception as a non-blank phrase (``TimeoutError()`` prints as nothing)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _metadata_of(request_kwargs: dict | None) -> dict[str, Any] | None:
    """The request's metadata dict LiteLLM carries across retries and fallbacks (its own choice of
    ``litellm_metadata`` or ``metadata``, as ``Router.log_retry`` makes it)."""
    if request_kwargs is None:
        return None
    key = "litellm_metadata" if "litellm_metadata" in request_kwargs else "metadata"
    metadata = request_kwargs.get(key)
    if metadata is None:
        metadata = request_kwargs[key] = {}
    return metadata if isinstance(metadata, dict) else None


def _deployment_id(d: dict[str, Any]) -> str | None:
    info = d.get("model_info") or {}
    return None if info.get("id") is None else str(info["id"])


class TinyDancerRoutingStrategy(CustomRoutingStrategyBase):
    """Content-aware deployment choice for a ``litellm.Router``, never worse than LiteLLM's own.

    ``deployments`` maps each deployment (its ``litellm_params.model``, or its ``model_info.id``)
    to the query router's model it plays, e.g. ``{"openai/gpt-4o": "strong", "openai/gpt-4o-mini":
    "weak"}``.  Give either ``query_router`` (a router or its folder) or ``service_url``.

    Why each rule:

    - ``groups``: the model groups we route (default: every group where the mapped deployments
      play at least two different router models; a group without a choice is LiteLLM's alone).
    - We choose only among the deployments LiteLLM itself would consider for this call
      (``Router.async_get_healthy_deployments``: cooldowns, blocked deployments, tags, order), minus
      those this call already tried: a retry never goes back to the deployment that just failed.
    - One call is one decision: retries and fallbacks into another routed group reuse the decision
      (its ranking travels in the request metadata), so the log holds one decision and one outcome
      per attempt, not a decision per attempt.
    - ``budget_s`` bounds what asking us costs a call (default ``LOCAL_BUDGET_S`` /
      ``SERVICE_BUDGET_S``); a service that fails ``breaker_threshold`` times in a row is not
      asked for ``breaker_reset_s``.  Past either, LiteLLM's own choice, counted by cause
      (``fallback_causes``, ``tiny_dancer_litellm_fallbacks_total{cause}``) and logged with the cause.
    """

    def __init__(self, llm_router: Any, deployments: dict[str, str], *, query_router: QueryRouter | str | Path | None = None,
                 service_url: str | None = None, api_key: str | None = None, strong_share: float | None = None,
                 cost_weight: float | None = None, quality_bar: float | None = None, embedder: Any = None,
                 cache_size: int = 10_000, groups: Iterable[str] | None = None, budget_s: float | None = None,
                 timeout_s: float | None = None, breaker_threshold: int = 5, breaker_reset_s: float = 30.0) -> None:
        if (query_router is None) == (service_url is None):
            raise ValidationError("give query_router (a local router) or service_url (a running Tiny Dancer service)")
        if budget_s is None:
            budget_s = timeout_s  # the name this parameter had before the budget covered local routing too
        if budget_s is not None and not budget_s > 0:
            raise ValidationError(f"budget_s must be > 0 seconds, got {budget_s}")
        self.llm_router = llm_router
        self.deployments = dict(deployments)
        self.groups = None if groups is None else frozenset(groups)
        self.service_url = None if service_url is None else service_url.rstrip("/")
        self.api_key = api_key
        self.budget_s = float(budget_s if budget_s is not None else SERVICE_BUDGET_S if service_url else LOCAL_BUDGET_S)
        #: how long the logger's feedback posts to the service may take (a background thread: not on the call)
        self.timeout_s = max(2.0, self.budget_s)
        self.knobs = {k: v for k, v in (("strong_share", strong_share), ("cost_weight", cost_weight),
                                        ("quality_bar", quality_bar)) if v is not None}
        self.router: QueryRouter | None = None
        if query_router is not None:
            self.router = query_router if isinstance(query_router, QueryRouter) else QueryRouter.load(query_router)
            unknown = sorted({m for m in self.deployments.values() if m not in self.router.models})
            if unknown:
                raise ValidationError(f"deployments map to {unknown}, which the router does not route; its models are "
                                      f"{self.router.models}")
            self.point = self.router.operating_point(**self.knobs)
            if embedder is not None:
                self.router.embedder = embedder
        self.breaker = CircuitBreaker(failure_threshold=breaker_threshold, reset_timeout_s=breaker_reset_s)
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_size = cache_size
        #: decisions waiting for the logger: decision id → (embedding, predicted quality per model, text)
        self.decisions: OrderedDict[str, tuple[np.ndarray | None, dict[str, float], str]] = OrderedDict()
        #: decision ids this strategy issued: a tag in request metadata is ours only if listed here
        #: (a proxy client can send metadata; it must not steer a retry or forge a decision)
        self._issued: OrderedDict[str, None] = OrderedDict()
        self.fallbacks = 0
        self.fallback_causes: CounterType[str] = CounterType()
        self.routed = 0
        self._warned_at: dict[str, float] = {}
        self._default_async = llm_router.async_get_available_deployment
        self._default_sync = llm_router.get_available_deployment
        self._http: Any = None

    def install(self, warm: bool = True) -> "TinyDancerRoutingStrategy":
        """Put this strategy on the router (LiteLLM's ``set_custom_routing_strategy``).

        ``warm`` loads the local router's embedder first (MiniLM takes seconds to load, far past
        any call's budget: unwarmed, the first calls would get LiteLLM's choice)."""
        if warm:
            self.warm()
        self.llm_router.set_custom_routing_strategy(self)
        return self

    def warm(self) -> None:
        """Load the local router's embedder now (nothing to do for a service)."""
        if self.router is not None:
            self.router.embedder.embed(["warm up"])

    def issued(self, decision_id: Any) -> bool:
        """Did this strategy make the decision ``decision_id``?"""
        return isinstance(decision_id, str) and decision_id in self._issued

    def _issue(self, decision_id: str) -> None:
        self._issued[decision_id] = None
        while len(self._issued) > max(self.cache_size, 1000):
            self._issued.popitem(last=False)

    def _tag_in(self, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        tag = metadata.get(METADATA_KEY) if metadata is not None else None
        if isinstance(tag, dict) and isinstance(tag.get("ranking"), list) and self.issued(tag.get("decision_id")):
            return tag
        return None

    def stats(self) -> dict[str, Any]:
        """Decisions made, calls left to LiteLLM by cause, and the service breaker's state."""
        return {"routed": self.routed, "fallbacks": self.fallbacks, "fallback_causes": dict(self.fallback_causes),
                "budget_s": self.budget_s, "breaker": self.breaker.status() if self.service_url else None}

    # ------------------------------------------------------------------ which calls are ours
    def plays(self, deployment: dict[str, Any]) -> str | None:
        """The router model a deployment plays, or None when it is not mapped."""
        params = deployment.get("litellm_params") or {}
        return self.deployments.get(str(params.get("model"))) or self.deployments.get(str(_deployment_id(deployment)))

    def routes(self, model: str) -> bool:
        """Is ``model`` a group we choose in?  Named groups only, or, when none are named, groups
        whose mapped deployments play two or more router models (elsewhere there is no choice)."""
        if self.groups is not None:
            return model in self.groups
        played = {self.plays(d) for d in self.llm_router.model_list if d.get("model_name") == model}
        played.discard(None)
        return len(played) >= 2

    # ------------------------------------------------------------------ choosing
    def _outputs(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        assert self.router is not None
        hit = self._cache.get(text)
        if hit is not None:
            try:
                self._cache.move_to_end(text)
            except KeyError:  # evicted by another thread meanwhile
                pass
            return hit
        emb = self.router.embedder.embed([text])[0]
        out = self.router.outputs_for(emb, text)
        self._cache[text] = (emb, out)
        while len(self._cache) > self.cache_size:
            try:
                self._cache.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                break
        return emb, out

    def _rank_local(self, emb: np.ndarray, out: np.ndarray) -> tuple[list[str], dict[str, float]]:
        assert self.router is not None
        values = out.tolist()
        order = self.router.ranking(values, self.point)
        quality = {m: float(q) for m, q in zip(self.router.models, values)}
        return [self.router.models[i] for i in order], quality

    def _outputs_before(self, text: str, deadline: float) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_outputs` in a worker thread, unless the call gave up before the thread started
        (under overload, queued work past its budget would only take CPU from LiteLLM)."""
        if time.monotonic() > deadline:
            return None
        return self._outputs(text)

    async def _decide_local(self, text: str) -> tuple[list[str], np.ndarray, dict[str, float]]:
        hit = self._cache.get(text)  # a cache hit costs microseconds: no thread, no budget
        if hit is None:
            try:
                deadline = time.monotonic() + self.budget_s
                hit = await asyncio.wait_for(asyncio.to_thread(self._outputs_before, text, deadline), self.budget_s)
                if hit is None:
                    raise asyncio.TimeoutError
            except asyncio.TimeoutError:
                # the thread finishes and fills the cache: this prompt's next call (or retry) is routed
                raise _LeaveToLiteLLM("budget", f"the query router took longer than its {self.budget_s * 1e3:.0f} ms "
                                                "budget") from None
            except Exception as exc:
                raise _LeaveToLiteLLM("router_error", f"the query router failed ({_describe(exc)})") from exc
        else:
            try:
                self._cache.move_to_end(text)
            except KeyError:  # a router thread evicted it meanwhile: the entry we hold is still good
                pass
        emb, out = hit
        ranking, quality = self._rank_local(emb, out)
        return ranking, emb, quality

    async def _decide_remote(self, text: str) -> tuple[list[str], str]:
        if not self.breaker.allow():
            status = self.breaker.status()
            raise _LeaveToLiteLLM("breaker_open", f"the service at {self.service_url} failed {status['failure_threshold']} "
                                                  f"times in a row; it is asked again in {status['retry_in_s']:.0f} s")
        try:
            data = await asyncio.wait_for(self._ask_service(text), self.budget_s)
        except asyncio.TimeoutError:
            self.breaker.record_failure()
            raise _LeaveToLiteLLM("budget", f"the service at {self.service_url} did not answer within the "
                                            f"{self.budget_s * 1e3:.0f} ms budget") from None
        except Exception as exc:
            self.breaker.record_failure()
            raise _LeaveToLiteLLM("service_error", f"the service at {self.service_url} failed ({_describe(exc)})") from exc
        self.breaker.record_success()
        ranking = [str(data["model"])]
        if data.get("runner_up") and data["runner_up"] not in ranking:
            ranking.append(str(data["runner_up"]))
        return ranking, str(data["request_id"])

    def _left_to_litellm(self, model: str, leave: _LeaveToLiteLLM) -> None:
        """Count a call left to LiteLLM's choice and say why (once a minute per cause: a down
        service must not write a warning per call)."""
        self.fallbacks += 1
        self.fallback_causes[leave.cause] += 1
        _fallback_counter().labels(leave.cause).inc()
        now = time.monotonic()
        if now - self._warned_at.get(leave.cause, -1e9) >= 60.0:
            self._warned_at[leave.cause] = now
            log.warning("tinydancer did not route a call to %r: %s; LiteLLM's own choice is used (%d call(s) so far "
                        "for this cause)", model, leave.detail, self.fallback_causes[leave.cause])

    def _pick(self, model: str, ranking: list[str], healthy: list[dict[str, Any]], tag: dict[str, Any]) -> dict[str, Any]:
        """The first model of ``ranking`` that a healthy, untried deployment plays (a random one of
        its deployments, as LiteLLM's shuffle would)."""
        metadata_tried = {str(r.get("deployment_id")) for r in tag.get("_previous", ()) if isinstance(r, dict)}
        tried = set(tag.get("tried", ())) | metadata_tried
        untried = [d for d in healthy if _deployment_id(d) not in tried] or healthy
        by_model: dict[str, list[dict[str, Any]]] = {}
        for d in untried:
            plays = self.plays(d)
            if plays is not None:
                by_model.setdefault(plays, []).append(d)
        for m in ranking:
            if m in by_model:
                return random.choice(by_model[m])
        raise _LeaveToLiteLLM("no_mapped_deployment", f"none of the healthy deployments of {model!r} plays "
                                                      f"{', '.join(ranking)}")

    async def async_get_available_deployment(self, model: str, messages: list[dict[str, str]] | None = None,
                                             input: str | list | None = None, specific_deployment: bool | None = False,
                                             request_kwargs: dict | None = None) -> Any:
        def litellms_choice() -> Any:
            return self._default_async(model=model, messages=messages, input=input,
                                       specific_deployment=specific_deployment, request_kwargs=request_kwargs)

        text = _last_user_text(messages)
        try:
            ours = not specific_deployment and text is not None and self.routes(model)
        except Exception:  # an odd model_list entry: not a reason to fail the call
            ours = False
        if not ours or text is None:
            return await litellms_choice()
        kwargs = request_kwargs if request_kwargs is not None else {}
        saved = {k: kwargs[k] for k in _POPPED_KEYS if k in kwargs}
        try:
            healthy = await self.llm_router.async_get_healthy_deployments(
                model=model, request_kwargs=kwargs, messages=messages, input=input, specific_deployment=specific_deployment)
        except Exception:  # LiteLLM has nothing to offer (all cooled down, ...): its own choice raises its own error
            kwargs.update(saved)
            return await litellms_choice()
        if isinstance(healthy, dict):
            return healthy
        metadata = _metadata_of(request_kwargs)
        tag = self._tag_in(metadata)
        try:
            if tag is None:  # the call's first attempt: decide
                if self.service_url is not None:
                    ranking, decision_id = await self._decide_remote(text)
                    emb, quality = None, {}
                else:
                    ranking, emb, quality = await self._decide_local(text)
                    decision_id = new_request_id()
                tag = {"decision_id": decision_id, "ranking": ranking, "remote": self.service_url is not None, "tried": []}
                fresh = True
            else:  # a retry, or a fallback into another group we route: the same decision
                fresh = False
            view = {**tag, "_previous": (metadata or {}).get("previous_models") or ()}
            chosen = self._pick(model, tag["ranking"], healthy, view)
        except Exception as exc:  # never fail the user's call because of us
            leave = exc if isinstance(exc, _LeaveToLiteLLM) else _LeaveToLiteLLM("router_error", f"routing failed ({_describe(exc)})")
            self._left_to_litellm(model, leave)
            kwargs.update(saved)
            return await litellms_choice()
        if fresh:
            self.routed += 1
            self._issue(tag["decision_id"])
            if self.router is not None:
                self._remember(tag["decision_id"], emb, quality, text)
        tag["router_model"] = self.plays(chosen)
        if _deployment_id(chosen) is not None:
            tag["tried"] = [*tag.get("tried", []), _deployment_id(chosen)]
        if metadata is not None:
            metadata[METADATA_KEY] = tag
        return chosen

    def get_available_deployment(self, model: str, messages: list[dict[str, str]] | None = None,
                                 input: str | list | None = None, specific_deployment: bool | None = False,
                                 request_kwargs: dict | None = None) -> Any:
        """The synchronous path (``Router.completion``): local routers only, cooldowns honoured,
        no budget (a thread cannot be interrupted; the async path is the one with a budget)."""
        def litellms_choice() -> Any:
            return self._default_sync(model=model, messages=messages, input=input,
                                      specific_deployment=specific_deployment, request_kwargs=request_kwargs)

        text = _last_user_text(messages)
        if specific_deployment or text is None or self.router is None or not self.routes(model):
            return litellms_choice()
        try:
            healthy, _ = self.llm_router._get_healthy_deployments(model, None)
        except Exception:
            return litellms_choice()
        metadata = _metadata_of(request_kwargs)
        tag = self._tag_in(metadata)
        fresh = tag is None
        try:
            if tag is None:
                try:
                    emb, out = self._outputs(text)
                except Exception as exc:
                    raise _LeaveToLiteLLM("router_error", f"the query router failed ({_describe(exc)})") from exc
                ranking, quality = self._rank_local(emb, out)
                tag = {"decision_id": new_request_id(), "ranking": ranking, "remote": False, "tried": []}
            chosen = self._pick(model, tag["ranking"], healthy, {**tag, "_previous": (metadata or {}).get("previous_models") or ()})
        except Exception as exc:  # never fail the user's call because of us
            leave = exc if isinstance(exc, _LeaveToLiteLLM) else _LeaveToLiteLLM("router_error", f"routing failed ({_describe(exc)})")
            self._left_to_litellm(model, leave)
            return litellms_choice()
        if fresh:
            self.routed += 1
            self._issue(tag["decision_id"])
            self._remember(tag["decision_id"], emb, quality, text)
        tag["router_model"] = self.plays(chosen)
        if _deployment_id(chosen) is not None:
            tag["tried"] = [*tag.get("tried", []), _deployment_id(chosen)]
        if metadata is not None:
            metadata[METADATA_KEY] = tag
        return chosen

    def _service_body(self, text: str) -> dict[str, Any]:
        return {"query": text, **self.knobs}

    def _remember(self, decision_id: str, emb: np.ndarray | None, quality: dict[str, float], text: str) -> None:
        self.decisions[decision_id] = (emb, quality, text)
        while len(self.decisions) > self.cache_size:
            self.decisions.popitem(last=False)

    async def aclose(self) -> None:
        """Close the connection pool to the service (it belongs to the event loop that opened it)."""
        if self._http is not None and not self._http.closed:
            await self._http.close()
        self._http = None

    async def _ask_service(self, text: str) -> dict[str, Any]:
        import aiohttp

        if self._http is not None and getattr(self._http, "_loop", None) is not asyncio.get_running_loop():
            self._http = None  # opened on another (finished) event loop: unusable here
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=max(self.budget_s, 0.001)))
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with self._http.post(f"{self.service_url}/v1/route/query", json=self._service_body(text), headers=headers) as r:
            if r.status != 200:
                raise TinyDancerError(f"it answered HTTP {r.status}")
            data: dict[str, Any] = await r.json()
        return data


_DROPPED: Any = None


def _dropped_counter() -> Any:
    """The process's one counter of dropped records (every logger adds to it)."""
    global _DROPPED
    if _DROPPED is None:
        from prometheus_client import Counter

        _DROPPED = Counter("tiny_dancer_litellm_dropped_records", "LiteLLM call records dropped because the log "
                           "queue was full")
    return _DROPPED


#: a judge grades a successful call: (prompt, answer, router model) → quality in [0, 1], or None
Judge = Callable[[str, str, str], "float | None"]

#: the response header (proxy) and ``_hidden_params`` key (SDK) that carry the decision id
DECISION_HEADER = "x-tinydancer-decision-id"


def _answer_text(response_obj: Any) -> str | None:
    try:
        content = response_obj.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _tag_of(request: Any) -> dict[str, Any] | None:
    """Our decision's tag in a request's metadata (LiteLLM uses ``metadata`` or ``litellm_metadata``)."""
    if not isinstance(request, dict):
        return None
    for key in ("metadata", "litellm_metadata"):
        metadata = request.get(key)
        tag = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
        if isinstance(tag, dict) and tag.get("decision_id"):
            return tag
    return None


class TinyDancerLogger(CustomLogger):
    """LiteLLM calls into Tiny Dancer's log: one decision per call, one call row per attempt
    (tokens, LiteLLM's cost, latency, status), an outcome per failed attempt and, for the
    successes a judge grades, an outcome with the judged quality, so retraining learns from
    LiteLLM traffic.  It also hands each routed response its decision id (``_hidden_params`` in the
    SDK, the ``x-tinydancer-decision-id`` header through the proxy) so the client can send feedback.

    ``storage``: a database path or a storage; ``strategy``: the routing strategy whose decisions
    these calls carry (their embeddings are what retraining learns from).  ``judge`` (optional)
    grades a sampled ``judge_rate`` share of successful answers, in the logger's thread, never on
    the call: a success without a grade writes no outcome, because an answer is not evidence that it
    was good enough (logged as success 1, every answer of the cheap model would teach the router
    that the cheap model always suffices).
    """

    def __init__(self, storage: SQLiteStorage | str | Path, strategy: TinyDancerRoutingStrategy | None = None,
                 max_queue: int = 10_000, judge: Judge | None = None, judge_rate: float = 1.0,
                 seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= judge_rate <= 1.0:
            raise ValidationError(f"judge_rate is a share of successful calls, in [0, 1]; got {judge_rate}")
        self.storage = storage if isinstance(storage, SQLiteStorage) else open_storage(Path(storage))
        self.strategy = strategy
        self.judge = judge
        self.judge_rate = judge_rate
        self._rng = random.Random(seed)
        self.dropped = 0
        self.written = 0
        self.judged = 0
        #: records handed to the logger by LiteLLM (written, queued or dropped)
        self.received = 0
        #: decision id → attempts logged so far (the writer thread's own; bounded)
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._queue: queue.Queue[tuple[dict[str, Any], bool, Any] | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._drain, name="tinydancer-litellm-log", daemon=True)
        self._thread.start()
        self.dropped_metric = _dropped_counter()

    # ------------------------------------------------------------------ LiteLLM's hooks (never block)
    def _put(self, kwargs: dict[str, Any], ok: bool, response_obj: Any = None) -> None:
        self.received += 1
        try:
            self._queue.put_nowait((kwargs, ok, response_obj))
        except queue.Full:
            self.dropped += 1
            self.dropped_metric.inc()

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, True, response_obj)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, False)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, True, response_obj)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, False)

    async def async_post_call_success_deployment_hook(self, request_data: dict, response: Any, call_type: Any) -> Any:
        """The decision id onto the response, where the caller can read it: ``_hidden_params
        ["tinydancer_decision_id"]`` (SDK) and ``additional_headers``, which LiteLLM's proxy sends
        as response headers (``x-tinydancer-decision-id``)."""
        tag = _tag_of(request_data)
        if tag is not None and self.strategy is not None and not self.strategy.issued(tag["decision_id"]):
            tag = None
        hidden = getattr(response, "_hidden_params", None)
        if isinstance(tag, dict) and isinstance(hidden, dict) and tag.get("decision_id"):
            hidden["tinydancer_decision_id"] = str(tag["decision_id"])
            headers = hidden.get("additional_headers")
            if not isinstance(headers, dict):
                headers = hidden["additional_headers"] = {}
            headers[DECISION_HEADER] = str(tag["decision_id"])
        return None  # the response itself is unchanged

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict: Any, response: Any,
                                                    request_headers: dict[str, str] | None = None,
                                                    litellm_call_info: dict[str, object] | None = None) -> dict[str, str] | None:
        """The proxy's own hook for response headers: the decision id, when the call was routed."""
        tag = _tag_of(data)
        if tag is not None and self.strategy is not None and not self.strategy.issued(tag["decision_id"]):
            tag = None
        if tag is None:
            hidden = getattr(response, "_hidden_params", None)
            decision_id = hidden.get("tinydancer_decision_id") if isinstance(hidden, dict) else None
        else:
            decision_id = tag.get("decision_id")
        return {DECISION_HEADER: str(decision_id)} if decision_id else None

    # ------------------------------------------------------------------ the writer thread
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                self._write(*item)
                self.written += 1
            except Exception:
                log.exception("a LiteLLM call could not be logged")
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until the queued records are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _post_feedback(self, decision_id: str, success: bool, quality: float | None, cost: Any) -> None:
        import json
        import urllib.request

        assert self.strategy is not None and self.strategy.service_url is not None
        body: dict[str, Any] = {"request_id": decision_id, "success": success}
        if quality is not None:
            body["quality"] = float(quality)
        if isinstance(cost, (int, float)) and cost >= 0:
            body["cost"] = float(cost)
        headers = {"Content-Type": "application/json"}
        if self.strategy.api_key:
            headers["Authorization"] = f"Bearer {self.strategy.api_key}"
        req = urllib.request.Request(f"{self.strategy.service_url}/v1/feedback", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.strategy.timeout_s) as resp:  # noqa: S310 - the configured service
            resp.read()

    def _attempt_model(self, kwargs: dict[str, Any], slo: dict[str, Any], tag: dict[str, Any]) -> str:
        """The router model this attempt's deployment plays (each retry may be another deployment;
        the request's tag holds only the latest)."""
        if self.strategy is not None:
            params = kwargs.get("litellm_params") or {}
            deployment_id = slo.get("model_id") or (params.get("model_info") or {}).get("id")
            for key in (slo.get("model"), deployment_id):
                if key is not None and str(key) in self.strategy.deployments:
                    return self.strategy.deployments[str(key)]
        return str(tag.get("router_model") or tag["ranking"][0])

    def _grade(self, ok: bool, response_obj: Any, text: str, model: str) -> float | None:
        """The judge's quality for a sampled success (None: not sampled, not gradable, or no judge)."""
        if not ok or self.judge is None or self._rng.random() >= self.judge_rate:
            return None
        answer = _answer_text(response_obj)
        if answer is None or not text:
            return None
        try:
            quality = self.judge(text, answer, model)
        except Exception:
            log.exception("the judge failed on a LiteLLM answer; the call is logged without a grade")
            return None
        if quality is None or not 0.0 <= float(quality) <= 1.0:
            return None
        self.judged += 1
        return float(quality)

    def _write(self, kwargs: dict[str, Any], ok: bool, response_obj: Any = None) -> None:
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or kwargs.get("litellm_metadata") or kwargs.get("metadata") or {}
        tag = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
        if not isinstance(tag, dict) or not isinstance(tag.get("ranking"), list) or not tag.get("decision_id"):
            return  # not a call our strategy routed: nothing to learn from
        if self.strategy is not None and not self.strategy.issued(tag["decision_id"]):
            return  # a tag our strategy did not make (a client's metadata): not ours to log
        slo = kwargs.get("standard_logging_object") or {}
        decision_id = str(tag["decision_id"])
        ranking = [str(m) for m in tag["ranking"]]
        model = self._attempt_model(kwargs, slo, tag)
        deployment = slo.get("model") or metadata.get("deployment") or model
        started, ended = slo.get("startTime"), slo.get("endTime")
        total_ms = float(ended - started) * 1e3 if isinstance(started, (int, float)) and isinstance(ended, (int, float)) else 0.0
        # a stream that broke after its first chunk reaches us as a failure whose logging object
        # has no stream flag: the request's own flag says it was a stream
        stream = bool(slo.get("stream") or kwargs.get("stream") or (kwargs.get("optional_params") or {}).get("stream"))
        status = "ok" if ok else "failed"
        attempt = self._attempts.get(decision_id, 0)
        self._attempts[decision_id] = attempt + 1
        self._attempts.move_to_end(decision_id)
        while len(self._attempts) > 100_000:
            self._attempts.popitem(last=False)
        remembered = self.strategy.decisions.get(decision_id) if self.strategy is not None else None
        emb, quality, text = remembered if remembered is not None else (None, {}, "")
        if not text:
            text = _last_user_text(kwargs.get("messages")) or ""
        graded = self._grade(ok, response_obj, text, model)
        if tag.get("remote"):
            # the service logged this decision itself: outcomes go to it as feedback, for the model
            # it decided (the one its log holds), when this attempt went there
            if self.strategy is not None and self.strategy.service_url is not None and model == ranking[0]:
                if not ok:
                    self._post_feedback(decision_id, False, None, slo.get("response_cost"))
                elif graded is not None:
                    self._post_feedback(decision_id, True, graded, slo.get("response_cost"))
            return
        call = CallRecord(decision_id, attempt, str(deployment), model, status, None, stream, slo.get("prompt_tokens"),
                          slo.get("completion_tokens"), slo.get("response_cost"), None, total_ms, time.time())
        decisions = []
        if attempt == 0:  # one decision per call, whatever its retries and fallbacks
            vec = np.zeros(0, np.float32) if emb is None else np.asarray(emb, np.float32)
            router = self.strategy.router if self.strategy is not None else None
            strong = router.models[router.strong] if router is not None else None
            decisions.append(decision_record(
                decision_id, "query", "litellm", ranking, np.tile(vec, (len(ranking), 1)),
                np.array([quality.get(m, np.nan) for m in ranking], np.float32), None,
                np.array([m != strong for m in ranking], np.uint8), 0.0, query_key(text) if text else None))
        rank = ranking.index(model) if model in ranking else 0
        outcomes = []
        if not ok:
            outcomes.append(call.failure_outcome(rank))
        elif graded is not None:
            outcomes.append((decision_id, model, rank, 1, graded, call.cost, call.created_at))
        # LiteLLM's token counts and cost are an upstream's word: an impossible one is logged as unknown
        (decisions, calls, outcomes, _), refused = clean_log(decisions, [call.row()], outcomes)
        if refused:
            log.warning("tinydancer: log rows of %s refused: %s", decision_id, "; ".join(refused))
        self.storage.insert_log(decisions, calls, outcomes)
