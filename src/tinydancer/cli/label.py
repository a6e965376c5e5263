"""``tinydancer label``: call every upstream on your prompts, grade the answers, write a routing
table with real costs (resumable, within a hard budget)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape

from ..errors import TinyDancerError
from ..progress import err_console, item_progress
from .common import console, existing_log, friendly_errors, print_or_json

__all__ = ["label"]


@friendly_errors
def label(
    prompts: Optional[Path] = typer.Argument(None, help="Prompts: JSONL or CSV with 'prompt' (or 'query') and optional "
                                                        "'reference'."),
    from_db: Optional[Path] = typer.Option(None, "--from-db", help="Label the prompts a gateway kept (its config's "
                                           "log_prompts: true) in this database instead."),
    since: Optional[float] = typer.Option(None, help="--from-db: only prompts logged at or after this Unix time."),
    sample: Optional[int] = typer.Option(None, help="Label this many prompts drawn at random (seeded) from the input."),
    config: Path = typer.Option(..., "--config", help="The gateway's YAML: every upstream answers each prompt."),
    out: Path = typer.Option(..., "--out", help="The routing table to write (JSONL), for `router train`."),
    grader: Optional[str] = typer.Option(None, help="pairwise (the judge compares each answer with the priciest "
                                         "model's: 1 if at least as good, else 0), judge (a 1-10 rating of each answer "
                                         "alone) or reference (a match with each prompt's reference answer). Default: "
                                         "reference when every prompt has one, else pairwise."),
    judge: Optional[str] = typer.Option(None, help="The upstream that grades answers (pairwise and judge graders): "
                                        "your strongest model, better still one the table does not score."),
    rubric: Optional[Path] = typer.Option(None, help="A text file of grading instructions replacing the default ones "
                                          "(judge and pairwise graders; the verdict's form is kept)."),
    match: str = typer.Option("normalized", help="Reference grader: exact, normalized or contains."),
    models: Optional[str] = typer.Option(None, help="Comma-separated upstreams to label (default: all of them)."),
    max_tokens: int = typer.Option(512, help="max_tokens of each call: bounds each answer, hence each call's worst case."),
    max_dollars: Optional[float] = typer.Option(None, help="A hard cap on this run's spending: each prompt's worst case "
                                                "is reserved before its calls start."),
    concurrency: int = typer.Option(8, help="Calls in flight at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the estimated cost and stop; nothing is called."),
    journal: Optional[Path] = typer.Option(None, help="The journal of paid calls (default: OUT.journal); a rerun reuses it."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Label your prompts: call every upstream, grade each answer, write a routing table with real costs.

    Resumable: each paid call is journaled as it returns, and a rerun of the same command pays only
    for what is missing. Cells a grader could not score (a judge reply without a parsable rating, a
    failed call) are left out of the table, never written as zeros; `router train` takes such a
    partial table."""
    from ..gateway import load_config
    from ..gateway.labelling import (Prompt, calls_per_prompt, load_prompts, load_rubric, plan_from_config,
                                     run_labelling)

    if concurrency < 1 or max_tokens < 1:
        raise TinyDancerError("--concurrency and --max-tokens must be at least 1")
    if max_dollars is not None and not (math.isfinite(max_dollars) and max_dollars >= 0):
        raise TinyDancerError(f"--max-dollars must be a finite amount of at least 0, not {max_dollars}")
    if (prompts is None) == (from_db is None):
        raise TinyDancerError("give a prompts file or --from-db DATABASE (one of them)")
    cfg = load_config(config)
    if from_db is not None:
        from ..server.storage import open_storage

        texts = open_storage(existing_log(from_db)).prompt_texts(since)
        if not texts:
            raise TinyDancerError(f"{from_db} holds no prompts: set log_prompts: true in the gateway's config, "
                                  "and let it serve some traffic first")
        items = [Prompt(t) for t in texts]
    else:
        assert prompts is not None
        items = load_prompts(prompts)
    if sample is not None and sample < len(items):
        picked = np.random.default_rng(0).choice(len(items), size=sample, replace=False)
        items = [items[i] for i in sorted(picked)]
    plan = plan_from_config(cfg, items, models=models.split(",") if models else None, grader=grader,
                            judge=judge, match=match, max_tokens=max_tokens, max_dollars=max_dollars,
                            concurrency=concurrency, rubric=None if rubric is None else load_rubric(rubric))
    estimate = plan.estimate()
    total = sum(estimate.values())
    rows = [[name, f"${dollars:.4f}"] for name, dollars in estimate.items()] + [["total (at most)", f"${total:.4f}"]]
    print_or_json({r[0]: r[1] for r in rows}, False,
                   f"{len(plan.prompts)} prompts × {len(plan.models)} models, graded by {plan.grader}: estimated cost, "
                   "worst case (every answer max_tokens long; what --max-dollars reserves)")
    if dry_run:
        return
    n_calls = len(plan.prompts) * calls_per_prompt(plan)
    try:
        with item_progress("labelling (calls)", n_calls, quiet) as advance:
            report = run_labelling(plan, out, journal, tick=lambda: advance(1))
    except KeyboardInterrupt:
        raise TinyDancerError(f"interrupted: the paid calls are kept in {journal or out.with_name(out.name + '.journal')}; "
                              "rerun the same command to finish without paying for them again") from None
    console.print(f"wrote {report.rows} rows to {out}: {report.cells} cells scored, {report.missing} missing "
                  f"({report.unparsed} judge replies without a rating, {report.failed_calls} failed calls, "
                  f"{report.skipped_for_budget} calls not made for the budget); {report.paid_calls} calls paid "
                  f"${report.dollars:.4f}" + ("" if max_dollars is None else f" of the ${max_dollars:g} cap")
                  + f", {report.reused_calls} reused from the journal")
    if report.charged_worst_case:
        err_console.print(f"[yellow]{report.charged_worst_case} calls were charged their worst case: usage missing or "
                          "impossible (not a whole number, negative, above the worst case), or no readable answer[/]")
    for e in report.errors:
        err_console.print(f"[yellow]{escape(str(e))}[/]", soft_wrap=True)  # an upstream's text, printed as it is
