"""Group commit of the decision log from the event loop (see :class:`DecisionWriter`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from typing import Any, Callable, NamedTuple, Sequence

from ...errors import TinyDancerError
from .base import Storage, StorageUnavailable, clean_log

log = logging.getLogger("tinydancer.storage")

#: the rows of one commit: decisions, calls, outcomes, prompts
Parts = tuple[list[tuple[Any, ...]], ...]


class _Written(NamedTuple):
    """What a commit did: ``failure`` (the database failed, ``retry`` waits for the next commit),
    and the rows refused alone because no database could store them (``refused``: why)."""

    failure: BaseException | None
    retry: Parts
    refused: list[str]


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
    succeeds again; a failed commit is retried every ``retry_s`` on its own, not only when the
    next request is logged.

    One bad row never fails the rows committed with it: every row is cleaned before it joins a
    group (:func:`~.base.clean_row`: an impossible count becomes NULL, a row missing a required
    value is refused alone), and a group the database still refuses for its data (a duplicate
    request id, say) is written again row by row, so only the row at fault is lost.  Refused rows
    are counted in ``dropped`` and logged; they are not a storage failure, so :attr:`error`, and
    readiness, are not touched.
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
        self._inflight: concurrent.futures.Future[_Written] | None = None
        self._inflight_parts: Parts = ([], [], [], [])
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
        (rows, calls, outcomes, prompts), refused = clean_log(rows, calls, outcomes, prompts)
        if refused:
            self._refuse(refused)
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

    def _refuse(self, reasons: list[str]) -> None:
        """Count and log rows no database could store (each refused alone)."""
        self.dropped += len(reasons)
        if self.on_drop is not None:
            self.on_drop(len(reasons))
        log.error("decision log: %d row(s) refused, the rest written: %s", len(reasons), "; ".join(reasons[:5]))

    def _has_rows(self) -> bool:
        return bool(self._pending or self._calls or self._outcomes or self._prompts)

    def _commit(self, force: bool = False) -> None:
        self._timer = None
        if not self._has_rows():
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
        self._settle(self._write(self._take()))

    def _take(self) -> Parts:
        parts = (self._pending, self._calls, self._outcomes, self._prompts)
        self._pending, self._calls, self._outcomes, self._prompts = [], [], [], []
        return parts

    def _insert(self, parts: Parts) -> None:
        batch, calls, outcomes, prompts = parts
        if calls or outcomes or prompts:
            self.storage.insert_log(batch, calls, outcomes, prompts)
        else:
            self.storage.insert_decision_rows(batch)

    def _transient(self, exc: BaseException) -> bool:
        return isinstance(exc, getattr(self.storage, "transient_errors", (sqlite3.OperationalError,)))

    def _write(self, parts: Parts) -> _Written:
        """One transaction of the taken rows (on the loop, or on the writer thread).  When the
        database refuses the group for its data, the rows are written one by one: only those it
        refuses alone are lost."""
        try:
            self._insert(parts)
        except Exception as exc:
            if self._transient(exc):
                return _Written(exc, parts, [])
            return self._write_singly(parts, exc)
        return _Written(None, ([], [], [], []), [])

    def _write_singly(self, parts: Parts, group_error: BaseException) -> _Written:
        log.warning("decision log: a group of %d rows was refused (%s); writing them one by one",
                    sum(map(len, parts)), str(group_error).strip()[:200])
        refused: list[str] = []
        for i, rows in enumerate(parts):
            for j, row in enumerate(rows):
                single: Parts = tuple([row] if k == i else [] for k in range(4))
                try:
                    self._insert(single)
                except Exception as exc:
                    if self._transient(exc):  # the database itself failed meanwhile: the rest waits
                        retry = tuple(rows[j:] if k == i else (p if k > i else []) for k, p in enumerate(parts))
                        return _Written(exc, retry, refused)
                    refused.append(f"{str(row[0])[:64]!r}: {str(exc).strip()[:200]}")
        return _Written(None, ([], [], [], []), refused)

    def _settle(self, written: _Written) -> None:
        """Account for a commit: clear the error, or keep the rows for a retry; count refused rows."""
        if written.refused:
            self._refuse(written.refused)
        if written.failure is None:
            self.error = None
            return
        # disk full, locked, the database briefly gone: keep the rows, a retry comes in retry_s
        for mine, kept in zip((self._pending, self._calls, self._outcomes, self._prompts), written.retry):
            mine[:0] = kept
        self.error = written.failure
        log.error("decision log commit failed, %d rows kept for retry: %s", len(written.retry[0]), written.failure)
        if self._executor is None and self._timer is None and not self._closed:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.retry_s, self._commit)
            except RuntimeError:
                pass  # outside a loop: the next submit or flush retries

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
        future.add_done_callback(lambda f: self._hand_back(loop, f))

    def _hand_back(self, loop: asyncio.AbstractEventLoop, future: concurrent.futures.Future[_Written]) -> None:
        try:
            loop.call_soon_threadsafe(self._written, future)
        except RuntimeError:  # the loop is gone (a commit cut at shutdown): nobody waits for it
            pass

    def _written(self, future: concurrent.futures.Future[_Written]) -> None:
        if future is not self._inflight:
            return  # close() settled it already
        self._inflight = None
        written = future.result()
        self._settle(written)
        if self._has_rows() and self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self.retry_s if written.failure else self.max_delay_s,
                                                                self._commit)

    def _drain(self) -> BaseException | None:
        """Wait for the commit in flight (at shutdown) and account for it; what failed, or None.  A
        database over the network is given its ``timeout_s``, then the commit is left to its own
        deadline (its rows count as pending) so that a silent database cannot hold a shutdown."""
        future = self._inflight
        if future is None:
            return None
        try:
            written = future.result(timeout=getattr(self.storage, "timeout_s", None))
        except concurrent.futures.TimeoutError:
            self.error = StorageUnavailable("the database did not confirm the last commit in time")
            return self.error
        self._inflight = None
        self._settle(written)
        return written.failure

    def flush(self) -> None:
        """Commit what is pending now; raise if the decision log cannot be written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # a database over the network known to be unreachable, or that just failed the commit in
        # flight, is not tried again now (at shutdown, say): what waits counts as pending
        down = self.storage.problem() if self._executor is not None else None
        failed = self._drain() if down is None else None
        if self._executor is not None and (down is not None or failed is not None):
            if self._has_rows() or self._inflight is not None:
                self.error = StorageUnavailable(down) if down is not None else failed
        elif self._has_rows():
            self._settle(self._write(self._take()))
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
            if not self._has_rows():
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
                self._executor.shutdown(wait=self._inflight is None)
