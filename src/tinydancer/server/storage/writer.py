"""Group commit of the decision log from the event loop (see :class:`DecisionWriter`)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any, Callable, Sequence

from ...errors import TinyDancerError
from .base import Storage, StorageUnavailable

log = logging.getLogger("tinydancer.storage")


class DecisionWriter:
    """Group commit of decision logs, from the event loop that serves the requests.

    ``submit`` appends a request's row and returns; the first row of a group arms a timer, and
    ``max_delay_s`` later one transaction commits the whole group.  The commit runs on the loop
    thread, not on a thread of its own: a writer thread has to win the GIL back for every row it
    binds, and on 2 cores those handoffs cost more than the inserts themselves.  (The storage's
    checkpoints, which fsync, do run on a background thread: the loop never waits for the disk.)
    :meth:`flush` commits what is pending at once; feedback calls it before looking a request up.
    A crash can lose at most the last ``max_delay_s`` of decision logs, never an acknowledged
    outcome.  Outside a running event loop every submit commits at once.  Not thread-safe: call it
    from the loop's thread only.

    When storage fails (a full disk, say), rows are kept for the next commit to retry, up to
    ``max_pending``; past that, new rows are dropped and counted (``dropped``, and ``on_drop``):
    routing goes on, its log is what is lost.  :attr:`error` says what failed until a commit
    succeeds again.
    """

    def __init__(self, storage: Storage, max_delay_s: float = 0.005, max_pending: int = 10_000,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.storage = storage
        self.max_delay_s = max_delay_s
        self.max_pending = max_pending
        self.on_drop = on_drop
        self.dropped = 0
        self._pending: list[tuple[Any, ...]] = []
        #: the gateway's call rows and automatic outcomes, committed with the decisions
        self._calls: list[tuple[Any, ...]] = []
        self._outcomes: list[tuple[Any, ...]] = []
        self._prompts: list[tuple[Any, ...]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.error: BaseException | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, rows: Sequence[tuple[Any, ...]], calls: Sequence[tuple[Any, ...]] = (),
               outcomes: Sequence[tuple[Any, ...]] = (), prompts: Sequence[tuple[Any, ...]] = ()) -> None:
        """Queue decision rows (with, for a gateway call, its call rows, failure outcomes and prompt)."""
        if self._closed:
            raise TinyDancerError("the decision writer is closed")
        if len(self._pending) + len(rows) > self.max_pending:
            self._commit(force=True)  # storage may be back: write what waits before giving up on these
            if len(self._pending) + len(rows) > self.max_pending:
                self.dropped += len(rows)
                if self.on_drop is not None:
                    self.on_drop(len(rows))
                return
        self._pending.extend(rows)
        self._calls.extend(calls)
        self._outcomes.extend(outcomes)
        self._prompts.extend(prompts)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._commit(force=True)
                return
            self._timer = loop.call_later(self.max_delay_s, self._commit)

    def _commit(self, force: bool = False) -> None:
        self._timer = None
        if not self._pending and not self._calls:
            return
        checkpointing = getattr(self.storage, "checkpointing", None)
        if not force and checkpointing is not None and checkpointing.is_set():
            # let the background checkpoint finish undisturbed (see SQLiteStorage); rows wait a little
            self._timer = asyncio.get_running_loop().call_later(self.max_delay_s, self._commit)
            return
        batch, self._pending = self._pending, []
        calls, outcomes, prompts = self._calls, self._outcomes, self._prompts
        self._calls, self._outcomes, self._prompts = [], [], []
        try:
            if calls or outcomes or prompts:
                self.storage.insert_log(batch, calls, outcomes, prompts)
            else:
                self.storage.insert_decision_rows(batch)
            self.error = None
        except getattr(self.storage, "transient_errors", (sqlite3.OperationalError,)) as exc:
            # disk full, locked, the database briefly gone: keep the rows, the next commit retries
            self._pending[:0] = batch
            self._calls[:0] = calls
            self._outcomes[:0] = outcomes
            self._prompts[:0] = prompts
            self.error = exc
            log.error("decision log commit failed, %d rows kept for retry: %s", len(batch), exc)
        except Exception as exc:  # a batch that can never be written: drop it rather than block all logging
            self.error = exc
            self.dropped += len(batch)
            if self.on_drop is not None:
                self.on_drop(len(batch))
            log.error("decision log commit failed, %d rows dropped: %s", len(batch), exc)

    def flush(self) -> None:
        """Commit what is pending now; raise if the decision log cannot be written."""
        if self._timer is not None:
            self._timer.cancel()
        self._commit(force=True)
        if self.error is not None:
            raise StorageUnavailable(f"decision log writer failed: {self.error}")

    def close(self) -> None:
        """Commit what is pending; later submits are an error."""
        try:
            self.flush()
        finally:
            self._closed = True
