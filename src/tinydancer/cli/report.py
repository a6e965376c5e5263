"""``tinydancer report``: the dashboard's numbers from a log, without a server.

Formats: ``table`` (for people), ``json`` (the report as :func:`~tinydancer.server.report.build_report`
returns it), ``csv`` (one ``section,name,metric,value`` row per number, for a spreadsheet) and
``html`` (a standalone snapshot of the dashboard: one file, no script, no external resource).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.table import Table

from ..errors import ValidationError
from .common import console, existing_log, friendly_errors

__all__ = ["report"]

FORMATS = ("table", "json", "csv", "html")


@friendly_errors
def report(
    database_path: Path = typer.Option(Path("tinydancer.db"), help="The gateway's (or service's) SQLite log."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="TINY_DANCER_DATABASE_URL",
                                               help="A postgresql:// log (replaces --database-path)."),
    since: str = typer.Option("7d", help="The window: hour, day, week, all, or a length such as 30m, 12h, 7d."),
    format: str = typer.Option("table", "--format", help="table, json, csv or html (a standalone dashboard snapshot)."),
    config: Optional[Path] = typer.Option(None, help="The gateway.yaml whose upstream prices price the savings."),
    reference: Optional[str] = typer.Option(None, help="Also price the calls at this upstream (a name in --config)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here (atomically) instead of stdout."),
    registry: Path = typer.Option(Path("models/registry"), help="The registry folder beside a SQLite log."),
    last: int = typer.Option(20, help="How many of the latest decisions to list."),
) -> None:
    """Calls, spend and what routing saved against the dearest upstream (and --reference), per
    upstream, with latency, quality evidence and outcome coverage, for one window of the log."""
    from ..server.dashboard import render_dashboard
    from ..server.report import build_report, prices_of, registry_versions
    from ..server.storage import open_storage

    if format not in FORMATS:
        raise ValidationError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    prices = []
    if config is not None:
        from ..gateway.config import load_config

        prices = prices_of(load_config(config).upstreams)
    storage = open_storage(existing_log(database_url or database_path))
    try:
        data = build_report(storage, window=since, prices=prices, reference=reference, last_n=last,
                            registry=registry_versions(storage, registry))
    finally:
        storage.close()
    if format == "json":
        text = json.dumps(data, indent=2)
    elif format == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([("section", "name", "metric", "value"), *csv_rows(data)])
        text = buf.getvalue()
    elif format == "html":
        text = render_dashboard(data, refresh_s=None, base="", references=())
    else:
        text = ""
    if output is not None:
        from .._io import atomic_write_text

        atomic_write_text(output, text if format != "table" else _table_text(data))
        console.print(f"wrote {output}")
    elif format == "table":
        _print_tables(data)
    else:
        typer.echo(text, nl=not text.endswith("\n"))


def csv_rows(r: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The report as (section, name, metric, value) rows."""
    yield ("window", "", "label", r["window"]["label"])
    yield ("window", "", "since", r["window"]["since"])
    for key, value in r["totals"].items():
        if not isinstance(value, dict):
            yield ("totals", "", key, value)
    for model, n in r["totals"]["served_by_model"].items():
        yield ("served_by_model", model, "calls", n)
    for cf in r["counterfactuals"]:
        for key in ("calls_compared", "spend", "at_reference", "saved", "saved_pct"):
            yield ("counterfactual", f"{cf['role']}:{cf['model']}", key, cf[key])
    for key in ("calls", "with_outcome", "share"):
        yield ("coverage", "", key, r["coverage"][key])
    for name, u in r["upstreams"].items():
        for key in ("served", "attempts", "share", "spend", "fallback_attempts"):
            yield ("upstream", name, key, u[key])
        for status, n in u["errors"].items():
            yield ("upstream", name, f"errors:{status}", n)
        for key, value in u["latency"].items():
            yield ("upstream", name, key, value)
    for k in r["keys"]:
        for key in ("calls", "spend", "share", "at_dearest", "saved", "saved_pct", "failed_calls", "spent_today", "budget",
                    "refused_today"):
            if key in k:
                yield ("key", k["name"], key, k[key])
    for model, m in r["quality"]["models"].items():
        for key, value in m.items():
            yield ("quality", model, key, value)


def _summary(r: dict[str, Any]) -> Table:
    from ..server.dashboard import money

    t, cov = r["totals"], r["coverage"]
    table = Table(title=f"Tiny Dancer report: window {r['window']['label']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("calls", f"{t['calls']:,}")
    table.add_row("failed calls / fallback attempts", f"{t['failed_calls']:,} / {t['fallback_attempts']:,}")
    table.add_row("spend", money(t["spend"]))
    for cf in r["counterfactuals"]:
        table.add_row(f"same calls at {cf['model']} ({cf['role']})", money(cf["at_reference"]))
        pct = "" if cf["saved_pct"] is None else f" ({cf['saved_pct']:.1f} %)"
        table.add_row(f"saved vs {cf['model']}", f"{money(cf['saved'])}{pct}")
    share = "–" if cov["share"] is None else f"{100 * cov['share']:.1f} %"
    table.add_row("outcome coverage", f"{share} ({cov['with_outcome']:,} of {cov['calls']:,} calls)")
    return table


def _upstream_table(r: dict[str, Any]) -> Table:
    from ..server.dashboard import money

    table = Table(title="per upstream")
    for col in ("upstream", "served", "share", "spend", "fallback attempts", "errors", "total p50 / p99 ms"):
        table.add_column(col, justify="left" if col in ("upstream", "errors") else "right")
    for name, u in r["upstreams"].items():
        lat = u["latency"]
        table.add_row(name, f"{u['served']:,}", f"{100 * u['share']:.1f} %", money(u["spend"]), f"{u['fallback_attempts']:,}",
                      ", ".join(f"{k} {v}" for k, v in u["errors"].items()) or "–",
                      f"{lat.get('total_p50_ms', '–')} / {lat.get('total_p99_ms', '–')}")
    return table


def _key_table(r: dict[str, Any]) -> Table:
    from ..server.dashboard import money

    dearest = next((k["dearest"] for k in r["keys"] if k.get("dearest")), None)
    table = Table(title="spend per client key")
    cols = ["key", "calls", "spend", "share of spend", *([f"at {dearest}", "saved"] if dearest else []), "failed calls"]
    for col in cols:
        table.add_column(col, justify="left" if col == "key" else "right")
    for k in r["keys"]:
        pct = "" if k["saved_pct"] is None else f" ({k['saved_pct']:.1f} %)"
        table.add_row(k["name"], f"{k['calls']:,}", money(k["spend"]), f"{100 * k['share']:.1f} %",
                      *([money(k["at_dearest"]), f"{money(k['saved'])}{pct}"] if dearest else []), f"{k['failed_calls']:,}")
    return table


def _quality_table(r: dict[str, Any]) -> Table:
    table = Table(title="quality evidence")
    for col in ("model", "outcomes", "success rate", "predicted quality"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for model, m in r["quality"]["models"].items():
        rate = "–" if m["success_rate"] is None else f"{100 * m['success_rate']:.1f} %"
        pred = "–" if m.get("predicted_mean") is None else f"{m['predicted_mean']:.3f} (n={m['predicted_n']})"
        table.add_row(model, f"{m['outcomes']:,}", rate, pred)
    return table


def _print_tables(r: dict[str, Any], out: Any = None) -> None:
    out = out or console
    out.print(_summary(r))
    out.print(f"[dim]{r['quality_note']}[/]")
    if not r["counterfactuals"]:
        out.print("[yellow]no prices: pass --config gateway.yaml to compute the savings[/]")
    out.print(_upstream_table(r))
    out.print(_key_table(r))
    out.print(_quality_table(r))


def _table_text(r: dict[str, Any]) -> str:
    from rich.console import Console

    buf = io.StringIO()
    _print_tables(r, Console(file=buf, width=120, color_system=None))
    return buf.getvalue()
