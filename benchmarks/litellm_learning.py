"""Issue 31's learning target: after N calls through LiteLLM's proxy with judge sampling on,
``tinydancer retrain`` has the outcomes it needs and promotes or refuses with its evidence.

One run: kind-aware stand-ins on loopback (``big`` answers every kind right, ``small`` only the
easy kinds, ``grader`` grades as a judge by whether the answer carries the question's key), the
real ``litellm`` proxy process (offline, a master key) with the shipped callbacks module, the
packaged router (a copy: a promotion rewrites it), judge sampling (``TINY_DANCER_LITELLM_JUDGE_*``,
the grader at its base_url) and exploration on.  N prompts of ``tinydancer.gateway.prompt_kinds``
(30 % of a kind that needs the strong model) go through group ``auto``; then the ``tinydancer
retrain`` command runs on the proxy's log.  The peer, in the same run: the same log with the
judge's outcomes taken out (what the proxy writes without judge sampling), retrained the same way.

    .venv/bin/python benchmarks/litellm_learning.py [--calls 300] [--share 0.8] [--explore 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: LiteLLM's bundled cost map

from _common import console, environment, litellm_proxy, table  # noqa: E402

from tinydancer.gateway import default_router_path  # noqa: E402
from tinydancer.gateway.prompt_kinds import generate  # noqa: E402
from tinydancer.gateway.standin import StandIn, running  # noqa: E402


def proxy_config(bu: str, su: str) -> str:
    """Group ``auto``: the two stand-ins, priced, each mapped to the router model it plays."""
    lines = ["model_list:"]
    for m, u, plays in (("big", bu, "strong"), ("small", su, "weak")):
        lines.append(f"  - model_name: auto\n    litellm_params: {{model: openai/{m}, api_base: '{u}/v1', api_key: x, "
                     f"input_cost_per_token: {3e-6 if plays == 'strong' else 1e-7}, "
                     f"output_cost_per_token: {1.5e-5 if plays == 'strong' else 4e-7}}}")
        lines.append(f"    model_info: {{tinydancer_model: {plays}}}")
    lines += ["litellm_settings:\n  callbacks: tinydancer.integrations.litellm_proxy.proxy_handler",
              "router_settings:\n  num_retries: 2", "general_settings:\n  master_key: sk-bench"]
    return "\n".join(lines) + "\n"


def wait_rows(db: Path, sql: str, want: int, timeout_s: float = 120.0) -> int:
    """The count ``sql`` gives once it reaches ``want`` or stops growing for 10 s (the proxy writes in the background)."""
    deadline, last, since = time.monotonic() + timeout_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        n = 0
        if db.exists():
            with sqlite3.connect(db) as conn:
                n = conn.execute(sql).fetchone()[0]
        if n >= want:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 10:
            return n
        time.sleep(0.5)
    return last


def retrain(db: Path, router: Path, registry: Path) -> dict:
    out = subprocess.run([str(Path(sys.executable).parent / "tinydancer"), "retrain", "--database-path", str(db),
                          "--query-router", str(router), "--registry", str(registry), "--json"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or not out.stdout.strip().startswith("{"):
        text = " ".join((out.stdout + out.stderr).split())
        return {"samples": None, "promoted": False, "reason": text[text.find("only "):] if "only " in text else text[-200:]}
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--share", type=float, default=0.8, help="the judge's sample_share")
    ap.add_argument("--explore", type=float, default=0.1, help="the strategy's exploration_share")
    args = ap.parse_args()
    console.print(environment())
    import openai

    big, small, grader = StandIn("big", skill="strong"), StandIn("small", skill="weak"), StandIn("grader", skill="strong")
    with running(big.app()) as bu, running(small.app()) as su, running(grader.app()) as gu, \
            tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shutil.copytree(default_router_path(), tmp / "router")
        env = {"TINY_DANCER_LITELLM_ROUTER": str(tmp / "router"), "TINY_DANCER_LITELLM_BUDGET_MS": "500",
               "TINY_DANCER_LITELLM_JUDGE_MODEL": "grader", "TINY_DANCER_LITELLM_JUDGE_BASE_URL": f"{gu}/v1",
               "TINY_DANCER_LITELLM_JUDGE_SHARE": str(args.share), "TINY_DANCER_LITELLM_JUDGE_DAILY_DOLLARS": "1",
               "TINY_DANCER_LITELLM_JUDGE_INPUT_PER_MILLION": "2", "TINY_DANCER_LITELLM_JUDGE_OUTPUT_PER_MILLION": "8",
               "TINY_DANCER_LITELLM_JUDGE_SEED": "1", "TINY_DANCER_LITELLM_EXPLORATION_SHARE": str(args.explore),
               "TINY_DANCER_LITELLM_SEED": "2"}
        env.update({"TINY_DANCER_LITELLM_GROUPS": "auto", "TINY_DANCER_LITELLM_DB": str(tmp / "td.db")})
        with litellm_proxy(tmp, proxy_config(bu, su), env) as port:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0, timeout=60)
            started = time.perf_counter()
            served = 0
            for p in generate(args.calls, seed=31, hard_share=0.3):
                try:
                    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": p.text}])
                    served += 1
                except openai.APIError as exc:
                    console.print(f"a call failed: {exc}")
            seconds = time.perf_counter() - started
            db = tmp / "td.db"
            decisions = wait_rows(db, "SELECT count(*) FROM decisions", served)
            judged = wait_rows(db, "SELECT count(*) FROM outcomes WHERE source = 'judge'", int(decisions * args.share))
        if not judged:
            console.print("no judged outcome; the proxy's log ends:\n" + (tmp / "proxy.log").read_text()[-3000:])
        with sqlite3.connect(db) as conn:
            explored = conn.execute("SELECT count(*) FROM decisions WHERE explored = 1").fetchone()[0]
            mean_q = conn.execute("SELECT avg(quality) FROM outcomes WHERE source = 'judge'").fetchone()[0]
        # the peer: the same log without the judge's outcomes (what the proxy logs with judge sampling off)
        shutil.copy(db, tmp / "peer.db")
        shutil.copytree(default_router_path(), tmp / "peer-router")
        with sqlite3.connect(tmp / "peer.db") as conn:
            conn.execute("DELETE FROM outcomes WHERE source = 'judge'")
        ours = retrain(db, tmp / "router", tmp / "registry")
        peer = retrain(tmp / "peer.db", tmp / "peer-router", tmp / "peer-registry")
        registry_files = sorted(p.name for p in (tmp / "registry").rglob("*") if p.is_file())
        rows = []
        for name, report, outcomes in (("judge sampling on", ours, judged), ("judge outcomes removed (peer)", peer, 0)):
            rows.append([name, str(decisions), str(outcomes), str(report.get("samples")),
                         "promoted" if report.get("promoted") else "refused", str(report.get("reason"))[:200]])
        console.print(table(f"{served}/{args.calls} proxy calls in {seconds:.1f} s, judge share {args.share}, exploration "
                            f"{args.explore} ({explored} explored), mean judged quality {mean_q or 0:.3f}",
                            ["log", "decisions", "judge outcomes", "retrain samples", "retrain", "reason"], rows))
        ratio = f"{judged / max(1, peer.get('samples') or 0):.1f}×" if peer.get("samples") else "peer had none"
        console.print(f"judge outcomes vs the peer's usable samples: {ratio}; registry files: {registry_files}")
        console.print(json.dumps({k: ours.get(k) for k in ("samples", "promoted", "version", "old", "new", "reason")},
                                 default=str)[:2000])


if __name__ == "__main__":
    main()
