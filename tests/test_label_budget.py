"""`tinydancer label` under a budget and hostile inputs: the cap is hard, paid work is kept, nothing tracebacks.

Issue 25 (findings 11 and 12) and issue 32 (items 5 and 6).  The upstreams are the project's loopback
stand-ins; a stand-in counting a token per character (as CJK text often is) or sending a bogus
``usage`` plays the provider.  No assertion depends on timing: with calls in flight the tests check
what must hold whatever order the answers come back in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from tinydancer.cli import app
from tinydancer.gateway.standin import StandIn, running

PRICES = {"strong": (10.0, 30.0), "weak": (1.0, 2.0), "judge": (5.0, 50.0)}
PROMPTS = [{"prompt": f"What is the capital of France? (variant {i})", "reference": "Paris"} for i in range(6)]


def write_config(tmp_path: Path, urls: dict[str, str], prices: dict[str, tuple[float, float]] = PRICES) -> Path:
    lines = ["upstreams:"]
    for name, url in urls.items():
        lines.append(f"  - {{name: {name}, base_url: '{url}/v1', model: {name}-model, "
                     f"input_per_million: {prices[name][0]}, output_per_million: {prices[name][1]}}}")
    path = tmp_path / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_prompts(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["label", *args, "--quiet"])


def label(*args: str) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def journal(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(f"{out}.journal").read_text(encoding="utf-8").splitlines() if line.strip()]


def reported_dollars(result: Any) -> float:
    found = re.search(r"calls paid \$([0-9.]+)", " ".join(result.output.split()))
    assert found, result.output
    return float(found.group(1))


@pytest.fixture()
def upstreams() -> Iterator[dict[str, Any]]:
    strong, weak, judge = StandIn("big", answer="Paris."), StandIn("small", answer="London"), StandIn("judge", answer="Fine. Rating: [[8]]")
    with running(strong.app()) as su, running(weak.app()) as wu, running(judge.app()) as ju:
        yield {"strong": strong, "weak": weak, "judge": judge, "urls": {"strong": su, "weak": wu, "judge": ju}}


# -- issue 25 #11: the cap is hard ------------------------------------------------------------------

def test_the_cap_is_hard_when_the_upstream_counts_a_token_per_character(tmp_path: Path) -> None:
    """40 CJK prompts, a token per character, 8 calls in flight: characters ÷ 4 guessed 4× low and
    the first 8 calls alone cost $1.60 against a $1 cap.  Reserving one token per UTF-8 byte keeps it."""
    up = StandIn("big", answer="答" * 20, tokens="chars")
    with running(up.app()) as url:
        cfg = write_config(tmp_path, {"strong": url}, {"strong": (100.0, 1.0)})
        prompts = write_prompts(tmp_path, [{"prompt": f"{i}:" + "漢字" * 1000, "reference": "答"} for i in range(40)])
        out = tmp_path / "t.jsonl"
        result = label(str(prompts), "--config", str(cfg), "--out", str(out), "--max-dollars", "1.0")  # concurrency 8
        paid = journal(out)
        # what the upstream billed by its own count: every call it saw is journaled, at its usage × price
        assert up.calls == len(paid) >= 1
        billed = sum(e["prompt_tokens"] * 100e-6 + e["completion_tokens"] * 1e-6 for e in paid)
        assert billed <= 1.0
        assert reported_dollars(result) == pytest.approx(billed, abs=1e-4)
        assert len(out.read_text().splitlines()) == len(paid)  # every paid answer is in the table


@pytest.mark.parametrize("cap", ["nan", "-1", "inf"])
def test_a_cap_that_is_not_an_amount_is_refused(tmp_path: Path, upstreams: dict[str, Any], cap: str) -> None:
    """NaN compares false with everything: as a cap it would never stop a call."""
    cfg = write_config(tmp_path, upstreams["urls"])
    result = invoke(str(write_prompts(tmp_path, PROMPTS)), "--config", str(cfg), "--out", str(tmp_path / "t.jsonl"),
                    "--models", "strong", "--max-dollars", cap)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "--max-dollars must be a finite amount" in " ".join(result.output.split())
    assert upstreams["strong"].calls == 0


def test_every_paid_answer_is_judged_under_a_tight_cap(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """An answer is bought only with its grading paid for: the issue's 72 paid calls and 1 row.

    Six 500-word answers from strong (~$0.015 each) fit under the cap, their judging does not too:
    buying answers first would leave every one of them ungraded."""
    upstreams["strong"].answer = "Paris " + "word " * 499
    cfg = write_config(tmp_path, upstreams["urls"])
    out = tmp_path / "t.jsonl"
    result = label(str(write_prompts(tmp_path, [{"prompt": p["prompt"]} for p in PROMPTS])), "--config", str(cfg),
                   "--out", str(out), "--models", "strong,weak", "--grader", "judge", "--judge", "judge", "--max-dollars", "0.115")
    paid = journal(out)
    answered = {e["text"] for e in paid if e["kind"] == "answer"}
    assert answered, "the cap leaves room for some prompts"
    judged = [e for e in paid if e["kind"] == "judge"]
    assert len(judged) == len([e for e in paid if e["kind"] == "answer"])  # each answer bought was graded
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) * 2 == len(judged) and all(set(r["scores"]) == {"strong", "weak"} for r in rows)
    assert reported_dollars(result) <= 0.115


# -- issue 25 #12: no tracebacks --------------------------------------------------------------------

BOGUS_USAGE = [
    '{"prompt_tokens": 1e999, "completion_tokens": 1}',
    '{"prompt_tokens": 8, "completion_tokens": -1e999}',
    '{"prompt_tokens": -7, "completion_tokens": 1}',
    '{"prompt_tokens": "many", "completion_tokens": 1}',
    '{"prompt_tokens": 1000000000000000000000000000000, "completion_tokens": 1}',
    '{"prompt_tokens": 8, "completion_tokens": 100000}',  # past max_tokens: not what was asked for
    "null",
    '"lots"',
    "[8, 1]",
]


@pytest.mark.parametrize("usage", BOGUS_USAGE)
def test_an_impossible_usage_is_charged_the_worst_case(tmp_path: Path, upstreams: dict[str, Any], usage: str) -> None:
    """A count that cannot be (not a whole number, negative, infinite, past the worst case) is unknown:
    the call is charged what was reserved for it, the run goes on, and the cap still holds."""
    upstreams["strong"].usage_json = usage
    cfg = write_config(tmp_path, upstreams["urls"])
    out = tmp_path / "t.jsonl"
    result = label(str(write_prompts(tmp_path, PROMPTS[:3])), "--config", str(cfg), "--out", str(out),
                   "--models", "strong", "--max-dollars", "1")
    assert len(out.read_text().splitlines()) == 3
    worst = (len(PROMPTS[0]["prompt"]) + 64) * 10e-6 + 512 * 30e-6  # ASCII: a byte a character; 64 for the template
    for e in journal(out):
        assert e["cost"] == pytest.approx(worst, rel=1e-9)
    assert reported_dollars(result) == pytest.approx(3 * worst, abs=1e-4)
    assert "3 calls were charged their worst case" in " ".join(result.output.split())


@pytest.mark.parametrize("name,content,line", [
    ("prompts.jsonl", b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n', 2),
    ("prompts.jsonl", b'{"prompt": "fine"}\n\n{"prompt": "half a pair \\ud800"}\n', 3),
    ("prompts.jsonl", b'{"prompt": "fine", "reference": "\\udfff"}\n', 1),
    ("prompts.csv", b"prompt,reference\nfine,yes\n\xff\xfe,no\n", 3),
])
def test_a_prompts_file_that_is_not_text_is_an_error_naming_the_line(tmp_path: Path, upstreams: dict[str, Any],
                                                                      name: str, content: bytes, line: int) -> None:
    cfg = write_config(tmp_path, upstreams["urls"])
    path = tmp_path / name
    path.write_bytes(content)
    result = invoke(str(path), "--config", str(cfg), "--out", str(tmp_path / "t.jsonl"), "--models", "strong",
                    "--grader", "judge", "--judge", "judge")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert f"{name}:{line}:" in "".join(result.output.split()), result.output  # rich may wrap the line
    assert upstreams["strong"].calls == 0


def test_an_answer_holding_a_lone_surrogate_is_kept(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """JSON may escape half a surrogate pair; UTF-8 cannot hold it.  The paid answer must still reach
    the journal and the table (as U+FFFD), not crash the run after paying for it."""
    upstreams["strong"].answer = "Paris \ud800"
    cfg = write_config(tmp_path, upstreams["urls"])
    out = tmp_path / "t.jsonl"
    label(str(write_prompts(tmp_path, PROMPTS[:2])), "--config", str(cfg), "--out", str(out), "--models", "strong",
          "--match", "contains")
    assert [e["text"] for e in journal(out)] == ["Paris \ufffd"] * 2
    assert [json.loads(line)["scores"] for line in out.read_text().splitlines()] == [{"strong": 1.0}] * 2


# -- issue 32 #5 and #6: resumes and calls in flight ------------------------------------------------

def test_resumed_twice_each_call_is_paid_once(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """Three runs, the first killed mid-write (its journal's last line cut short): only that one call
    is bought again.  Opening the journal with "w" would lose the first run's calls to the third; not
    ending the cut line would glue the second run's first entry to it, and lose that one."""
    upstreams["strong"].answer = "Paris " + "word " * 399  # ~$0.012 an answer; worst case ~$0.017
    cfg = write_config(tmp_path, upstreams["urls"])
    prompts = write_prompts(tmp_path, PROMPTS)
    out = tmp_path / "t.jsonl"
    args = (str(prompts), "--config", str(cfg), "--out", str(out), "--models", "strong")
    label(*args, "--max-dollars", "0.04")
    first = upstreams["strong"].calls
    assert 2 <= first < 6
    path = Path(f"{out}.journal")
    path.write_bytes(path.read_bytes()[:-20])  # the kill: the last entry half written
    label(*args, "--max-dollars", "0.04")
    second = upstreams["strong"].calls - first
    assert 1 <= second and first + second < 7  # not finished yet: a third run is needed
    result = label(*args)
    assert upstreams["strong"].calls == 6 + 1  # every prompt once, and the call whose entry was cut again
    assert f"{first - 1 + second} reused from the journal" in " ".join(result.output.split())
    assert len(out.read_text().splitlines()) == 6


def test_calls_in_flight_count_against_the_cap(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """Concurrency 8 (the default), every call costing exactly its worst case, a cap of 2.5 calls:
    all 8 start before any answers, so a check that saw only what was spent would let 8 through
    ($0.096).  Counting what is reserved for calls in flight, exactly 2 are made, whatever the order."""
    upstreams["strong"].answer = " ".join(["word"] * 400)
    cfg = write_config(tmp_path, upstreams["urls"], {**PRICES, "strong": (0.0, 30.0)})
    out = tmp_path / "t.jsonl"
    prompts = write_prompts(tmp_path, [{"prompt": f"question {i}", "reference": "word"} for i in range(20)])
    result = label(str(prompts), "--config", str(cfg), "--out", str(out), "--models", "strong", "--max-tokens", "400",
                   "--max-dollars", str(2.5 * 400 * 30e-6))
    assert upstreams["strong"].calls == 2
    assert reported_dollars(result) == pytest.approx(2 * 400 * 30e-6, abs=1e-4)
    assert "18 calls not made for the budget" in " ".join(result.output.split())
