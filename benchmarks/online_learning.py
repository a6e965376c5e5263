"""A gateway that learns its traffic by itself: judged samples → retraining → hot reload (issue 27).

Simulated traffic of six prompt kinds (tinydancer.gateway.prompt_kinds: small talk, look-ups and
arithmetic, which a weak model answers well; proofs, code reviews and multi-step problems, which
need a strong one) goes through the real gateway (in this process, over loopback, with the
official ``openai`` client) to kind-aware stand-ins: ``weak`` (right on the easy kinds only),
``strong`` (right on all) and a ``judge`` that grades by the answer's correctness.  The gateway
starts from the packaged router, with no manual step:

- the judge grades a share of the answered routed calls (``judge:`` in gateway.yaml); each grade is
  an outcome (source ``judge``) of the model that answered;
- every ``--retrain-every`` calls, the existing retraining (server/learning.py
  ``retrain_query_router``, what ``tinydancer retrain`` runs) fine-tunes the router on those
  outcomes and promotes it if its gate passes; the gateway hot-reloads the promoted file.

Ground truth is the prompt's kind: a call's quality is 1 when it went to strong or its kind is easy.
The table gives, per window of calls, quality, $ a call, strong share, the share of easy prompts
sent to weak and of hard ones sent to strong, the explored share (when the gateway has
``exploration``, issue 27 item 2) and the judge's spending; then the packaged router (first
window) against the learnt one (last window, and a fresh held-out set routed by the final router),
with always-strong and the oracle priced on the same tokens, and the bound on the last 500 calls:
a perfect ranking at the same live operating point with the same exploration draws (where it
misses a target, so would any router: the traffic's mix in the live window differs from the
configured share).  The live strong share is printed as the gateway's metric (its live window)
beside the last 500 calls' strong share and hard share.

    python benchmarks/online_learning.py --calls 3000 --seed 0 --strong-share 0.3 --explore 0.02
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from _common import console, environment, table

PRICES = {"strong": (5.0, 15.0), "weak": (0.15, 0.6), "judge": (2.5, 10.0)}  # $ per million tokens (in, out)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hard-share", type=float, default=0.3, help="the true share of needs-strong prompts in the traffic")
    ap.add_argument("--strong-share", type=float, default=None, help="the operating point (default: --hard-share)")
    ap.add_argument("--explore", type=float, default=0.0, help="exploration share (written only if the gateway has it)")
    ap.add_argument("--judge-share", type=float, default=0.2, help="judge.sample_share")
    ap.add_argument("--judge-dollars", type=float, default=5.0, help="judge.daily_dollars")
    ap.add_argument("--retrain-every", type=int, default=500, help="calls between two looks at the log")
    ap.add_argument("--min-new-outcomes", type=int, default=0,
                    help="a look retrains only when this many new grades arrived since the last retrain "
                         "(learning.min_new_outcomes; 0: every look)")
    ap.add_argument("--live-window", type=int, default=2000, help="operating_point.live_window (the gateway's default)")
    ap.add_argument("--window", type=int, default=250, help="calls per row of the table")
    ap.add_argument("--heldout", type=int, default=1000, help="fresh prompts routed by the final router")
    ap.add_argument("--min-samples", type=int, default=50, help="retraining's min_samples")
    ap.add_argument("--allow-mix-shift", action="store_true", help="retraining's --allow-mix-shift")
    ap.add_argument("--bound-seeds", type=int, default=0,
                    help="no gateway: the perfect-ranking bound over this many traffic seeds (how often any router can "
                         "meet the targets at this point)")
    ap.add_argument("--plot", type=Path, default=None, help="write PNG plots with this prefix (needs the plot extra)")
    return ap.parse_args()


def gateway_yaml(folder: Path, urls: dict[str, str], args: argparse.Namespace, share: float) -> Path:
    from tinydancer.gateway.config import GatewayConfig

    lines = [f"router: {folder / 'router'}", f"operating_point: {{strong_share: {share}, live_window: {args.live_window}}}",
             "upstreams:"]
    for name, (inp, out) in PRICES.items():
        lines.append(f"  - {{name: {name}, base_url: '{urls[name]}/v1', model: {name}-model, "
                     f"input_per_million: {inp}, output_per_million: {out}}}")
    lines.append(f"judge: {{upstream: judge, sample_share: {args.judge_share}, daily_dollars: {args.judge_dollars}, "
                 f"seed: {args.seed}}}")
    if args.explore > 0:
        if "exploration" in GatewayConfig.model_fields:
            lines.append(f"exploration: {{share: {args.explore}, seed: {args.seed}}}")
        else:
            warnings.warn("this gateway has no `exploration` setting yet (issue 27 item 2): running without exploration",
                          stacklevel=1)
    path = folder / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def judge_outcomes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outcomes WHERE source = 'judge'").fetchone()[0])


def explored(db: Path, ids: list[str]) -> np.ndarray | None:
    """Per call, whether exploration chose its model (the log's ``decisions.explored``); None when
    the log has no such column (a gateway without exploration)."""
    with sqlite3.connect(db) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(decisions)")]
        if "explored" not in columns:
            return None
        rows = dict(conn.execute("SELECT request_id, explored FROM decisions"))
    return np.array([bool(rows.get(i)) for i in ids])


def wait_for(check: Any, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def retrain(gw: Any, db: Path, folder: Path, args: argparse.Namespace, graded: Any) -> str:
    """Let the judge finish, then retrain as `tinydancer retrain` does; wait for the hot reload."""
    from tinydancer.errors import TinyDancerError
    from tinydancer.server.learning import RetrainConfig, retrain_query_router
    from tinydancer.server.registry import ModelRegistry
    from tinydancer.server.storage import SQLiteStorage

    wait_for(lambda: gw.judge.held == 0)
    wait_for(lambda: judge_outcomes(db) >= graded())
    storage = SQLiteStorage(db)
    try:
        report = retrain_query_router(storage, folder / "router", ModelRegistry(folder / "registry"),
                                      RetrainConfig(min_samples=args.min_samples, seed=args.seed,
                                                    allow_mix_shift=args.allow_mix_shift))
    except TinyDancerError as exc:
        return f"not retrained: {exc}"
    finally:
        storage.close()
    if report.promoted and not wait_for(lambda: gw.router_version == report.version, 30.0):
        return f"promoted {report.version}, but the gateway did not reload it"
    shift = report.registry_entry.get("metrics", {}).get("gate", {}).get("shift", float("nan"))
    return (f"{'promoted' if report.promoted else 'kept the served router'} ({report.samples} outcomes; held-out "
            f"squared error {report.old['squared_error']:.4f} → {report.new['squared_error']:.4f}; routing mix moved "
            f"{shift:.3f})")


def route_offline(gw: Any, texts: list[str], memory: bool = True) -> list[str]:
    """The served router's choices for ``texts`` at the gateway's operating point (no call made);
    ``memory=False``: the network alone, without the outcomes it remembers by text."""
    router = gw.router
    emb = gw.embedder.embed(texts)
    out = router.estimate(emb)
    if memory:
        out = router.remember(texts, out)[0]
    allowed = [up is not None for up in gw.player]
    return [router.models[router.ranking(row.tolist(), gw.point, allowed)[0]] for row in out]


def score_ties(gw: Any, texts: list[str]) -> str:
    """How the final router's strong-advantage scores sit around its threshold (network alone): why a
    configured strong share can or cannot be honoured."""
    adv = gw.router.estimate(gw.embedder.embed(texts))[:, 2]
    thr = gw.point.threshold
    top = float(adv.max())
    return (f"threshold {thr:.6f}; {100 * np.mean(adv >= thr):.1f} % of fresh prompts score at or above it, "
            f"{100 * np.mean(adv == top):.1f} % at the maximum score {top:.6f}, {len(np.unique(adv))} distinct scores "
            f"of {len(adv)}")


def perfect_ranking(hard: np.ndarray, explored_mask: np.ndarray | None, share: float, window: int,
                    seed: int) -> np.ndarray:
    """Which calls a router that ranks every hard prompt above every easy one would have sent to
    strong, at the same live operating point (the ``share`` quantile of the last ``window`` calls'
    scores, refreshed every ``window // 200`` calls, as gateway/operating.py does) and with the
    same exploration draws: the best any router could do on this traffic at this point.  Where it
    misses a target, the miss comes from the traffic's mix against the configured share, not from
    learning."""
    score = hard + 0.5 * np.random.default_rng(seed).random(len(hard))  # random order within a group
    threshold = np.full(len(hard), 0.75)  # the first calls: the perfect split itself
    refresh = max(1, window // 200)
    for t in range(50, len(hard), refresh):
        threshold[t:t + refresh] = np.quantile(score[max(0, t - window):t], 1.0 - share)
    strong = score >= threshold
    return strong if explored_mask is None else strong ^ explored_mask  # two models: explored = the other one


def bound_over_seeds(args: argparse.Namespace, share: float) -> None:
    """How often a perfect ranking meets the targets in the last 500 calls, over ``--bound-seeds``
    traffic seeds (the exploration draws Bernoulli(--explore), as the gateway's): the ceiling of the
    benchmark's pass rate at this operating point, live window and exploration."""
    from tinydancer.gateway.prompt_kinds import generate

    out = []
    for seed in range(args.bound_seeds):
        hard = np.array([p.needs_strong for p in generate(args.calls, seed, args.hard_share)])
        explored_mask = np.random.default_rng([seed, 1]).random(args.calls) < args.explore
        strong = perfect_ranking(hard, explored_mask, share, args.live_window, seed)
        last, live = slice(args.calls - 500, args.calls), slice(max(0, args.calls - args.live_window), args.calls)
        out.append(((~strong[last])[~hard[last]].mean(), strong[last][hard[last]].mean(), strong[last].mean(),
                    strong[live].mean()))
    r = np.array(out)
    met = (r[:, 0] >= 0.9) & (r[:, 1] >= 0.9)
    rows = [["both ≥ 90 % (easy→weak, hard→strong), last 500", f"{100 * met.mean():.1f}",
             f"{100 * met.mean() ** 10:.1f}"],
            ["strong share of the last 500 within ±3 points", f"{100 * (np.abs(r[:, 2] - share) <= 0.03).mean():.1f}",
             f"{100 * (np.abs(r[:, 2] - share) <= 0.03).mean() ** 10:.1f}"],
            [f"live strong share (last {args.live_window}) within ±3 points",
             f"{100 * (np.abs(r[:, 3] - share) <= 0.03).mean():.1f}",
             f"{100 * (np.abs(r[:, 3] - share) <= 0.03).mean() ** 10:.1f}"]]
    console.print(table(f"A perfect ranking at strong_share {share}, live window {args.live_window}, exploration "
                        f"{args.explore}, hard share {args.hard_share}, {args.calls} calls: {args.bound_seeds} traffic seeds",
                        ["target", "% of seeds met", "% chance 10 of 10 seeds meet it"], rows))
    console.print(f"hard→strong in the last 500: min {100 * r[:, 1].min():.1f} %, 5th percentile "
                  f"{100 * np.percentile(r[:, 1], 5):.1f} %; easy→weak min {100 * r[:, 0].min():.1f} %")


def main() -> None:
    args = parse_args()
    if args.bound_seeds:
        bound_over_seeds(args, args.hard_share if args.strong_share is None else args.strong_share)
        return
    import openai

    from tinydancer.gateway import create_gateway_app, load_config
    from tinydancer.gateway.prompt_kinds import generate
    from tinydancer.gateway.standin import StandIn, running
    from tinydancer.gateway.state import default_router_path
    from tinydancer.server import ServiceSettings

    share = args.hard_share if args.strong_share is None else args.strong_share
    traffic = generate(args.calls, args.seed, args.hard_share)
    folder = Path(tempfile.mkdtemp(prefix="td-online-"))
    shutil.copytree(default_router_path(), folder / "router")
    stand_ins = {"strong": StandIn("strong-model", skill="strong"), "weak": StandIn("weak-model", skill="weak"),
                 "judge": StandIn("judge-model", skill="strong")}
    started = time.perf_counter()
    with running(stand_ins["strong"].app()) as su, running(stand_ins["weak"].app()) as wu, \
            running(stand_ins["judge"].app()) as ju:
        cfg = load_config(gateway_yaml(folder, {"strong": su, "weak": wu, "judge": ju}, args, share))
        db = folder / "gateway.db"
        app = create_gateway_app(cfg, ServiceSettings(database_path=db, watch_interval_s=0.2))
        gw = app.state.gateway
        graded = lambda: gw.judge.metrics.judged.labels("graded")._value.get()  # noqa: E731
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=2)
            served, costs, tokens, ids, events = [], [], [], [], []
            graded_at_retrain = 0.0
            for i, p in enumerate(traffic):
                raw = client.chat.completions.with_raw_response.create(
                    model="tinydancer", messages=[{"role": "user", "content": p.text}])
                usage = raw.parse().usage
                model = raw.headers["x-tinydancer-model"]
                served.append(model)
                ids.append(raw.headers["x-tinydancer-decision-id"])
                tokens.append((usage.prompt_tokens, usage.completion_tokens))
                inp, out = PRICES[model]
                costs.append((usage.prompt_tokens * inp + usage.completion_tokens * out) / 1e6)
                if (i + 1) % args.retrain_every == 0 and i + 1 < len(traffic):
                    # as learning.min_new_outcomes does in the gateway: a turn with too few new grades is skipped
                    if graded() - graded_at_retrain < args.min_new_outcomes:
                        continue
                    graded_at_retrain = graded()
                    events.append((i + 1, retrain(gw, db, folder, args, graded)))
                    console.print(f"[dim]{i + 1} calls: {events[-1][1]}[/]")
            wait_for(lambda: gw.judge.held == 0)
            judge_spent = gw.judge.budget.spent
            live_share = (gw.tally.strong_share(), gw.tally.n)  # the gateway's own metric, over its window
            heldout = generate(args.heldout, args.seed + 10_000, args.hard_share)
            final_choice = route_offline(gw, [p.text for p in heldout])
            no_memory = route_offline(gw, [p.text for p in heldout], memory=False)
            ties = score_ties(gw, [p.text for p in heldout])
            n_judged = int(graded())
        explored_mask = explored(db, ids)
    elapsed = time.perf_counter() - started
    report(args, share, traffic, served, costs, tokens, explored_mask, events, heldout, (final_choice, no_memory),
           judge_spent, n_judged, elapsed, live_share)
    console.print(f"the final router's scores: {ties}")
    shutil.rmtree(folder, ignore_errors=True)


def report(args: argparse.Namespace, share: float, traffic: list[Any], served: list[str], costs: list[float],
           tokens: list[tuple[int, int]], explored_mask: np.ndarray | None, events: list[tuple[int, str]],
           heldout: list[Any], final: tuple[list[str], list[str]], judge_spent: float, n_judged: int,
           elapsed: float, live_share: tuple[float, int]) -> None:
    hard = np.array([p.needs_strong for p in traffic])
    strong = np.array([m == "strong" for m in served])
    quality = (strong | ~hard).astype(float)
    cost = np.array(costs)
    tok = np.array(tokens, dtype=float)
    always_strong = (tok[:, 0] * PRICES["strong"][0] + tok[:, 1] * PRICES["strong"][1]) / 1e6
    always_weak = (tok[:, 0] * PRICES["weak"][0] + tok[:, 1] * PRICES["weak"][1]) / 1e6
    oracle = np.where(hard, always_strong, always_weak)

    def pct(mask: np.ndarray, of: np.ndarray) -> str:
        return f"{100 * mask[of].mean():.1f}" if of.any() else "-"

    rows = []
    for lo in range(0, len(traffic), args.window):
        s = slice(lo, min(lo + args.window, len(traffic)))
        h, st = hard[s], strong[s]
        exp = "n/a" if explored_mask is None else f"{100 * explored_mask[s].mean():.1f}"
        rows.append([s.stop, f"{quality[s].mean():.3f}", f"{1e6 * cost[s].mean():.1f}", f"{100 * st.mean():.1f}",
                     pct(~st, ~h), pct(st, h), exp])
    console.print(table(f"Online learning, {args.calls} calls, seed {args.seed}, hard share {args.hard_share}, "
                        f"strong_share {share}, judge share {args.judge_share} (retrain every {args.retrain_every})",
                        ["calls served", "quality", "µ$ / call", "strong %", "easy→weak %", "hard→strong %",
                         "explored %"], rows))
    last = slice(max(0, len(traffic) - 500), len(traffic))
    first = slice(0, min(500, len(traffic)))
    h_hard = np.array([p.needs_strong for p in heldout])

    summary = []
    for name, s in (("packaged router (first 500 calls)", first), ("after learning (last 500 calls)", last)):
        summary.append([name, f"{quality[s].mean():.3f}", f"{1e6 * cost[s].mean():.1f}", f"{100 * strong[s].mean():.1f}",
                        pct(~strong[s], ~hard[s]), pct(strong[s], hard[s])])
    for name, choice in ((f"final router, {len(heldout)} fresh prompts (offline)", final[0]),
                         ("  the same, network alone (no outcome memory)", final[1])):
        h_strong = np.array([m == "strong" for m in choice])
        summary.append([name, f"{(h_strong | ~h_hard).mean():.3f}", "-", f"{100 * h_strong.mean():.1f}",
                        pct(~h_strong, ~h_hard), pct(h_strong, h_hard)])
    summary.append(["always strong (same tokens)", "1.000", f"{1e6 * always_strong.mean():.1f}", "100.0", "0.0", "100.0"])
    bound = perfect_ranking(hard, explored_mask, share, args.live_window, args.seed)
    summary.append([f"perfect ranking at the same live point and exploration (last 500)", f"{(bound | ~hard)[last].mean():.3f}",
                    "-", f"{100 * bound[last].mean():.1f}", pct(~bound[last], ~hard[last]), pct(bound[last], hard[last])])
    summary.append(["oracle (same tokens)", "1.000", f"{1e6 * oracle.mean():.1f}", f"{100 * hard.mean():.1f}", "100.0",
                    "100.0"])
    console.print(table("Before and after, and peers priced on the same tokens",
                        ["router", "quality", "µ$ / call", "strong %", "easy→weak %", "hard→strong %"], summary,
                        key=f"online_learning_seed{args.seed}"))
    q_first, q_last = quality[first].mean(), quality[last].mean()
    console.print(f"quality last/first: {q_last / q_first:.3f}×; cost last/always-strong: "
                  f"{cost[last].mean() / always_strong[last].mean():.3f}×")
    ew, hs = (~strong[last])[~hard[last]].mean(), strong[last][hard[last]].mean()
    exp_share = None if explored_mask is None else float(explored_mask.mean())
    console.print(f"targets after {args.calls} calls (last 500): easy→weak {100 * ew:.1f} % (≥ 90), hard→strong "
                  f"{100 * hs:.1f} % (≥ 90); explored "
                  + ("n/a (no exploration in this gateway)" if exp_share is None else f"{100 * exp_share:.2f} % (≤ 3)")
                  + f"; judge ${judge_spent:.4f} for {n_judged} grades (budget ${args.judge_dollars:g} a day)")
    console.print(f"live strong share (the gateway's metric, its last {live_share[1]} routed calls) "
                  f"{100 * live_share[0]:.1f} % at {100 * share:g} % (±3); strong {100 * strong[last].mean():.1f} % of "
                  f"the last 500 calls, whose hard share is {100 * hard[last].mean():.1f} %")
    for at, what in events:
        console.print(f"  retrain at {at}: {what}")
    console.print(f"[dim]{elapsed:.0f} s; {environment()}[/]")
    if args.plot is not None:
        plot(args, rows, args.plot)


def plot(args: argparse.Namespace, rows: list[list[Any]], prefix: Path) -> None:
    from tinydancer.plotting import plot_lines

    x = [float(r[0]) for r in rows]
    col = lambda j: [float(r[j]) if r[j] not in ("-", "n/a") else float("nan") for r in rows]  # noqa: E731
    shares = {"quality × 100": (x, [100 * q for q in col(1)]), "strong %": (x, col(3)), "easy→weak %": (x, col(4)),
              "hard→strong %": (x, col(5))}
    if rows and rows[0][6] != "n/a":
        shares["explored %"] = (x, col(6))
    a = plot_lines(shares, f"{prefix}-routing.png", xlabel="calls served", ylabel="%", title="Routing as the gateway learns",
                   hlines={"target 90 %": 90.0})
    b = plot_lines({"µ$ / call": (x, col(2))}, f"{prefix}-cost.png", xlabel="calls served", ylabel="µ$ per call",
                   title="Cost per call as the gateway learns")
    console.print(f"plots: {a}, {b}" if a else "install tinydancer[plot] for plots")


if __name__ == "__main__":
    main()
