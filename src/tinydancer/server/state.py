"""What the handlers share: the routers, storage, the decision writer, metrics, and hot reload."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from ..candidates import Router, RouterConfig, ServedModel
from ..circuit import BreakerState
from ..errors import TinyDancerError
from ..llm import ROUTER_FILE, QueryRouter
from .metrics import STATE_CODE, Metrics
from .model_files import ModelFiles, database_files
from .registry import RegistryFollower
from .settings import ServiceSettings
from .storage import DecisionWriter, SQLiteStorage, open_storage
from .storage.base import keeps_registry

log = logging.getLogger("tinydancer.service")


#: how many recent /v1/systemone requests its tiers are cut from (the live score distribution)
SYSTEMONE_WINDOW = 2048


class Service:
    """State shared by the handlers: router, query router, storage, metrics."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.storage: SQLiteStorage = open_storage(settings.database_url or settings.database_path, checkpoint_interval_s=1.0,
                                                   retention_days=settings.retention_days,
                                                   retention_rows=settings.retention_rows,
                                                   timeout_s=settings.database_timeout_s,
                                                   statement_timeout_s=settings.database_timeout_s)
        self.writer = self.new_writer()  # replaced at each lifespan start if it was closed
        self.router: Router | None = None
        self.not_ready_reason = "no model loaded yet"
        self.query_router: QueryRouter | None = None
        #: why the query router cannot embed text (its embedder did not load), or None
        self.query_embedder_problem: str | None = None
        self.started = time.time()
        #: a readiness check added by a layer built on the service (the gateway); None: none
        self.readiness_check: Callable[[], str | None] | None = None
        #: more files to watch, from layers built on the service: each call reloads what changed
        #: and says what happened (see :meth:`check_files`)
        self.watchers: list[Callable[[], Awaitable[list[str]]]] = []
        self.rng = np.random.default_rng(settings.exploration_seed)  # exploration draws
        #: /v1/systemone: the difficulty scores of recent requests, which its tiers are cut from
        self.systemone_scores: deque[float] = deque(maxlen=SYSTEMONE_WINDOW)
        folders = settings.model_dirs if settings.model_dirs is not None else (settings.model_path.parent,)
        self.model_files = ModelFiles(tuple(Path(f) for f in folders), database_files(Path(settings.database_path)),
                                      settings.max_model_bytes)
        self._seen_stat: tuple[int, int] | None = None
        self._seen_query_stat: tuple[int, int] | None = None
        #: with a registry in the database (PostgreSQL), the served files follow its promotions
        self.follower: RegistryFollower | None = None
        if keeps_registry(self.storage):
            self.follower = RegistryFollower(self.storage, {}, on_change=self._promoted)
            if settings.require_candidate_model:
                self.follow("model", settings.model_path)
            if settings.query_router_path is not None:
                self.follow("query_router", self._query_router_file())
        if settings.require_candidate_model:
            self._try_load()
        else:
            self.not_ready_reason = ("this process serves no candidate model: start `tinydancer serve --model-path FILE` "
                                     "to score candidates")
        #: describes the router that routes queries here, for /info and /health/ready (the
        #: gateway replaces it with its own router's); None: none is served
        self.query_router_info: Callable[[], dict[str, Any]] | None = self._served_query_router_info
        if settings.query_router_path is not None:
            self.reload_query_router()

    def follow(self, kind: str, path: Path | None) -> None:
        """Serve ``path`` at the registry's current version of ``kind`` now and after each promotion
        (a no-op beside a SQLite log, whose registry is a folder that promotes over the file)."""
        if self.follower is None or path is None:
            return
        self.follower.paths[kind] = Path(path)
        try:
            self.follower.sync()
        except (TinyDancerError, OSError, *self.storage.errors) as exc:
            log.warning("could not read the registry's current %s (serving the local file): %s", kind, exc)

    def _promoted(self, kind: str, version: str) -> None:
        """The follower wrote a promoted file: the watcher reloads it; without a watcher, reload here."""
        if self.settings.watch_interval_s <= 0 and kind == "model" and self.router is not None:
            self.reload()
        elif self.settings.watch_interval_s <= 0 and kind == "query_router" and self.query_router is not None:
            self.reload_query_router()

    def new_writer(self) -> DecisionWriter:
        return DecisionWriter(self.storage, max_pending=self.settings.max_pending_rows, on_drop=self.metrics.log_dropped.inc)

    def storage_problem(self) -> str | None:
        """Why the decision log cannot be written right now, or None."""
        error = self.writer.error or self.storage.problem()
        return None if error is None else f"the decision log cannot be written ({error}); routing goes on, feedback is refused"

    def _try_load(self, data: bytes | None = None) -> None:
        s = self.settings
        try:
            router = Router(RouterConfig(model_path=s.model_path, confidence_threshold=s.confidence_threshold,
                                         max_uncertainty=s.max_uncertainty, enable_quantization=s.enable_quantization),
                            model_bytes=data)
        except TinyDancerError as exc:
            self.not_ready_reason = str(exc)
            if s.require_candidate_model:
                log.warning("not ready: %s", exc)
            return
        self._attach_breaker(router)
        self.router = router
        self._seen_stat = self._stat()
        self.metrics.model_info.labels(router.served.version).set(1)

    def _attach_breaker(self, router: Router) -> None:
        if router.breaker is not None:
            def on_change(state: BreakerState) -> None:
                self.metrics.breaker_state.set(STATE_CODE[state])
                if state is BreakerState.OPEN:
                    self.metrics.breaker_trips.inc()
            router.breaker.on_state_change = on_change

    def _stat(self, path: Path | None = None) -> tuple[int, int] | None:
        try:
            st = os.stat(path or self.settings.model_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _query_router_file(self) -> Path | None:
        path = self.settings.query_router_path
        return None if path is None else (path / ROUTER_FILE if path.is_dir() else path)

    def reload_query_router(self) -> QueryRouter:
        """(Re)load the query router file; a bad file raises and the old router keeps serving."""
        file = self._query_router_file()
        if file is None:
            raise TinyDancerError("no query router configured (--query-router DIR)")
        stat = self._stat(file)
        new = QueryRouter.load(file)
        s = self.settings
        try:  # the served operating point, from the serve flags; refused (naming the flag) if it does not fit
            point = new.operating_point(strong_share=s.query_strong_share, cost_weight=s.query_cost_weight,
                                        quality_bar=s.query_quality_bar)
        except TinyDancerError as exc:
            raise TinyDancerError(f"{file}: {exc} (the serve flags: --strong-share, --cost-weight, --quality-bar)") from None
        new.threshold, new.cost_weight, new.quality_bar = point
        old = self.query_router
        if old is not None and old.loaded_embedder is not None and old.embedder_id == new.embedder_id:
            new.embedder = old.loaded_embedder  # keep it: a fresh one would load MiniLM again
        self.query_embedder_problem = _embedder_problem(new)
        self.query_router = new
        self._seen_query_stat = stat
        return new

    def _served_query_router_info(self) -> dict[str, Any] | None:
        qr = self.query_router
        if qr is None:
            return None
        s = self.settings
        return router_summary(qr, self._query_router_file(), strong_share=s.query_strong_share)

    def serves(self) -> dict[str, Any]:
        """What this process serves, for /info and /health/ready: the query router (path, version,
        embedder, models, operating point) and the candidate model, each only where it is served."""
        out: dict[str, Any] = {"pid": os.getpid(), "started_at": self.started}
        info = None if self.query_router_info is None else self.query_router_info()
        if info is not None:
            out["query_router"] = info
        if self.router is not None:
            out["candidate_model"] = {"version": self.router.served.version, "path": self.router.served.path}
        return out

    def readiness_problem(self) -> str | None:
        """Why this service should not take traffic now (None: ready)."""
        if self.router is None and self.settings.require_candidate_model:
            return self.not_ready_reason
        return self.storage_problem() or self.query_embedder_problem or self.extra_problem()

    def extra_problem(self) -> str | None:
        """What a layer built on the service (the gateway) reports against readiness; None: nothing."""
        return None if self.readiness_check is None else self.readiness_check()

    def reload(self, path: str | None = None) -> ServedModel:
        """Reload (or first load); raises on a bad file and keeps the old model.

        A ``path`` from a client is read under the service's rules (:mod:`.model_files`) before
        anything else happens; without one, the configured model file is reloaded.
        """
        data = None
        if path is not None:
            try:
                target, data = self.model_files.read(path)
            except TinyDancerError:
                self.metrics.reloads.labels("failed").inc()
                raise
            path = str(target)
        if self.router is None:
            if path is not None:
                self.settings.model_path = Path(path)
            self._try_load(data)
            if self.router is None:
                self.metrics.reloads.labels("failed").inc()
                raise TinyDancerError(self.not_ready_reason)
            self.metrics.reloads.labels("ok").inc()
            return self.router.served
        old = self.router.served.version
        try:
            served = self.router.reload_model(path, data)
        except TinyDancerError:
            self.metrics.reloads.labels("failed").inc()
            raise
        if path is not None:
            self.settings.model_path = Path(path)
        self._seen_stat = self._stat()
        self.metrics.reloads.labels("ok").inc()
        self.metrics.model_info.labels(old).set(0)
        self.metrics.model_info.labels(served.version).set(1)
        return served

    async def watch(self) -> None:
        """Hot-reload when the model or query router file changes (e.g. a promoted retrain replaced it)."""
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            await self.check_files()

    async def check_files(self) -> list[str]:
        """One look at the watched files: reload each that changed since it was last read.

        Returns what happened, e.g. ``["model: reloaded"]`` or ``["query router: failed"]``.  A
        file that fails to load is remembered by its (mtime, size), so it is not retried until
        it changes again; the previous model keeps serving.
        """
        events = []
        serves_model = self.settings.require_candidate_model or self.router is not None
        stat = self._stat() if serves_model else None
        if stat is not None and stat != self._seen_stat:
            try:
                await asyncio.to_thread(self.reload)
                log.info("reloaded %s", self.settings.model_path)
                events.append("model: reloaded")
            except TinyDancerError as exc:
                self._seen_stat = stat  # do not retry the same broken file every second
                log.warning("model file changed but did not load: %s", exc)
                events.append("model: failed")
        query_file = self._query_router_file()
        stat = None if query_file is None else self._stat(query_file)
        if stat is not None and stat != self._seen_query_stat:
            try:
                await asyncio.to_thread(self.reload_query_router)
                self.metrics.reloads.labels("ok").inc()
                log.info("reloaded query router %s", query_file)
                events.append("query router: reloaded")
            except TinyDancerError as exc:
                self._seen_query_stat = stat
                self.metrics.reloads.labels("failed").inc()
                log.warning("query router file changed but did not load: %s", exc)
                events.append("query router: failed")
        for watcher in self.watchers:
            events += await watcher()
        return events


def _embedder_problem(router: QueryRouter) -> str | None:
    """Load the router's embedder now and embed one text, so a missing one is known at start (and
    the first request does not pay for loading it); the reason, or None when it works."""
    try:
        router.embedder.embed(["warm-up"])
    except (TinyDancerError, ImportError, OSError) as exc:
        return (f"the query router's embedder {router.embedder_id!r} cannot load ({exc}); text queries cannot be "
                "routed: install it with `make embed`, or send embeddings")
    return None


def router_summary(router: QueryRouter, path: Path | str | None, *, strong_share: float | None = None,
                   point: Any = None) -> dict[str, Any]:
    """A query router as /info and /health/ready show it: where it was read from, its version,
    embedder, models and the operating point it routes at now (``point``: the served one, when it
    is not the router's own)."""
    threshold, cost_weight, quality_bar = point if point is not None else (router.threshold, router.cost_weight,
                                                                           router.quality_bar)
    version = router_version(router)
    op: dict[str, Any] = ({"strong_share": strong_share, "threshold": threshold} if router.is_pair
                          else {"cost_weight": cost_weight, "quality_bar": quality_bar})
    return {"path": None if path is None else str(path), "version": version or None,
            "embedder": router.embedder_id, "models": list(router.models), "operating_point": op}


def router_version(router: QueryRouter) -> str:
    """A query router's version: the registry's, else when it was retrained or trained."""
    info = router.info or {}
    return str(router.model.extra_metadata.get("version") or info.get("retrained_at") or info.get("trained_at", ""))
