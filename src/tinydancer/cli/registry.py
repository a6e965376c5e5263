"""``tinydancer registry list / promote``: the versions a retrain kept, and a rollback to one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..errors import TinyDancerError
from .common import console, friendly_errors

__all__ = ["registry_app"]

registry_app = typer.Typer(help="Model versions: the registry folder beside a SQLite log, or PostgreSQL's.",
                            no_args_is_help=True,
                            rich_markup_mode="markdown")


def database_registry(database_url: str, kind: str) -> Any:
    from ..server.registry import DatabaseRegistry
    from ..server.storage import open_storage
    from ..server.storage.base import keeps_registry

    storage = open_storage(database_url)
    if not keeps_registry(storage):
        storage.close()
        raise TinyDancerError("the registry commands read a PostgreSQL registry (--database-url postgresql://…); "
                              "beside SQLite the registry is the folder models/registry")
    return DatabaseRegistry(storage, kind)


@registry_app.command("list")
@friendly_errors
def registry_list(
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="TINY_DANCER_DATABASE_URL",
                                               help="A PostgreSQL registry; without it, the folder --registry."),
    registry: Path = typer.Option(Path("models/registry"), help="The registry folder kept beside a SQLite log."),
    kind: str = typer.Option("model", help="With --database-url: model (candidate scoring) or query_router."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every version, oldest first; the current one is marked."""
    from dataclasses import asdict

    from ..server.registry import ModelRegistry

    if database_url is None:
        if not (registry / "versions").is_dir():
            raise TinyDancerError(f"no registry folder at {registry} (retrain writes one beside a SQLite log); "
                                  "name it with --registry, or a PostgreSQL registry with --database-url")
        versions = ModelRegistry(registry).versions()
    else:
        reg = database_registry(database_url, kind)
        try:
            versions = reg.versions()
        finally:
            reg.storage.close()
    if as_json:
        typer.echo(json.dumps([asdict(v) for v in versions]))
        return
    table = Table("version", "current", "parent", "sha256", "bytes", "promoted by", "off-policy evidence")
    for v in versions:
        table.add_row(v.version, "*" if v.promoted else "", v.parent or "", v.sha256[:12], f"{v.file_bytes:,}",
                      v.promoted_by or "", offpolicy_line(v.metrics.get("offpolicy")))
    console.print(table)


def offpolicy_line(evidence: dict[str, Any] | None) -> str:
    """A retrain's off-policy evidence in one cell: each router's doubly robust quality with its 95 %
    interval, the verdict and n (server/offpolicy.py); empty for versions without it."""
    if not evidence:
        return ""
    if "difference" not in evidence:
        return f"not decided: n={evidence.get('n', 0)} logged with a propensity"
    cur, new, diff = evidence["current"], evidence["new"], evidence["difference"]
    verdict = "passed" if evidence.get("passed") else "refused"
    return (f"current {cur['estimate']:.3f} [{cur['ci95'][0]:.3f}, {cur['ci95'][1]:.3f}] → new {new['estimate']:.3f} "
            f"[{new['ci95'][0]:.3f}, {new['ci95'][1]:.3f}]; diff CI low {diff['ci95'][0]:+.3f}: {verdict} "
            f"(n={evidence['n']}, {evidence['explored']} explored)")


@registry_app.command("promote")
@friendly_errors
def registry_promote(
    version: str = typer.Argument(..., help="The version to serve (see tinydancer registry list)."),
    database_url: str = typer.Option(..., "--database-url", envvar="TINY_DANCER_DATABASE_URL"),
    kind: str = typer.Option("model", help="model (candidate scoring) or query_router."),
) -> None:
    """Serve this version on every replica (a rollback, say): moves the current pointer and
    notifies the replicas, which reload within seconds."""
    from ..server.registry import who

    reg = database_registry(database_url, kind)
    try:
        reg.promote(version, by=f"{who()} (tinydancer registry promote)")
    finally:
        reg.storage.close()
    console.print(f"{kind} {version} is current; the replicas reload it")
