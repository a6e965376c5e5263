"""``tinydancer storage copy``: move a decision log (and a registry folder) between backends."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import TinyDancerError
from ..progress import item_progress
from .common import console, existing_log, friendly_errors

__all__ = ["storage_app"]

storage_app = typer.Typer(help="The decision log's storage.", no_args_is_help=True,
                           rich_markup_mode="markdown")


@storage_app.command("copy")
@friendly_errors
def storage_copy(
    source: str = typer.Option(..., "--from", help="The log to copy: a SQLite file (or a postgresql:// URL)."),
    target: str = typer.Option(..., "--to", help="Where to: a postgresql:// URL (or a SQLite file)."),
    registry: Optional[Path] = typer.Option(None, help="A registry folder (models/registry) to move into the "
                                                       "PostgreSQL target too: its versions become rows."),
    registry_kind: str = typer.Option("model", help="What that registry holds: model (candidate scoring) or "
                                                    "query_router."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Copy a decision log, every table, into another backend (SQLite to PostgreSQL, say), and a
    registry folder with it (--registry).

    Rows and versions the target already has are kept, so an interrupted copy can simply be run
    again."""
    from ..server.registry import DatabaseRegistry, ModelRegistry, import_folder
    from ..server.storage import copy_log, open_storage
    from ..server.storage.base import LOG_TABLES, keeps_registry

    if source == target:
        raise TinyDancerError("--from and --to name the same log")
    existing_log(source)
    if registry is not None and not (registry / "versions").is_dir():
        raise TinyDancerError(f"{registry} is not a registry folder (no versions/ in it)")
    src, dst = open_storage(source), open_storage(target)
    try:
        if registry is not None and not keeps_registry(dst):
            raise TinyDancerError("--registry moves a registry folder into PostgreSQL; beside a SQLite log the "
                                  "registry stays a folder")
        total = sum(src.count(t) for t in LOG_TABLES)
        with item_progress("copying rows", total, quiet) as advance:
            copied = copy_log(src, dst, progress=advance)
        versions = None if registry is None else import_folder(ModelRegistry(registry), DatabaseRegistry(dst, registry_kind))
    finally:
        src.close()
        dst.close()
    console.print("copied " + ", ".join(f"{n:,} {table}" for table, n in copied.items())
                  + ("" if versions is None else f", {versions} registry versions"))
