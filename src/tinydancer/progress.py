"""Progress bars for long work (training), shared by the command line and the demo."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .nn import TrainingMetrics

#: progress and errors go to stderr, so that --json output on stdout stays parseable
err_console = Console(stderr=True)


class EpochProgress:
    """A rich progress bar fed by the trainer's per-epoch callback (silent when quiet)."""

    def __init__(self, total: int, quiet: bool, label: str = "training") -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=err_console,
            disable=quiet,
        )
        self.task = self.progress.add_task(label, total=total, stats="")

    def __enter__(self) -> "EpochProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, m: TrainingMetrics) -> None:
        stats = f"loss {m.train_loss:.4f}"
        if math.isfinite(m.val_loss):
            stats += f"  val {m.val_loss:.4f}  val acc {m.val_accuracy:.3f}"
        self.progress.update(self.task, advance=1, stats=stats)


@contextmanager
def item_progress(label: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A bar over ``total`` items; the context gives the function to call with each batch's count."""
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=quiet) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
