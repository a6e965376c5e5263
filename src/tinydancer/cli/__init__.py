"""The ``tinydancer`` command line: one module per command group, assembled here.

Errors a user can fix (bad data, missing files) print one clear line and exit 1, no traceback
(:func:`~tinydancer.cli.common.friendly_errors`).  Modules: ``candidates`` (train, evaluate,
predict, demo), ``router`` (router …, calibrate), ``serve``, ``gateway``, ``label``, ``storage``,
``registry``, ``learning`` (retrain), ``report``; ``common`` holds what they share.
"""

from __future__ import annotations

import typer

from . import candidates, gateway, label, learning, registry, report, router, serve, storage

__all__ = ["app"]

app = typer.Typer(help="Tiny Dancer: train, evaluate and serve FastGRNN routers.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="markdown")

# the order of --help: the candidate scorer's commands, then query routing, serving, labelling, operations
for command in candidates.COMMANDS:
    app.command()(command)
app.add_typer(router.router_app, name="router")
app.command()(router.calibrate)
app.command()(serve.serve)
app.command()(gateway.gateway)
app.command()(label.label)
app.add_typer(storage.storage_app, name="storage")
app.add_typer(registry.registry_app, name="registry")
app.command()(learning.retrain)
app.command()(report.report)
