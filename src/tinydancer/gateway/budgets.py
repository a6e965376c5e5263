"""Spend per client key, and the daily budgets that cap it.

Each call is made with a client key that has a name (:mod:`tinydancer.server.client_keys`); the
log stores the name with every upstream attempt (``calls.key_name``), never the key.  What each
name spent today (UTC) is kept in memory, raised by each served call's cost, and rebuilt from the
log at start-up (the sum of today's known costs per name), so a restart does not reset it.

A budget (``key_budgets`` in gateway.yaml: dollars per UTC day, ``"*"`` for every key not named
there but the admin token, ``admin``) is checked before the upstream is called: a call whose
estimate (:func:`estimate_cost` at the first upstream of its plan) would take the key past its
budget, counting what the key's calls in flight are estimated at, gets 429 with the budget, what
is spent and when it resets.  A call that comes back without usage is counted at its estimate (the
log keeps its cost unknown, so a restart forgets it: budgets are a brake, not an invoice); a
stream cut short without usage (the client left, the upstream broke off) is not counted.

Replicas sharing one PostgreSQL log see each other's spend: every ``refresh_s`` each re-reads
today's spend per name from the log (off the event loop) and adds what it served itself since
that read began.  Between reads, a key may overspend by what the other replicas served in the
meantime; a call of ours still in the writer's queue at a read is missed until the next one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..errors import ValidationError
from ..server.client_keys import ADMIN_NAME
from .config import UpstreamConfig
from .selection import estimate_cost, message_chars

__all__ = ["BudgetExceeded", "KeySpend", "call_cost", "call_estimate", "day_start"]

log = logging.getLogger("tinydancer.gateway")

DAY_S = 86400.0


def day_start(now: float) -> float:
    """The start of ``now``'s UTC day (a Unix time)."""
    return math.floor(now / DAY_S) * DAY_S


def call_estimate(body: dict[str, Any], up: UpstreamConfig) -> float:
    """What a call may cost at ``up`` before it is made: every message's text counts (a long
    conversation is paid for in full), the completion at max_tokens (see :func:`estimate_cost`)."""
    return estimate_cost(body, message_chars(body), up.input_per_million, up.output_per_million)


class BudgetExceeded(Exception):
    """A call that would take its key past its daily budget (answered 429 with ``retry_after_s``)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def call_cost(usage_cost: float | None, body: dict[str, Any], up: UpstreamConfig) -> tuple[float, str]:
    """What a served call cost: from the upstream's usage when it reported one, else the estimate."""
    if usage_cost is not None:
        return usage_cost, "usage"
    return call_estimate(body, up), "estimate"


class KeySpend:
    """Today's spend per key name, the estimates of calls in flight, and the budgets."""

    def __init__(self, budgets: dict[str, float], key_names: tuple[str, ...] | None, registry: CollectorRegistry,
                 hold_s: float = 3600.0, refresh_s: float | None = None, clock: Any = time.time) -> None:
        if budgets and not key_names:
            raise ValidationError("key_budgets needs client keys with names: set TINY_DANCER_API_KEYS_FILE (name:key "
                                  "lines) or TINY_DANCER_API_KEYS")
        unknown = sorted(set(budgets) - set(key_names or ()) - {"*", ADMIN_NAME})
        if unknown:
            raise ValidationError(f"key_budgets names {', '.join(unknown)}, which no client key is called: name keys "
                                  "as name:key in TINY_DANCER_API_KEYS_FILE (or TINY_DANCER_API_KEYS)")
        self.budgets = dict(budgets)
        self.key_names = tuple(key_names or ())
        self.clock = clock
        #: a hold older than this belongs to a call that ended without settling (it cannot be in flight)
        self.hold_s = hold_s
        self.day = day_start(clock())
        self.spent: dict[str, float] = {}
        #: re-read the log this often (shared logs; None: never); what we served since the read began
        self.refresh_s = refresh_s
        self._next_refresh = clock() + (refresh_s or 0.0)
        self._since_read: dict[str, float] = {}
        #: request id -> (key name, estimate, when admitted) of calls admitted and not yet settled, oldest first
        self.in_flight: dict[str, tuple[str, float, float]] = {}
        self._held: dict[str, float] = {}
        self.total = Counter("tiny_dancer_gateway_key_spend_dollars", "Dollars spent per client key name (served calls: "
                             "usage x prices, else the estimate)", ["key"], registry=registry)
        self.today = Gauge("tiny_dancer_gateway_key_spend_today_dollars", "Dollars spent per client key name this UTC "
                           "day (what budgets are checked against)", ["key"], registry=registry)
        #: each name's (total, today) metric children: ``labels()`` costs ~5 µs a call, looked up once here
        self._children: dict[str, tuple[Any, Any]] = {}
        #: calls refused today per key name, by this process (what the dashboard shows beside the budget)
        self.refused_today: dict[str, int] = {}
        self.refused = Counter("tiny_dancer_gateway_budget_refusals", "Calls refused (429) for passing their key's "
                               "daily budget", ["key"], registry=registry)

    def budget_of(self, name: str | None) -> float | None:
        """The key's budget: its own, else ``"*"``'s (which the admin token, the operator's, is not held to)."""
        if name is None:
            return None
        return self.budgets.get(name, None if name == ADMIN_NAME else self.budgets.get("*"))

    def load(self, storage: Any) -> None:
        """Today's spend per key from the log (at start-up): what was spent before a restart still counts."""
        self._roll()
        try:
            found = storage.spend_by_key(self.day)
        except Exception as exc:  # a database down at start-up: say what that means, and serve on
            log.error("today's spend per client key could not be read from the log (%s): budgets count from now", exc)
            return
        for name, dollars in found.items():
            self.spent[name] = self.spent.get(name, 0.0) + dollars
            self._metrics(name)[1].set(self.spent[name])

    async def refresh(self, storage: Any) -> list[str]:
        """A watcher (run every watch interval): every ``refresh_s``, today's spend from the shared log
        plus ours since the read began, so that other replicas' spend counts here too."""
        now = self.clock()
        if self.refresh_s is None or not self.budgets or now < self._next_refresh:
            return []
        self._next_refresh = now + self.refresh_s
        self._roll()
        day, before, self._since_read = self.day, self._since_read, {}
        try:
            found = await asyncio.to_thread(storage.spend_by_key, day)
        except Exception as exc:  # the log is unreachable for now: keep counting locally
            for name, dollars in before.items():
                self._since_read[name] = self._since_read.get(name, 0.0) + dollars
            log.warning("today's spend per client key could not be re-read from the log (%s)", exc)
            return []
        if day != self.day:  # midnight passed during the read: it is about yesterday
            return []
        for name in set(found) | set(self.spent):
            self.spent[name] = found.get(name, 0.0) + self._since_read.get(name, 0.0)
            self._metrics(name)[1].set(self.spent[name])
        return []

    def _roll(self) -> None:
        """A new UTC day starts every key from zero."""
        day = day_start(self.clock())
        if day != self.day:
            self.day = day
            for name in self.spent:
                self._metrics(name)[1].set(0.0)
            self.spent.clear()
            self._since_read.clear()
            self.refused_today.clear()

    def check(self, name: str | None, estimate: float = 0.0) -> None:
        """Raise :class:`BudgetExceeded` if ``estimate`` more would take the key past its budget."""
        budget = self.budget_of(name)
        if budget is None:
            return
        assert name is not None
        self._roll()
        spent = self.spent.get(name, 0.0)
        held = self._held.get(name, 0.0)
        if spent + held + estimate > budget or (estimate == 0.0 and spent >= budget):
            self.refused.labels(name).inc()
            self.refused_today[name] = self.refused_today.get(name, 0) + 1
            raise BudgetExceeded(self._message(name, budget, spent, held, estimate), self._retry_after())

    def admit(self, request_id: str, name: str | None, estimate: float) -> None:
        """Check the budget and hold ``estimate`` against the key until the call settles."""
        if self.budget_of(name) is None:
            return
        assert name is not None
        now = self.clock()
        while self.in_flight:  # holds of calls that ended without settling (none should) do not pile up
            oldest = next(iter(self.in_flight))
            if self.in_flight[oldest][2] > now - self.hold_s:
                break
            self._release(oldest)
        self.check(name, estimate)
        self.in_flight[request_id] = (name, estimate, now)
        self._held[name] = self._held.get(name, 0.0) + estimate

    def _release(self, request_id: str) -> None:
        held = self.in_flight.pop(request_id, None)
        if held is not None:
            name, estimate, _ = held
            self._held[name] = max(self._held.get(name, 0.0) - estimate, 0.0)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.day + DAY_S - self.clock()))

    def _message(self, name: str, budget: float, spent: float, held: float, estimate: float) -> str:
        resets = datetime.fromtimestamp(self.day + DAY_S, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        wait = self._retry_after()
        flight = f" (and ${held:.6f} is held for its calls in flight)" if held > 0 else ""
        this = (f"; this call, estimated at ${estimate:.6f}, would pass it" if estimate > 0 else
                ", which uses it up")
        return (f"the client key {name!r} has spent ${spent:.6f} of its daily budget of ${budget:g}{flight}{this}. "
                f"The budget resets at {resets} (in {wait // 3600} h {wait % 3600 // 60} min); lower max_tokens, or ask "
                "the operator to raise key_budgets")

    def status(self) -> dict[str, Any]:
        """GET /admin/keys: each key's spend today, budget, the estimates held for its calls in flight and
        the calls refused today (by this process: a restart or another replica counts its own)."""
        self._roll()
        names = list(dict.fromkeys([*self.key_names, *self.spent]))
        resets = datetime.fromtimestamp(self.day + DAY_S, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"resets_at": resets, "keys": {n: {"spent_today": self.spent.get(n, 0.0), "budget": self.budget_of(n),
                                                  "held": self._held.get(n, 0.0), "refused": self.refused_today.get(n, 0)}
                                              for n in names}}

    def settle(self, request_id: str, name: str | None, cost: tuple[float, str] | None) -> None:
        """The call ended: release its hold and count what it cost (None: nothing to count)."""
        self._release(request_id)
        if name is None or cost is None or cost[0] <= 0.0:
            return
        self._roll()
        self.spent[name] = spent = self.spent.get(name, 0.0) + cost[0]
        if self.refresh_s is not None:
            self._since_read[name] = self._since_read.get(name, 0.0) + cost[0]
        total, today = self._metrics(name)
        total.inc(cost[0])
        today.set(spent)

    def _metrics(self, name: str) -> tuple[Any, Any]:
        children = self._children.get(name)
        if children is None:
            children = self._children[name] = (self.total.labels(name), self.today.labels(name))
        return children
