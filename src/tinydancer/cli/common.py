"""What the command groups share: the console, the one-red-line error handling, tables, and
the checks several commands make (a log that exists, a port that is free)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import TinyDancerError
from ..progress import err_console, item_progress

__all__ = ["console", "err_console", "friendly_errors", "print_or_json", "load_table", "embed_with_progress",
           "check_port_free", "existing_log", "dollars"]

console = Console()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's own errors into one red line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TinyDancerError as exc:
            # one line whatever the width (a log keeps a long path whole), and the message's own
            # brackets (a list of names, a path) printed as they are, not read as rich markup
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def print_or_json(values: dict[str, Any], as_json: bool, title: str) -> None:
    """One JSON object for scripts, or a two-column table for people."""
    if as_json:
        typer.echo(json.dumps(values))
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in values.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def load_table(path: Path, prices: Optional[Path]) -> Any:
    """A routing table from JSONL, with a price table for rows that carry no costs."""
    from ..llm.tables import RoutingTable, load_prices

    return RoutingTable.from_jsonl(path, load_prices(prices) if prices else None)


def embed_with_progress(data: Any, emb: Any, quiet: bool) -> Any:
    """The table embedded, with progress: embedding is most of a large table's training time."""
    with item_progress("embedding queries", len(data), quiet) as advance:
        return data.with_embeddings(emb, progress=advance)


def check_port_free(host: str, port: int) -> None:
    """Fail before the banner (and before uvicorn's Errno 98 traceback-like line) when the port is taken."""
    import socket

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise TinyDancerError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server there? "
                                  "pick another --port)") from None


def existing_log(where: str | Path) -> str | Path:
    """``where`` if it names a PostgreSQL log or an existing SQLite file: opening a misspelt path
    would create an empty log (and a registry folder beside it) and then report 'no data'."""
    if isinstance(where, str) and where.startswith(("postgres://", "postgresql://")):
        return where
    if not Path(where).is_file():
        raise TinyDancerError(f"no decision log at {where}: name the SQLite file `serve` or `gateway` writes "
                              "(--database-path), or a postgresql:// URL (--database-url)")
    return where


def dollars(per_call: float) -> str:
    """A cost in the command line's one unit, dollars per call; a small one per 1,000 calls too
    (a $0.0003 call printed to four decimals read as $0.0003 or, rounded, as $0.0000)."""
    def amount(x: float) -> str:  # four significant digits, never in exponent notation
        return np.format_float_positional(x, precision=4, fractional=False, trim="-")

    text = f"${amount(per_call)} a call"
    return text if per_call == 0 or abs(per_call) >= 0.01 else f"{text} (${amount(per_call * 1000)} per 1,000 calls)"
