"""The ``tinydancer`` command line: one module per command group, assembled here.

Errors a user can fix (bad data, missing files) print one clear line and exit 1, no traceback
(:func:`~tinydancer.cli.common.friendly_errors`).  Modules: ``candidates`` (the candidate
router's group: train, evaluate, predict; and demo), ``router`` (router …, calibrate), ``serve``, ``gateway``, ``label``, ``storage``,
``registry``, ``learning`` (retrain), ``report``; ``common`` holds what they share.
"""

from __future__ import annotations

import typer

from . import candidates, gateway, label, learning, registry, report, router, serve, storage

__all__ = ["app"]

app = typer.Typer(help="Tiny Dancer: an OpenAI-compatible gateway that sends each LLM call to the cheapest model that will "
                       "answer it well (`gateway`, `label`, `router …`), and the candidate router, the seed's candidate "
                       "scorer (`candidates …`).", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="markdown")

# the order of --help: the LLM gateway and its query routers, serving and operations, then the
# candidate router's group; the demo last
app.command()(gateway.gateway)
app.command()(label.label)
app.add_typer(router.router_app, name="router")
app.command()(router.calibrate)
app.command()(learning.retrain)
app.command()(report.report)
app.command()(serve.serve)
app.add_typer(registry.registry_app, name="registry")
app.add_typer(storage.storage_app, name="storage")
app.add_typer(candidates.candidates_app, name="candidates")
app.command()(candidates.demo)
for alias in candidates.deprecated_aliases():  # the old top-level train / evaluate / predict
    app.command(hidden=True)(alias)
