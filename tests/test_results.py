"""benchmarks/RESULTS.md: the marked tables are what their commands print today (the quick ones here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "check_results.py"), "--fast", *args],
                          capture_output=True, text=True, timeout=600)


def test_the_quick_tables_in_results_reproduce() -> None:
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok  seed-compression" in result.stdout


def test_a_table_that_no_longer_reproduces_is_flagged(tmp_path) -> None:
    text = (BENCH / "RESULTS.md").read_text(encoding="utf-8")
    stale = text.replace("| fp32 low-rank (r=4) | 0.9067 |", "| fp32 low-rank (r=4) | 0.9100 |", 1)
    assert stale != text
    (tmp_path / "RESULTS.md").write_text(stale, encoding="utf-8")
    result = check("--results", str(tmp_path / "RESULTS.md"))
    assert result.returncode == 1
    assert "fp32 low-rank (r=4) / accuracy: RESULTS.md says 0.9100, the command prints 0.9067" in result.stdout
