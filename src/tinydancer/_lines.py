"""Progress as plain lines on stderr, with the rate and the time left: the part of
:mod:`tinydancer.progress` that needs nothing but the standard library, so that the layers below
the surfaces (the static embedder's once-per-install table build) can say what they are doing
without importing the command line's rich bars.  :mod:`tinydancer.progress` re-exports it."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _duration(seconds: float) -> str:
    """45s, 3m05s, 1h02m: short enough for a progress line."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress:
    """Progress as plain lines: one at every ``steps``-th of ``total`` and at least every
    ``every_s`` seconds (checked as work is reported), each with the rate and the time left.

    ``stream`` is where lines go (default: stderr, looked up when a line is written, so a test's
    captured stderr sees them); ``clock`` is injectable for tests."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, *, unit: str = "",
                 steps: int = 10, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.stream, self.steps, self.every_s, self.clock = stream, steps, every_s, clock
        self.done = 0
        self.started = self.last = clock()
        self.step = 0  # the last 1/steps mark a line was written at
        self.written_at_done = -1

    def advance(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` more items done; write a line if a 10 % mark was passed or 30 s went by."""
        self.done += n
        now = self.clock()
        step = self.done * self.steps // self.total if self.total else 0
        if step > self.step or now - self.last >= self.every_s:
            self.step = max(step, self.step)
            self._write(now, note)

    def finish(self, note: str = "") -> None:
        """The closing line, with the total time (unless the last line was written at the same count)."""
        if self.written_at_done != self.done:
            self._write(self.clock(), note, final=True)

    def _write(self, now: float, note: str, final: bool = False) -> None:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        unit = f" {self.unit}" if self.unit else ""
        line = f"{self.label}: {self.done:,}/{self.total:,}{unit}"
        if self.total:
            line += f" ({self.done / self.total:.0%})"
        line += f", {rate:,.1f}/s" if rate < 10 else f", {rate:,.0f}/s"
        left = self.total - self.done
        if left <= 0 or final:  # work can end early (early stopping)
            line += f", done in {_duration(elapsed)}"
        elif rate > 0:
            line += f", {_duration(left / rate)} left"
        if note:
            line += f"; {note}"
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()
        self.last, self.written_at_done = now, self.done
