"""`tinydancer label`: stand-in upstreams answer and judge on loopback; the table, the money, the journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

from tinydancer.cli import app
from tinydancer.gateway.labelling import grade_reference, parse_pairwise, parse_rating
from tinydancer.gateway.standin import StandIn, running
from tinydancer.llm import RoutingTable

PROMPTS = [{"prompt": f"What is the capital of France? (variant {i})", "reference": "Paris"} for i in range(6)]


@pytest.fixture()
def upstreams() -> Iterator[dict[str, Any]]:
    strong, weak, judge = StandIn("big", answer="Paris."), StandIn("small", answer="London"), StandIn("judge", answer="Fine. Rating: [[8]]")
    with running(strong.app()) as su, running(weak.app()) as wu, running(judge.app()) as ju:
        yield {"strong": strong, "weak": weak, "judge": judge, "urls": {"strong": su, "weak": wu, "judge": ju}}


def write_config(tmp_path: Path, urls: dict[str, str]) -> Path:
    prices = {"strong": (10.0, 30.0), "weak": (1.0, 2.0), "judge": (5.0, 5.0)}
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


def label(*args: str) -> Any:
    result = CliRunner().invoke(app, ["label", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def test_reference_grading_writes_scores_and_real_costs(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    cfg = write_config(tmp_path, upstreams["urls"])
    out = tmp_path / "table.jsonl"
    label(str(write_prompts(tmp_path, PROMPTS)), "--config", str(cfg), "--out", str(out), "--models", "strong,weak")
    table = RoutingTable.from_jsonl(out)
    assert table.models == ["strong", "weak"] and len(table) == 6
    np.testing.assert_array_equal(table.scores, [[1.0, 0.0]] * 6)  # "Paris." normalizes to the reference
    # prompt tokens are the stand-in's word count (8), completion 1 word: usage × the config's prices
    np.testing.assert_allclose(table.costs[0], [(8 * 10 + 1 * 30) / 1e6, (8 * 1 + 1 * 2) / 1e6])
    assert upstreams["judge"].calls == 0


def test_a_judge_grades_and_a_garbage_reply_is_a_missing_cell(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    cfg = write_config(tmp_path, upstreams["urls"])
    rows = [{"prompt": p["prompt"]} for p in PROMPTS]
    out = tmp_path / "judged.jsonl"
    label(str(write_prompts(tmp_path, rows)), "--config", str(cfg), "--out", str(out), "--models", "strong,weak",
          "--grader", "judge", "--judge", "judge")
    table = RoutingTable.from_jsonl(out)
    np.testing.assert_allclose(table.scores, (8 - 1) / 9)
    assert upstreams["judge"].calls == 12
    upstreams["judge"].mode = "garbage"
    out2 = tmp_path / "garbage.jsonl"
    result = label(str(write_prompts(tmp_path, rows[:2])), "--config", str(cfg), "--out", str(out2), "--models",
                   "strong,weak", "--grader", "judge", "--judge", "judge", "--journal", str(tmp_path / "other.journal"))
    assert out2.read_text() == ""  # no cell could be scored: no row, and certainly no zeros
    assert "4 judge replies without a rating" in " ".join(result.output.split())


def test_pairwise_against_the_priciest_model(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    upstreams["judge"].answer = "B is better. [[B]]"
    cfg = write_config(tmp_path, upstreams["urls"])
    out = tmp_path / "pairs.jsonl"
    label(str(write_prompts(tmp_path, PROMPTS[:3])), "--config", str(cfg), "--out", str(out), "--models", "strong,weak",
          "--grader", "pairwise", "--judge", "judge")
    table = RoutingTable.from_jsonl(out)
    np.testing.assert_array_equal(table.scores, [[1.0, 0.0]] * 3)  # strong is the reference; weak lost
    assert upstreams["judge"].calls == 3  # one comparison per prompt: weak against strong


def test_dry_run_spends_nothing_and_the_budget_stops_spending(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    cfg = write_config(tmp_path, upstreams["urls"])
    prompts = write_prompts(tmp_path, PROMPTS)
    result = label(str(prompts), "--config", str(cfg), "--out", str(tmp_path / "t.jsonl"), "--models", "strong,weak", "--dry-run")
    assert "estimated cost" in result.output and upstreams["strong"].calls == 0 and not (tmp_path / "t.jsonl").exists()
    # a 400-word answer costs ~$0.012 at $30/M; a call is estimated at (chars/4 × $10 + 512 × $30) / 1e6 ≈ $0.0155
    # before it starts: under a $0.05 cap the fourth call would pass it (0.036 spent + 0.0155)
    upstreams["strong"].answer = "Paris " + "word " * 399
    result = label(str(prompts), "--config", str(cfg), "--out", str(tmp_path / "t.jsonl"), "--models", "strong",
                   "--max-dollars", "0.05", "--concurrency", "1")
    assert upstreams["strong"].calls == 3
    assert "3 calls not made for the budget" in " ".join(result.output.split())
    spent = sum(json.loads(line)["cost"] for line in Path(f"{tmp_path / 't.jsonl'}.journal").read_text().splitlines())
    assert 0.03 < spent <= 0.05


def test_a_rerun_pays_only_for_what_is_missing(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    cfg = write_config(tmp_path, upstreams["urls"])
    prompts = write_prompts(tmp_path, PROMPTS)
    out = tmp_path / "t.jsonl"
    upstreams["strong"].answer = "Paris " + "word " * 399  # ~$0.012 an answer: a $0.05 cap stops after three
    label(str(prompts), "--config", str(cfg), "--out", str(out), "--models", "strong", "--max-dollars", "0.05",
          "--concurrency", "1")
    assert upstreams["strong"].calls == 3
    result = label(str(prompts), "--config", str(cfg), "--out", str(out), "--models", "strong")
    assert upstreams["strong"].calls == 6  # the three journaled answers were not bought again
    assert "3 reused from the journal" in " ".join(result.output.split())
    assert len(out.read_text().splitlines()) == 6


def test_a_killed_run_resumes_without_repeating_a_paid_call(tmp_path: Path) -> None:
    slow = StandIn("big", answer="Paris", delay_s=0.3)
    with running(slow.app()) as url:
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(f"upstreams:\n  - {{name: strong, base_url: '{url}/v1', model: m, input_per_million: 1}}\n")
        prompts = write_prompts(tmp_path, [{"prompt": f"question {i}", "reference": "Paris"} for i in range(10)])
        out = tmp_path / "t.jsonl"
        journal = Path(f"{out}.journal")
        cmd = [sys.executable, "-m", "tinydancer", "label", str(prompts), "--config", str(cfg), "--out", str(out),
               "--concurrency", "1", "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while (not journal.exists() or len(journal.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        paid_before = len(journal.read_text().splitlines())
        calls_before = slow.calls
        assert 3 <= paid_before < 10 and not out.exists()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
        # the rerun bought only what the journal lacked (plus at most the one call in flight at the kill)
        assert slow.calls - calls_before == 10 - paid_before
        assert calls_before - paid_before <= 1
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["query"] for r in rows) == sorted(f"question {i}" for i in range(10))


def test_parsers_are_strict() -> None:
    assert parse_rating("Rating: [[7]]") == pytest.approx(6 / 9)
    assert parse_rating("[[7]] ... on reflection [[3]]") is None
    assert parse_rating("Rating: 7") is None and parse_rating("[[11]]") is None
    assert parse_pairwise("[[A]]") == 1.0 and parse_pairwise("[[C]]") == 1.0 and parse_pairwise("[[B]]") == 0.0
    assert parse_pairwise("[[A]] or [[B]]") is None
    assert grade_reference("The answer is Paris.", "paris", "contains") == 1.0
    assert grade_reference("Parisian", "paris", "contains") == 0.0
    assert grade_reference(" Paris! ", "paris") == 1.0 and grade_reference("Paris", "paris", "exact") == 0.0


def test_labelling_the_prompts_a_gateway_kept(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """log_prompts: true keeps what each call was routed on; label --from-db labels that traffic."""
    import openai

    from tinydancer.gateway import create_gateway_app
    from tinydancer.gateway.config import load_config
    from tinydancer.llm.embeddings import HashingEmbedder
    from tinydancer.llm import QueryRouter, QueryRouterConfig
    from tinydancer.server import ServiceSettings

    queries = [f"question {i} about {'apples' if i % 2 else 'topology'}" for i in range(100)]
    scores = np.column_stack([np.ones(100), (np.arange(100) % 2).astype(float)])
    table = RoutingTable(queries, ["strong", "weak"], scores, np.tile([10.0, 1.0], (100, 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(4,), epochs=3, memory=False), embedder=HashingEmbedder(64))
    router.calibrate(0.5)
    router.save(tmp_path / "router")
    cfg_path = write_config(tmp_path, upstreams["urls"])
    cfg_path.write_text(cfg_path.read_text() + f"router: {tmp_path / 'router'}\nlog_prompts: true\n")
    db = tmp_path / "gw.db"
    app = create_gateway_app(load_config(cfg_path), ServiceSettings(database_path=db, watch_interval_s=0),
                             embedder=HashingEmbedder(64))
    with running(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for q in ["What is 2+2?", "Name a prime.", "What is 2+2?"]:
            client.chat.completions.create(model="tinydancer", messages=[
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": q}])
    out = tmp_path / "traffic.jsonl"
    result = label("--from-db", str(db), "--config", str(cfg_path), "--out", str(out), "--models", "strong,weak",
                   "--grader", "judge", "--judge", "judge")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query"] for r in rows] == ["What is 2+2?", "Name a prime."]  # distinct, the last user turn
    assert all(set(r["scores"]) == {"strong", "weak"} for r in rows), result.output


def test_a_prompt_given_twice_is_bought_once(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    cfg = write_config(tmp_path, upstreams["urls"])
    rows = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    out = tmp_path / "t.jsonl"
    label(str(write_prompts(tmp_path, rows)), "--config", str(cfg), "--out", str(out), "--models", "strong")
    assert upstreams["strong"].calls == 2
    assert [json.loads(line)["query"] for line in out.read_text().splitlines()] == [PROMPTS[0]["prompt"], PROMPTS[1]["prompt"]]


def test_a_rubric_replaces_the_judges_instructions_and_kind_aware_stand_ins_are_graded_by_kind(
        tmp_path: Path, upstreams: dict[str, Any]) -> None:
    from tinydancer.gateway.labelling import JUDGE_INSTRUCTIONS
    from tinydancer.gateway.prompt_kinds import generate

    for name, skill in (("strong", "strong"), ("weak", "weak"), ("judge", "strong")):
        upstreams[name].answer, upstreams[name].skill = None, skill
    prompts = generate(8, seed=3, hard_share=0.5)
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Grade only correctness: a wrong answer is a 1, whatever its style.\n")
    cfg = write_config(tmp_path, upstreams["urls"])
    out = tmp_path / "rubric.jsonl"
    label(str(write_prompts(tmp_path, [{"prompt": p.text} for p in prompts])), "--config", str(cfg), "--out", str(out),
          "--models", "strong,weak", "--judge", "judge", "--grader", "judge", "--rubric", str(rubric))
    sent = upstreams["judge"].last_body["messages"][0]["content"]
    assert sent.startswith("Grade only correctness") and JUDGE_INSTRUCTIONS not in sent and "Rating: [[n]]" in sent
    table = RoutingTable.from_jsonl(out)
    by_text = {p.text: p.needs_strong for p in prompts}
    weak_col = table.models.index("weak")
    for query, row in zip(table.queries, table.scores):
        assert row[1 - weak_col] == pytest.approx(8 / 9)  # strong: right (9) on every kind
        assert row[weak_col] == pytest.approx(1 / 9 if by_text[query] else 8 / 9)  # weak: wrong (2) on hard kinds
    calls = upstreams["judge"].calls
    # another rubric asks for new verdicts (the journal does not hand back the old rubric's)
    rubric.write_text("Be strict.")
    label(str(write_prompts(tmp_path, [{"prompt": p.text} for p in prompts])), "--config", str(cfg), "--out", str(out),
          "--models", "strong,weak", "--judge", "judge", "--grader", "judge", "--rubric", str(rubric))
    assert upstreams["judge"].calls == calls + 16


def test_pairwise_is_the_default_grader_without_references(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """Issue 26 #8: `label --judge NAME` compares each answer with the priciest model's (pairwise)
    unless every prompt has a reference; the 1-10 judge is still there by name."""
    upstreams["judge"].answer = "A is at least as good. [[C]]"
    cfg = write_config(tmp_path, upstreams["urls"])
    out = tmp_path / "default.jsonl"
    result = label(str(write_prompts(tmp_path, [{"prompt": p["prompt"]} for p in PROMPTS[:3]])), "--config", str(cfg),
                   "--out", str(out), "--models", "strong,weak", "--judge", "judge")
    assert "graded by pairwise" in " ".join(result.output.split()), result.output
    np.testing.assert_array_equal(RoutingTable.from_jsonl(out).scores, [[1.0, 1.0]] * 3)  # a tie counts as good
    assert upstreams["judge"].calls == 3  # weak against strong; strong is the reference, never rated alone
    missing = CliRunner().invoke(app, ["label", str(write_prompts(tmp_path, [{"prompt": "no reference"}])), "--config",
                                       str(cfg), "--out", str(tmp_path / "x.jsonl"), "--models", "strong,weak"])
    assert missing.exit_code == 1 and "pairwise grader needs --judge" in " ".join(missing.output.split())
