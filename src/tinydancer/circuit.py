"""A circuit breaker around inference: closed → open after repeated failures → half-open probes.

closed     every call goes through; ``failure_threshold`` consecutive failures open the circuit.
open       calls are refused (the router answers with its safe fallback) until ``reset_timeout_s``
           has passed, then the breaker turns half-open.
half-open  at most ``half_open_max_probes`` calls go through; a success closes the circuit, a
           failure opens it again for another timeout.
Thread-safe; the clock can be injected for tests.
"""

from __future__ import annotations

import threading
import time
from enum import Enum
from typing import Any, Callable


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 30.0, half_open_max_probes: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or half_open_max_probes < 1 or reset_timeout_s < 0:
            raise ValueError("failure_threshold and half_open_max_probes must be >= 1, reset_timeout_s >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max_probes = half_open_max_probes
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self.trips = 0
        self.on_state_change: Callable[[BreakerState], None] | None = None

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._maybe_half_open()
            return self._state

    def is_closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_state_change is not None:
                self.on_state_change(state)

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._set(BreakerState.HALF_OPEN)
            self._probes = 0

    def allow(self) -> bool:
        """May a call go through now?  (In half-open state this reserves a probe.)"""
        if self._state is BreakerState.CLOSED:  # reading one attribute is atomic: no lock needed
            return True
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            self._maybe_half_open()
            if self._state is BreakerState.HALF_OPEN and self._probes < self.half_open_max_probes:
                self._probes += 1
                return True
            return False

    def record_success(self) -> None:
        if self._failures == 0 and self._state is BreakerState.CLOSED:
            return  # nothing to reset: skip the lock on the hot path
        with self._lock:
            self._failures = 0
            if self._state is BreakerState.HALF_OPEN:
                self._set(BreakerState.CLOSED)

    def release(self) -> None:
        """A call that was let through ended without a verdict on the protected side (its client
        left, the request itself was refused, no slot was free): in half-open state its probe is
        given back, so the next call probes.  Kept, it would hold the breaker half-open for good."""
        if self._state is not BreakerState.HALF_OPEN:
            return
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probes = max(0, self._probes - 1)

    def record_failure(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._open()
                return
            self._failures += 1
            if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self.trips += 1
        self._set(BreakerState.OPEN)

    def reset(self) -> None:
        with self._lock:
            self._failures = 0
            self._probes = 0
            self._set(BreakerState.CLOSED)

    def status(self) -> dict[str, Any]:
        with self._lock:
            self._maybe_half_open()
            retry = max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at)) if self._state is BreakerState.OPEN else 0.0
            return {
                "state": self._state.value,
                "consecutive_failures": self._failures,
                "failure_threshold": self.failure_threshold,
                "trips": self.trips,
                "reset_timeout_s": self.reset_timeout_s,
                "retry_in_s": round(retry, 3),
            }
