"""Progress off a terminal: plain lines on stderr (every 10 % or 30 s, with a rate and the time
left), so a long ``router train`` or ``label`` in a log file or a pipe is not silent until the end."""

from __future__ import annotations

import io
import json

import numpy as np
from typer.testing import CliRunner

from tinydancer.cli import app
from tinydancer.progress import LineProgress
from tinydancer.synthetic import seed_example_data

from test_query_router import pair_table

runner = CliRunner()


def test_lines_come_at_every_tenth_with_a_rate_and_the_time_left() -> None:
    out = io.StringIO()
    progress = LineProgress("embedding queries", 100, out)
    for _ in range(100):
        progress.advance(1)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ... 100 % (the closing line is not repeated)
    assert lines[0].startswith("embedding queries: 10/100 (10%), ") and "/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("embedding queries: 100/100 (100%), ") and "done in" in lines[-1]


def test_a_line_comes_every_30_s_even_between_tenths() -> None:
    out, now = io.StringIO(), [0.0]
    progress = LineProgress("labelling (calls)", 10_000, out, clock=lambda: now[0])
    progress.advance(1)
    assert out.getvalue() == ""  # 0.01 %, and no time has passed
    now[0] = 31.0
    progress.advance(1)
    assert out.getvalue().startswith("labelling (calls): 2/10,000 (0%), ")


def test_router_train_off_a_terminal_prints_progress_lines_on_stderr(tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    table = pair_table(300, 4)
    path.write_text("".join(json.dumps({"query": q, "scores": dict(zip(table.models, s.tolist())),
                                        "costs": dict(zip(table.models, c.tolist()))}) + "\n"
                            for q, s, c in zip(table.queries, table.scores, table.costs)))
    r = runner.invoke(app, ["router", "train", str(path), "--out", str(tmp_path / "r"), "--embedder", "hashing-128",
                            "--folds", "1"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if line.startswith("embedding queries: ")]
    assert lines and lines[-1].startswith("embedding queries: 300/300 (100%)")
    assert "trained a 2-model router" in r.stdout  # the result stays on stdout


def test_train_off_a_terminal_prints_epoch_lines_and_quiet_prints_none(tmp_path) -> None:
    x, y = seed_example_data(400, seed=0)
    data = tmp_path / "train.npz"
    np.savez(data, features=x, labels=y)
    r = runner.invoke(app, ["candidates", "train", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "10"])
    assert r.exit_code == 0, r.output
    epochs = [line for line in r.stderr.splitlines() if line.startswith("training: ")]
    assert epochs and "epochs" in epochs[0] and "loss" in epochs[0]
    r = runner.invoke(app, ["candidates", "train", "--data", str(data), "--out", str(tmp_path / "q"), "--epochs", "10", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "training: " not in r.stderr


def test_a_terminal_bar_shows_the_rate_and_the_time_left() -> None:
    """On a terminal the bar is redrawn in place; it carries the same rate and time left as the lines."""
    from rich.console import Console

    from tinydancer.progress import item_progress

    out, now = io.StringIO(), [0.0]
    term = Console(file=out, force_terminal=True, width=160)
    with item_progress("embedding queries", 1000, False, console=term, clock=lambda: now[0]) as advance:
        for _ in range(4):
            now[0] += 1.0
            advance(100)  # 100 a second: 400 done, 600 left, so 6 s left
    term_text = out.getvalue()  # the bar as drawn when the work stopped
    assert "embedding queries" in term_text
    assert "100/s" in term_text and "0:00:06" in term_text


def test_item_progress_off_a_terminal_writes_lines_to_its_console() -> None:
    from rich.console import Console

    from tinydancer.progress import item_progress

    out, now = io.StringIO(), [0.0]
    with item_progress("embedding queries", 10, False, console=Console(file=out, force_terminal=False),
                       clock=lambda: now[0]) as advance:
        now[0] = 2.0
        advance(5)
    assert out.getvalue().splitlines() == ["embedding queries: 5/10 (50%), 2.5/s, 2s left"]
