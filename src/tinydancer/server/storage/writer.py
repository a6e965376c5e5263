"""Group commit of the decision log from the event loop (see :class:`DecisionWriter`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
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
    from the loop's thread only.  A database over the network (PostgreSQL) is the exception to
    "on the loop": its commits run on one writer thread, since a network round trip, or a lost
    connection, would stall every request (see :meth:`_commit_offloaded`).

    When storage fails (a full disk, say), rows are kept for the next commit to retry, up to
    ``max_pending``; past that, new rows are dropped and counted (``dropped``, and ``on_drop``):
    routing goes on, its log is what is lost.  :attr:`error` says what failed until a commit
    succeeds again.
    """

    #: seconds before a failed commit is retried
    retry_s = 0.5

    def __init__(self, storage: Storage, max_delay_s: float = 0.005, max_pending: int = 10_000,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.storage = storage
        #: a database over the network (``storage.remote``) is written from a thread of the writer's
        #: own, so that a slow or lost connection never stalls the event loop
        self._executor = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tinydancer-log")
                          if getattr(storage, "remote", False) else None)
        self._inflight: concurrent.futures.Future[BaseException | None] | None = None
        self._inflight_parts: tuple[list[tuple[Any, ...]], ...] = ([], [], [], [])
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
        return len(self._pending) + len(self._inflight_parts[0] if self._inflight is not None else ())

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
        if self._executor is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._commit_offloaded(loop)
                return
        parts = self._take()
        self._settle(parts, self._write(parts))

    def _take(self) -> tuple[list[tuple[Any, ...]], ...]:
        parts = (self._pending, self._calls, self._outcomes, self._prompts)
        self._pending, self._calls, self._outcomes, self._prompts = [], [], [], []
        return parts

    def _write(self, parts: tuple[list[tuple[Any, ...]], ...]) -> BaseException | None:
        """One transaction of the taken rows (on the loop, or on the writer thread); what failed, or None."""
        batch, calls, outcomes, prompts = parts
        try:
            if calls or outcomes or prompts:
                self.storage.insert_log(batch, calls, outcomes, prompts)
            else:
                self.storage.insert_decision_rows(batch)
        except Exception as exc:
            return exc
        return None

    def _settle(self, parts: tuple[list[tuple[Any, ...]], ...], exc: BaseException | None) -> None:
        """Account for a commit: clear the error, or keep the rows for a retry, or drop a bad batch."""
        batch, calls, outcomes, prompts = parts
        if exc is None:
            self.error = None
        elif isinstance(exc, getattr(self.storage, "transient_errors", (sqlite3.OperationalError,))):
            # disk full, locked, the database briefly gone: keep the rows, the next commit retries
            self._pending[:0] = batch
            self._calls[:0] = calls
            self._outcomes[:0] = outcomes
            self._prompts[:0] = prompts
            self.error = exc
            log.error("decision log commit failed, %d rows kept for retry: %s", len(batch), exc)
        else:  # a batch that can never be written: drop it rather than block all logging
            self.error = exc
            self.dropped += len(batch)
            if self.on_drop is not None:
                self.on_drop(len(batch))
            log.error("decision log commit failed, %d rows dropped: %s", len(batch), exc)

    # ------------------------------------------------------------------ a database over the network
    def _commit_offloaded(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the group to the writer thread: the loop never waits on the network.  One commit is
        in flight at a time; rows that arrive meanwhile go with the next.  While the database is
        known to be unreachable no attempt is made: the rows wait (up to ``max_pending``) and the
        timer looks again in ``retry_s``."""
        if self._inflight is not None:
            return  # its completion commits what arrived meanwhile
        problem = self.storage.problem()
        if problem is not None:
            self.error = StorageUnavailable(problem)
            self._timer = loop.call_later(self.retry_s, self._commit)
            return
        parts = self._take()
        assert self._executor is not None
        future = self._executor.submit(self._write, parts)
        self._inflight, self._inflight_parts = future, parts
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._written, f))

    def _written(self, future: concurrent.futures.Future[BaseException | None]) -> None:
        if future is not self._inflight:
            return  # close() settled it already
        self._inflight = None
        failure = future.result()
        self._settle(self._inflight_parts, failure)
        if (self._pending or self._calls) and self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self.retry_s if failure else self.max_delay_s, self._commit)

    def _drain(self) -> None:
        """Wait for the commit in flight (at shutdown) and account for it."""
        future = self._inflight
        if future is not None:
            self._inflight = None
            self._settle(self._inflight_parts, future.result())

    def flush(self) -> None:
        """Commit what is pending now; raise if the decision log cannot be written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._drain()
        parts = self._take()
        if parts[0] or parts[1]:
            self._settle(parts, self._write(parts))
        if self.error is not None:
            raise StorageUnavailable(f"decision log writer failed: {self.error}")

    async def aflush(self) -> None:
        """:meth:`flush` for a handler: with a database over the network, the loop keeps serving
        while the commit (or the wait for one in flight) runs on the writer thread."""
        if self._executor is None:
            self.flush()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _ in range(2):  # the commit in flight, then what waited behind it
            while self._inflight is not None:
                future = self._inflight
                await asyncio.wrap_future(future)
                if self._inflight is future:
                    self._written(future)
            if not (self._pending or self._calls):
                break
            self._commit(force=True)
            if self._inflight is None:
                break  # the database is known to be down: nothing was tried
        if self.error is not None:
            raise StorageUnavailable(f"decision log writer failed: {self.error}")

    def close(self) -> None:
        """Commit what is pending; later submits are an error."""
        try:
            self.flush()
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=True)
