"""Tiny Dancer's choice inside ``litellm.Router``: :class:`TinyDancerRoutingStrategy` (see
:mod:`tinydancer.integrations.litellm` for how LiteLLM calls it and what it promises).

Apart from the outcome logger (:mod:`~tinydancer.integrations.litellm_logger`) because the two run
on different paths: this one on every call, within a latency budget; the logger in a background
thread, after the call."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter as CounterType
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..circuit import CircuitBreaker
from ..errors import TinyDancerError, ValidationError
from ..llm import QueryRouter
from ..server.exploration import Explorer
from ..server.storage import new_request_id

try:
    from litellm.types.router import CustomRoutingStrategyBase
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("tinydancer.integrations.litellm needs LiteLLM: pip install 'tinydancer[litellm]'") from exc

__all__ = ["TinyDancerRoutingStrategy", "METADATA_KEY", "LOCAL_BUDGET_S", "SERVICE_BUDGET_S", "FALLBACK_CAUSES"]

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
#: asyncio's epoll selector sleeps whole milliseconds, rounded up, so a timeout fires up to ~1 ms
#: after it is due: a wait ends this much before the deadline, so that the budget holds with it
WAKE_UP_SLACK_S = 0.001


def time_left(deadline: float, now: float) -> float:
    """Seconds a decision may still wait at ``now`` and be back by ``deadline`` (the call's start
    plus the budget), the event loop's late wake-up included; 0 or less: none."""
    return deadline - now - WAKE_UP_SLACK_S

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


def explore_tag(explorer: Explorer, tag: dict[str, Any], offered: set[str]) -> bool:
    """Draw where a fresh decision goes (:mod:`tinydancer.server.exploration`) among the router
    models ``offered`` (played by the healthy, untried deployments): an explored model moves to the
    head of the tag's ranking, and the propensity of the ranking's head goes on the tag.  True when
    it explored; nothing on the tag when none of the ranking is offered (LiteLLM's choice follows)."""
    ranking = tag["ranking"]
    eligible = [i for i, m in enumerate(ranking) if m in offered]
    if not eligible:
        return False
    draw = explorer.draw(eligible[0], eligible)
    tag["propensity"], tag["explored"] = draw.propensity, draw.explored
    if draw.explored:
        tag["ranking"] = [ranking[draw.model]] + [m for i, m in enumerate(ranking) if i != draw.model]
    return draw.explored


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
      ``SERVICE_BUDGET_S``), counted from the call's start (LiteLLM's health check of the
      deployments, which we run first, counts) and ended ``WAKE_UP_SLACK_S`` early for the event
      loop's late wake-up, so the time it adds holds within the budget; a service that fails ``breaker_threshold`` times in a row is not
      asked for ``breaker_reset_s``.  Past either, LiteLLM's own choice, counted by cause
      (``fallback_causes``, ``tiny_dancer_litellm_fallbacks_total{cause}``) and logged with the cause.
    - ``exploration_share`` (at most 0.2, off by default) and ``seed``: with that probability a
      call's first attempt goes to a model the router did not pick, among those the healthy,
      untried deployments LiteLLM offers for this call play (:mod:`tinydancer.server.exploration`,
      as the gateway does); the explored model heads the logged ranking and the decision carries
      its propensity, which retraining's off-policy gate needs.  Never in a group we do not route,
      never on a retry, and not with a service (the service logs its own decisions).
    """

    def __init__(self, llm_router: Any, deployments: dict[str, str], *, query_router: QueryRouter | str | Path | None = None,
                 service_url: str | None = None, api_key: str | None = None, strong_share: float | None = None,
                 cost_weight: float | None = None, quality_bar: float | None = None, embedder: Any = None,
                 cache_size: int = 10_000, groups: Iterable[str] | None = None, budget_s: float | None = None,
                 timeout_s: float | None = None, breaker_threshold: int = 5, breaker_reset_s: float = 30.0,
                 exploration_share: float = 0.0, seed: int | None = None) -> None:
        if (query_router is None) == (service_url is None):
            raise ValidationError("give query_router (a local router) or service_url (a running Tiny Dancer service)")
        if budget_s is None:
            budget_s = timeout_s  # the name this parameter had before the budget covered local routing too
        if budget_s is not None and not budget_s > 0:
            raise ValidationError(f"budget_s must be > 0 seconds, got {budget_s}")
        if not 0.0 <= exploration_share <= 0.2:
            raise ValidationError(f"exploration_share is a share of routed calls in [0, 0.2]; got {exploration_share}")
        if exploration_share and service_url is not None:
            raise ValidationError("exploration_share needs a local query_router: a service logs its own decisions, so "
                                  "an explored call's propensity could not be logged with it")
        self.explorer = Explorer(exploration_share, seed)
        self.explored = 0
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
        return {"routed": self.routed, "explored": self.explored, "fallbacks": self.fallbacks, "fallback_causes": dict(self.fallback_causes),
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

    def _wait_allowed(self, deadline: float, what: str) -> float:
        """The time left for ``what`` within this call's budget; the call leaves at once when none is."""
        left = time_left(deadline, time.monotonic())
        if left <= 0:
            raise _LeaveToLiteLLM("budget", f"the {self.budget_s * 1e3:.0f} ms budget was spent before {what} was asked")
        return left

    async def _decide_local(self, text: str, deadline: float) -> tuple[list[str], np.ndarray, dict[str, float]]:
        """``deadline``: the call's start plus the budget (LiteLLM's health check before us counts too)."""
        hit = self._cache.get(text)  # a cache hit costs microseconds: no thread, no budget
        if hit is None:
            left = self._wait_allowed(deadline, "the query router")
            try:
                hit = await asyncio.wait_for(asyncio.to_thread(self._outputs_before, text, deadline - WAKE_UP_SLACK_S), left)
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

    async def _decide_remote(self, text: str, deadline: float) -> tuple[list[str], str]:
        """``deadline``: the call's start plus the budget (LiteLLM's health check before us counts too).
        The time left is taken before the breaker is asked, so a half-open breaker's probe is never
        granted to a call that then does not ask."""
        left = self._wait_allowed(deadline, f"the service at {self.service_url}")
        if not self.breaker.allow():
            status = self.breaker.status()
            raise _LeaveToLiteLLM("breaker_open", f"the service at {self.service_url} failed {status['failure_threshold']} "
                                                  f"times in a row; it is asked again in {status['retry_in_s']:.0f} s")
        try:
            data = await asyncio.wait_for(self._ask_service(text), left)
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

    def _by_model(self, healthy: list[dict[str, Any]], tag: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """The healthy deployments this call has not tried yet, by the router model each plays."""
        metadata_tried = {str(r.get("deployment_id")) for r in tag.get("_previous", ()) if isinstance(r, dict)}
        tried = set(tag.get("tried", ())) | metadata_tried
        untried = [d for d in healthy if _deployment_id(d) not in tried] or healthy
        by_model: dict[str, list[dict[str, Any]]] = {}
        for d in untried:
            plays = self.plays(d)
            if plays is not None:
                by_model.setdefault(plays, []).append(d)
        return by_model

    def _pick(self, model: str, ranking: list[str], healthy: list[dict[str, Any]], tag: dict[str, Any]) -> dict[str, Any]:
        """The first model of ``ranking`` that a healthy, untried deployment plays (a random one of
        its deployments, as LiteLLM's shuffle would)."""
        by_model = self._by_model(healthy, tag)
        for m in ranking:
            if m in by_model:
                return random.choice(by_model[m])
        raise _LeaveToLiteLLM("no_mapped_deployment", f"none of the healthy deployments of {model!r} plays "
                                                      f"{', '.join(ranking)}")

    def _explore(self, tag: dict[str, Any], healthy: list[dict[str, Any]]) -> None:
        """A fresh decision's exploration draw (see the class and :func:`explore_tag`)."""
        if self.explorer.active and explore_tag(self.explorer, tag, set(self._by_model(healthy, tag))):
            self.explored += 1

    async def async_get_available_deployment(self, model: str, messages: list[dict[str, str]] | None = None,
                                             input: str | list | None = None, specific_deployment: bool | None = False,
                                             request_kwargs: dict | None = None) -> Any:
        def litellms_choice() -> Any:
            return self._default_async(model=model, messages=messages, input=input,
                                       specific_deployment=specific_deployment, request_kwargs=request_kwargs)

        deadline = time.monotonic() + self.budget_s  # the budget covers the whole of our part of the call
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
        emb: Any = None
        quality: dict[str, float] = {}
        try:
            if tag is None:  # the call's first attempt: decide
                if self.service_url is not None:
                    ranking, decision_id = await self._decide_remote(text, deadline)
                else:
                    ranking, emb, quality = await self._decide_local(text, deadline)
                    decision_id = new_request_id()
                tag = {"decision_id": decision_id, "ranking": ranking, "remote": self.service_url is not None, "tried": []}
                self._explore(tag, healthy)
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
        return self._note_choice(chosen, tag, metadata, (emb, quality, text) if fresh else None)

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
        emb: Any = None
        quality: dict[str, float] = {}
        try:
            if tag is None:
                try:
                    emb, out = self._outputs(text)
                except Exception as exc:
                    raise _LeaveToLiteLLM("router_error", f"the query router failed ({_describe(exc)})") from exc
                ranking, quality = self._rank_local(emb, out)
                tag = {"decision_id": new_request_id(), "ranking": ranking, "remote": False, "tried": []}
                self._explore(tag, healthy)
            chosen = self._pick(model, tag["ranking"], healthy, {**tag, "_previous": (metadata or {}).get("previous_models") or ()})
        except Exception as exc:  # never fail the user's call because of us
            leave = exc if isinstance(exc, _LeaveToLiteLLM) else _LeaveToLiteLLM("router_error", f"routing failed ({_describe(exc)})")
            self._left_to_litellm(model, leave)
            return litellms_choice()
        return self._note_choice(chosen, tag, metadata, (emb, quality, text) if fresh else None)

    def _note_choice(self, chosen: dict[str, Any], tag: dict[str, Any], metadata: dict[str, Any] | None,
                     decided: tuple[Any, dict[str, float], str] | None) -> dict[str, Any]:
        """Record the deployment chosen for this attempt in the call's tag, and ``decided`` (embedding,
        qualities, text) when this attempt made the decision, so retries and fallbacks stay its attempts."""
        if decided is not None:
            self.routed += 1
            self._issue(tag["decision_id"])
            if self.router is not None:
                self._remember(tag["decision_id"], *decided)
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
