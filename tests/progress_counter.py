"""A helper for threaded tests: wait until workers have done new work, instead of sleeping."""

from __future__ import annotations

import threading


class Progress:
    """Counts each worker's finished calls.

    ``wait_past(marks)`` blocks until every worker has finished a call it *started* after
    ``marks = progress.marks()`` was taken (two more completions: the first may have been under
    way already).  The timeout only guards against a hang; it never decides a result.
    """

    def __init__(self, workers: int) -> None:
        self._done = [0] * workers
        self._cond = threading.Condition()

    def tick(self, worker: int) -> None:
        with self._cond:
            self._done[worker] += 1
            self._cond.notify_all()

    def marks(self) -> list[int]:
        with self._cond:
            return list(self._done)

    def wait_past(self, marks: list[int], timeout: float = 60.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: all(d > m + 1 for d, m in zip(self._done, marks)), timeout=timeout)
