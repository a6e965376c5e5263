"""``learning: {every: 1h, min_new_outcomes: 200}``: the gateway retrains its own router.

Every ``every`` the service's watcher looks at the log; when at least ``min_new_outcomes``
outcomes arrived since this process started or last retrained, it runs
:func:`~tinydancer.server.learning.retrain_query_router` in a thread (the event loop keeps
serving): exploration's outcomes weighed by inverse propensity, the new router promoted only
past the off-policy gate (server/offpolicy.py), the evidence kept in the registry.  A promoted
router replaces the served file and the gateway hot-reloads it (with PostgreSQL, each replica's
registry follower writes it).

Replicas: with PostgreSQL a retrain runs under a session advisory lock of the schema
(``PostgresStorage.exclusive("learning")``): a replica that finds it held skips its turn, so one
replica retrains at a time.  Promotion stays a compare-and-set under the registry's own lock
(``PROMOTION_LOCK``): a retrain that started from a version another has since replaced keeps its
version, unserved, in the registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import TinyDancerError, ValidationError
from ..llm import ROUTER_FILE
from ..server.learning import RetrainConfig, RetrainReport, retrain_query_router
from ..server.registry import registry_for
from .config import GatewayConfig, LearningSpec

__all__ = ["ScheduledLearning"]

log = logging.getLogger("tinydancer.gateway")


class ScheduledLearning:
    def __init__(self, config: GatewayConfig, spec: LearningSpec, storage: Any) -> None:
        if config.router is None:
            raise ValidationError("learning: retraining replaces the served router file, and the packaged one is part of "
                                  "the installation: copy it to a folder of yours and name that in router: (cp -r "
                                  "\"$(python -c 'import tinydancer.gateway as g; print(g.default_router_path())')\" "
                                  "routers/mine)")
        self.config = config
        self.spec = spec
        self.storage = storage
        path = Path(config.router)
        self.router_file = path / ROUTER_FILE if path.is_dir() else path
        self.registry = registry_for(storage, spec.registry, "query_router")
        self.last_run = time.monotonic()
        self.last_count = self._outcomes()
        self.running: asyncio.Task[Any] | None = None
        #: the last retrain's report (or why it did not run), for /info and the tests
        self.last: dict[str, Any] = {"state": "waiting"}

    def _outcomes(self) -> int:
        try:
            return int(self.storage.count("outcomes"))
        except Exception as exc:  # the database is away: counted again next time
            log.warning("scheduled learning: cannot count outcomes (%s)", exc)
            return self.last_count if hasattr(self, "last_count") else 0

    def retrain_config(self) -> RetrainConfig:
        return RetrainConfig(min_samples=min(200, self.spec.min_new_outcomes), strong_share=
                             self.config.operating_point.strong_share, promoted_by="tinydancer gateway (learning)")

    def _retrain(self) -> RetrainReport | None:
        """The retrain, under the database's lock where it has one (None: another replica holds it)."""
        exclusive = getattr(self.storage, "exclusive", None)
        if exclusive is None:
            return retrain_query_router(self.storage, self.router_file, self.registry, self.retrain_config())
        with exclusive("learning") as got:
            if not got:
                return None
            return retrain_query_router(self.storage, self.router_file, self.registry, self.retrain_config())

    async def tick(self) -> list[str]:
        """The service's watcher: start a retrain when it is due and enough outcomes arrived."""
        if self.running is not None and not self.running.done():
            return []
        if time.monotonic() - self.last_run < self.spec.every:
            return []
        self.running = asyncio.ensure_future(self.run())
        return ["learning: started"]

    async def run(self) -> dict[str, Any]:
        """Retrain now if ``min_new_outcomes`` arrived since the last run (what tick starts)."""
        self.last_run = time.monotonic()
        count = await asyncio.to_thread(self._outcomes)
        new = count - self.last_count
        if new < self.spec.min_new_outcomes:
            self.last = {"state": "skipped", "new_outcomes": new, "needed": self.spec.min_new_outcomes}
            return self.last
        try:
            report = await asyncio.to_thread(self._retrain)
        except TinyDancerError as exc:
            log.warning("scheduled learning: %s", exc)
            self.last = {"state": "failed", "error": str(exc), "new_outcomes": new}
            return self.last
        if report is None:
            self.last = {"state": "skipped", "new_outcomes": new, "why": "another replica is retraining"}
            return self.last
        self.last_count = count
        log.info("scheduled learning: %s: %s", report.version, report.reason)
        self.last = {"state": "promoted" if report.promoted else "kept", "new_outcomes": new, "report": asdict(report)}
        return self.last
