"""Tiny Dancer inside LiteLLM: a routing strategy for ``litellm.Router``, and an outcome logger.

Read from the installed ``litellm`` (1.108.7): ``Router.set_custom_routing_strategy`` replaces the
router's ``get_available_deployment`` / ``async_get_available_deployment`` with a
``CustomRoutingStrategyBase``'s, which must return one element of ``Router.model_list``; a
``CustomLogger`` receives ``async_log_success_event`` / ``async_log_failure_event`` with the call's
kwargs, whose ``standard_logging_object`` carries LiteLLM's cost, tokens and status.

- :class:`TinyDancerRoutingStrategy` reads the request's last user turn, asks a
  :class:`~tinydancer.llm.QueryRouter` (a local file, or a running Tiny Dancer service's
  ``/v1/route/query``) which of the model group's deployments to use, and tags the request with
  its decision.  Anything going wrong on our side (the embedder, the service, an unmapped
  deployment) falls back to LiteLLM's own choice, logged and counted: a user's call never fails
  because of us.
- :class:`TinyDancerLogger` records each call's decision, deployment, tokens, LiteLLM's cost
  figure, latency and failures in Tiny Dancer's storage (for decisions a service made, failures go
  to the service's ``/v1/feedback``), so ``tinydancer retrain --query-router`` learns from
  LiteLLM traffic.  It never blocks the call: records go to a bounded queue that a
  background thread writes; when the queue is full, records are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

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


class TinyDancerRoutingStrategy(CustomRoutingStrategyBase):
    """Content-aware deployment choice for a ``litellm.Router``.

    ``deployments`` maps each deployment (its ``litellm_params.model``, or its ``model_info.id``)
    to the query router's model it plays, e.g. ``{"openai/gpt-4o": "strong", "openai/gpt-4o-mini":
    "weak"}``.  Give either ``query_router`` (a router or its folder) or ``service_url``.
    """

    def __init__(self, llm_router: Any, deployments: dict[str, str], *, query_router: QueryRouter | str | Path | None = None,
                 service_url: str | None = None, api_key: str | None = None, strong_share: float | None = None,
                 cost_weight: float | None = None, quality_bar: float | None = None, embedder: Any = None,
                 cache_size: int = 10_000, timeout_s: float = 2.0) -> None:
        if (query_router is None) == (service_url is None):
            raise ValidationError("give query_router (a local router) or service_url (a running Tiny Dancer service)")
        self.llm_router = llm_router
        self.deployments = dict(deployments)
        self.service_url = None if service_url is None else service_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
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
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_size = cache_size
        #: decisions waiting for the logger: decision id → (embedding, predicted quality per model, text)
        self.decisions: OrderedDict[str, tuple[np.ndarray | None, dict[str, float], str]] = OrderedDict()
        self.fallbacks = 0
        self.routed = 0
        self._default_async = llm_router.async_get_available_deployment
        self._default_sync = llm_router.get_available_deployment
        self._http: Any = None

    def install(self) -> "TinyDancerRoutingStrategy":
        """Put this strategy on the router (LiteLLM's ``set_custom_routing_strategy``)."""
        self.llm_router.set_custom_routing_strategy(self)
        return self

    # ------------------------------------------------------------------ choosing
    def _group(self, model: str) -> dict[str, dict[str, Any]]:
        """The model group's deployments by the router model each plays (unmapped ones left out)."""
        out: dict[str, dict[str, Any]] = {}
        for d in self.llm_router.model_list:
            if d.get("model_name") != model:
                continue
            params, info = d.get("litellm_params") or {}, d.get("model_info") or {}
            plays = self.deployments.get(params.get("model")) or self.deployments.get(str(info.get("id")))
            if plays is not None:
                out.setdefault(plays, d)
        return out

    def _outputs(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        assert self.router is not None
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        emb = self.router.embedder.embed([text])[0]
        out = self.router.outputs_for(emb, text)
        self._cache[text] = (emb, out)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb, out

    def _choose_local(self, text: str, group: dict[str, dict[str, Any]]) -> tuple[str, np.ndarray, dict[str, float]]:
        assert self.router is not None
        emb, out = self._outputs(text)
        values = out.tolist()
        allowed = [m in group for m in self.router.models]
        order = self.router.ranking(values, self.point, allowed)
        quality = {m: float(q) for m, q in zip(self.router.models, values)}
        return self.router.models[order[0]], emb, quality

    def _service_body(self, text: str) -> dict[str, Any]:
        return {"query": text, **self.knobs}

    def _tag(self, request_kwargs: dict | None, decision_id: str, model: str) -> None:
        if request_kwargs is not None:
            metadata = request_kwargs.setdefault("metadata", {})
            if isinstance(metadata, dict):
                metadata[METADATA_KEY] = {"decision_id": decision_id, "router_model": model,
                                          "remote": self.service_url is not None}

    def _remember(self, decision_id: str, emb: np.ndarray | None, quality: dict[str, float], text: str) -> None:
        self.decisions[decision_id] = (emb, quality, text)
        while len(self.decisions) > self.cache_size:
            self.decisions.popitem(last=False)

    async def async_get_available_deployment(self, model: str, messages: list[dict[str, str]] | None = None,
                                             input: str | list | None = None, specific_deployment: bool | None = False,
                                             request_kwargs: dict | None = None) -> Any:
        text = _last_user_text(messages)
        if specific_deployment or text is None:
            return await self._default_async(model=model, messages=messages, input=input,
                                             specific_deployment=specific_deployment, request_kwargs=request_kwargs)
        try:
            group = self._group(model)
            if not group:
                raise TinyDancerError(f"no deployment of {model!r} is mapped to a router model")
            if self.service_url is not None:
                chosen, decision_id = await self._ask_service(text)
                emb, quality = None, {}
            else:
                chosen, emb, quality = await asyncio.to_thread(self._choose_local, text, group)
                decision_id = new_request_id()
            if chosen not in group:
                raise TinyDancerError(f"the router chose {chosen!r}, which no deployment of {model!r} plays")
        except Exception as exc:  # never fail the user's call because of us: LiteLLM's own choice
            self.fallbacks += 1
            log.warning("tinydancer could not route %r (%s); LiteLLM's default choice is used", model, exc)
            return await self._default_async(model=model, messages=messages, input=input,
                                             specific_deployment=specific_deployment, request_kwargs=request_kwargs)
        self.routed += 1
        self._remember(decision_id, emb, quality, text)
        self._tag(request_kwargs, decision_id, chosen)
        return group[chosen]

    def get_available_deployment(self, model: str, messages: list[dict[str, str]] | None = None,
                                 input: str | list | None = None, specific_deployment: bool | None = False,
                                 request_kwargs: dict | None = None) -> Any:
        text = _last_user_text(messages)
        if specific_deployment or text is None or self.router is None:
            return self._default_sync(model=model, messages=messages, input=input,
                                      specific_deployment=specific_deployment, request_kwargs=request_kwargs)
        try:
            group = self._group(model)
            chosen, emb, quality = self._choose_local(text, group)
            if chosen not in group:
                raise TinyDancerError(f"no deployment of {model!r} plays {chosen!r}")
        except Exception as exc:
            self.fallbacks += 1
            log.warning("tinydancer could not route %r (%s); LiteLLM's default choice is used", model, exc)
            return self._default_sync(model=model, messages=messages, input=input,
                                      specific_deployment=specific_deployment, request_kwargs=request_kwargs)
        decision_id = new_request_id()
        self.routed += 1
        self._remember(decision_id, emb, quality, text)
        self._tag(request_kwargs, decision_id, chosen)
        return group[chosen]

    async def _ask_service(self, text: str) -> tuple[str, str]:
        import aiohttp

        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with self._http.post(f"{self.service_url}/v1/route/query", json=self._service_body(text), headers=headers) as r:
            if r.status != 200:
                raise TinyDancerError(f"the service answered {r.status}")
            data = await r.json()
        return str(data["model"]), str(data["request_id"])


_DROPPED: Any = None


def _dropped_counter() -> Any:
    """The process's one counter of dropped records (every logger adds to it)."""
    global _DROPPED
    if _DROPPED is None:
        from prometheus_client import Counter

        _DROPPED = Counter("tiny_dancer_litellm_dropped_records", "LiteLLM call records dropped because the log "
                           "queue was full")
    return _DROPPED


class TinyDancerLogger(CustomLogger):
    """LiteLLM calls into Tiny Dancer's log: decisions, calls (tokens, LiteLLM's cost, latency,
    status) and, for failures, an outcome, so retraining learns from LiteLLM traffic.

    ``storage``: a database path or a storage; ``strategy``: the routing strategy whose decisions
    these calls carry (their embeddings are what retraining learns from).
    """

    def __init__(self, storage: SQLiteStorage | str | Path, strategy: TinyDancerRoutingStrategy | None = None,
                 max_queue: int = 10_000) -> None:
        super().__init__()
        self.storage = storage if isinstance(storage, SQLiteStorage) else open_storage(Path(storage))
        self.strategy = strategy
        self.dropped = 0
        self.written = 0
        #: records handed to the logger by LiteLLM (written, queued or dropped)
        self.received = 0
        self._queue: queue.Queue[tuple[dict[str, Any], bool] | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._drain, name="tinydancer-litellm-log", daemon=True)
        self._thread.start()
        self.dropped_metric = _dropped_counter()

    # ------------------------------------------------------------------ LiteLLM's hooks (never block)
    def _put(self, kwargs: dict[str, Any], ok: bool) -> None:
        self.received += 1
        try:
            self._queue.put_nowait((kwargs, ok))
        except queue.Full:
            self.dropped += 1
            self.dropped_metric.inc()

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, True)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, False)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, True)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, False)

    # ------------------------------------------------------------------ the writer thread
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
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

    def _post_feedback(self, decision_id: str, cost: Any) -> None:
        import json
        import urllib.request

        assert self.strategy is not None and self.strategy.service_url is not None
        body = {"request_id": decision_id, "success": False}
        if isinstance(cost, (int, float)) and cost >= 0:
            body["cost"] = float(cost)
        headers = {"Content-Type": "application/json"}
        if self.strategy.api_key:
            headers["Authorization"] = f"Bearer {self.strategy.api_key}"
        req = urllib.request.Request(f"{self.strategy.service_url}/v1/feedback", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.strategy.timeout_s) as resp:  # noqa: S310 - the configured service
            resp.read()

    def _write(self, kwargs: dict[str, Any], ok: bool) -> None:
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or kwargs.get("metadata") or {}
        tag = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
        if not isinstance(tag, dict):
            return  # not a call our strategy routed: nothing to learn from
        slo = kwargs.get("standard_logging_object") or {}
        decision_id, model = str(tag["decision_id"]), str(tag["router_model"])
        deployment = (metadata.get("deployment") or slo.get("model") or model) if isinstance(metadata, dict) else model
        started, ended = slo.get("startTime"), slo.get("endTime")
        total_ms = float(ended - started) * 1e3 if isinstance(started, (int, float)) and isinstance(ended, (int, float)) else 0.0
        status = "ok" if ok else "failed"
        call = CallRecord(decision_id, 0, str(deployment), model, status, None, bool(slo.get("stream")),
                          slo.get("prompt_tokens"), slo.get("completion_tokens"), slo.get("response_cost"), None, total_ms,
                          time.time())
        remembered = self.strategy.decisions.pop(decision_id, None) if self.strategy is not None else None
        if tag.get("remote"):
            # the service logged this decision itself: a failure goes to it as feedback (a success
            # says nothing of quality; the application's own feedback does)
            if not ok and self.strategy is not None and self.strategy.service_url is not None:
                self._post_feedback(decision_id, slo.get("response_cost"))
            return
        emb, quality, text = remembered if remembered is not None else (None, {}, "")
        vec = np.zeros(0, np.float32) if emb is None else np.asarray(emb, np.float32)
        router = self.strategy.router if self.strategy is not None else None
        strong = router.models[router.strong] if router is not None else None
        row = decision_record(decision_id, "query", "litellm", [model], vec[None, :], np.array([quality.get(model, np.nan)],
                              np.float32), None, np.array([model != strong], np.uint8), 0.0, query_key(text) if text else None)
        outcomes = [] if ok else [call.failure_outcome(0)]
        # LiteLLM's token counts and cost are an upstream's word: an impossible one is logged as unknown
        (rows, calls, outcomes, _), refused = clean_log([row], [call.row()], outcomes)
        if refused:
            log.warning("tinydancer: log rows of %s refused: %s", decision_id, "; ".join(refused))
        self.storage.insert_log(rows, calls, outcomes)
