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
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from ._lines import LineProgress, _duration  # noqa: F401  (re-exported: the plain lines live below the layers)
from .nn import TrainingMetrics

#: progress and errors go to stderr, so that --json output on stdout stays parseable
err_console = Console(stderr=True)


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
