"""The off-policy promotion gate on simulated logs with known truth (issue 27's targets that need
no gateway): over 10 seeds, does the doubly robust interval of a promoted router's quality hold
its true quality (target: >= 9 of 10), and is a router trained on shuffled labels ever promoted
(target: never)?

Columns: each router's true mean quality (q) at a strong share of 0.5 on the logged prompts; the
better router's DR estimate and 95 % interval, and whether the truth is inside; the same for IPS,
and IPS's interval width over DR's; whether the gate promoted the better and the shuffled router.

The world: prompts of two kinds, drawn 50/50 — easy (both models answer well 90 % of the time)
and hard (strong 90 %, weak 20 %).  Per seed, three routers on a hashing embedder: the *current*
one (trained on 60 labelled prompts: mediocre), a *better* one (500 prompts) and a *shuffled*
one (500 prompts whose labels belong to other prompts).  The current router serves ``--calls``
prompts at a strong share of 0.5 with ``--explore`` exploration; the log holds what the served
model did.  The gate (server/offpolicy.py) then judges each candidate against the current router
at the same strong share; the truth is each router's exact expected quality on those prompts.

The peer, measured in the same run on the same logs: inverse propensity scoring (IPS), the
textbook estimator, with the same bootstrap; the table gives its interval width against DR's.

    .venv/bin/python benchmarks/offpolicy.py                 # 10 seeds, 3,000 calls, 20 % exploration
    .venv/bin/python benchmarks/offpolicy.py --explore 0.05
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import console, environment, table

from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.server.offpolicy import bootstrap_interval, ips_terms, offpolicy_gate, policy_choices, simulated_log

EMBEDDER = HashingEmbedder(128)
EASY = ["apples", "bananas", "cherries", "grapes"]
HARD = ["topology", "cohomology", "homotopy", "sheaves"]
#: P(a good answer) for (strong, weak) by kind (easy, hard)
TRUTH = np.array([[0.9, 0.9], [0.9, 0.2]])
SHARE = 0.5


def prompts(n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    hard = rng.random(n) < 0.5
    return [f"question {rng.integers(10**6)} about {rng.choice(HARD if h else EASY)}" for h in hard], hard.astype(int)


def router(n: int, rng: np.random.Generator, shuffle: bool = False) -> QueryRouter:
    queries, kind = prompts(n, rng)
    scores = (rng.random((n, 2)) < TRUTH[kind]).astype(float)
    if shuffle:
        scores = scores[rng.permutation(n)]
    table_ = RoutingTable(queries, ["strong", "weak"], scores, np.tile([10.0, 1.0], (n, 1)))
    r = QueryRouter.fit(table_, QueryRouterConfig(hidden_dims=(8,), epochs=20, memory=False, seed=int(rng.integers(1000))),
                        embedder=EMBEDDER)
    r.calibrate(SHARE)
    return r


def one_seed(seed: int, calls: int, explore: float) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    current, better, shuffled = router(60, rng), router(500, rng), router(500, rng, shuffle=True)
    texts, kind = prompts(calls, rng)
    x = EMBEDDER.embed(texts)
    data = simulated_log(x, policy_choices(current, x, SHARE), TRUTH[kind], explore, rng)
    truth = {name: float(TRUTH[kind, policy_choices(r, x, SHARE)].mean())
             for name, r in (("current", current), ("better", better), ("shuffled", shuffled))}
    good = offpolicy_gate(current, better, data, strong_share=SHARE, seed=seed)
    bad = offpolicy_gate(current, shuffled, data, strong_share=SHARE, seed=seed)
    low, high = good.evidence["new"]["ci95"]
    ips = ips_terms(policy_choices(better, x, SHARE), data)
    ips_low, ips_high = bootstrap_interval(ips, seed=seed)
    return {"seed": seed, "truth_current": truth["current"], "truth_better": truth["better"],
            "truth_shuffled": truth["shuffled"], "dr": good.evidence["new"]["estimate"], "dr_low": low, "dr_high": high,
            "ips": float(ips.mean()), "ips_low": ips_low, "ips_high": ips_high,
            "better_promoted": bool(good.passed), "shuffled_promoted": bool(bad.passed),
            "covered": low <= truth["better"] <= high, "ips_covered": ips_low <= truth["better"] <= ips_high}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--explore", type=float, default=0.2)
    args = ap.parse_args()
    console.print(f"[dim]{environment()}; {args.calls} logged calls a seed, {args.explore:.0%} exploration[/]")
    results = [one_seed(seed, args.calls, args.explore) for seed in range(args.seeds)]
    rows = [[r["seed"], f"{r['truth_current']:.3f}", f"{r['truth_better']:.3f}", f"{r['dr']:.3f}",
             f"{r['dr_low']:.3f}-{r['dr_high']:.3f}", "yes" if r["covered"] else "NO", f"{r['ips']:.3f}",
             f"{r['ips_low']:.3f}-{r['ips_high']:.3f}", f"{(r['ips_high'] - r['ips_low']) / (r['dr_high'] - r['dr_low']):.2f}",
             "yes" if r["better_promoted"] else "no", f"{r['truth_shuffled']:.3f}", "YES" if r["shuffled_promoted"] else "no"]
            for r in results]
    console.print(table(f"Off-policy gate, {args.calls} calls, {args.explore:.0%} exploration",
                        ["seed", "q current", "q better", "DR", "DR 95% CI", "in CI", "IPS (peer)", "IPS 95% CI",
                         "IPS/DR width", "promoted", "q shuffled", "shuffled promoted"], rows,
                        key=f"offpolicy-{args.calls}-{args.explore:g}"))
    covered = sum(r["covered"] for r in results)
    promoted = [r for r in results if r["better_promoted"]]
    covered_promoted = sum(r["covered"] for r in promoted)
    shuffled = sum(r["shuffled_promoted"] for r in results)
    console.print(f"promoted better router's truth inside its DR interval: {covered_promoted} of {len(promoted)} promoted "
                  f"({covered} of {len(results)} seeds in all; IPS {sum(r['ips_covered'] for r in results)}); "
                  f"better router promoted in {len(promoted)} of {len(results)}; "
                  f"shuffled-label router promoted in {shuffled} of {len(results)}")
    ok = covered_promoted >= 0.9 * len(promoted) and len(promoted) > 0 and shuffled == 0
    console.print("targets (>= 9 of 10 covered, shuffled never promoted): " + ("met" if ok else "NOT met"))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
