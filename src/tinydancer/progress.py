"""Progress for long work (embedding, training, labelling), shared by the command line and the demo.

On a terminal: rich bars, redrawn in place, with the rate and the time left.  Anywhere else (a log file, a pipe, CI, ``nohup``):
plain lines on stderr, at every 10 % and at least every 30 s, each with the rate and the time
left, because a bar redrawn in place is unreadable in a file and rich draws nothing off a terminal
until the work is done (a 15-minute ``router train`` printed nothing for 15 minutes).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from .nn import TrainingMetrics

#: progress and errors go to stderr, so that --json output on stdout stays parseable
err_console = Console(stderr=True)


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
        stream = self.stream if self.stream is not None else err_console.file
        stream.write(line + "\n")
        stream.flush()
        self.last, self.written_at_done = now, self.done


def _on_terminal() -> bool:
    return err_console.is_terminal


class _RateColumn(ProgressColumn):
    """Items a second, as the plain lines print it (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("-/s", style="progress.data.speed")
        return Text(f"{speed:,.1f}/s" if speed < 10 else f"{speed:,.0f}/s", style="progress.data.speed")


def _bar(label: str, console: Console, clock: Callable[[], float] | None, *extra: ProgressColumn) -> Progress:
    """A terminal bar: done/total, the rate, the time spent and the time left."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *extra, _RateColumn(),
                    TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                    **({"get_time": clock} if clock is not None else {}))


class EpochProgress:
    """Training progress fed by the trainer's per-epoch callback: a rich bar on a terminal, plain
    lines elsewhere (see :class:`LineProgress`), nothing when quiet (not even rich's closing
    newline: no bar is made)."""

    def __init__(self, total: int, quiet: bool, label: str = "training") -> None:
        self.quiet = quiet
        terminal = not quiet and _on_terminal()
        self.lines = None if quiet or terminal else LineProgress(label, total, unit="epochs")
        self.progress = None
        if terminal:
            self.progress = _bar(label, err_console, None, TextColumn("{task.fields[stats]}"))
            self.task = self.progress.add_task(label, total=total, stats="")
        self.stats = ""

    def __enter__(self) -> "EpochProgress":
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        if self.lines is not None and exc[0] is None:
            self.lines.finish(self.stats)  # early stopping ends before the last epoch

    def __call__(self, m: TrainingMetrics) -> None:
        stats = f"loss {m.train_loss:.4f}"
        if math.isfinite(m.val_loss):
            stats += f"  val {m.val_loss:.4f}  val acc {m.val_accuracy:.3f}"
        self.stats = stats
        if self.progress is not None:
            self.progress.update(self.task, advance=1, stats=stats)
        if self.lines is not None:
            self.lines.advance(1, stats)


@contextmanager
def item_progress(label: str, total: int, quiet: bool, console: Console | None = None,
                  clock: Callable[[], float] | None = None) -> Iterator[Callable[[int], None]]:
    """Progress over ``total`` items (a rich bar with the rate and the time left on a terminal, plain
    lines with both elsewhere, nothing when quiet); the context gives the function to call with each
    batch's count.  ``console`` (default: stderr's) and ``clock`` are for tests."""
    console = console or err_console
    if quiet:
        yield lambda _n: None
    elif not console.is_terminal:
        lines = LineProgress(label, total, None if console is err_console else console.file, clock=clock or time.monotonic)
        yield lines.advance
        lines.finish()
    else:
        with _bar(label, console, clock) as progress:
            task = progress.add_task(label, total=total)
            yield lambda n: progress.advance(task, n)
