"""Time our routing strategy adds to ``litellm.Router.acompletion``, against LiteLLM's own strategies.

One process, one run.  A stand-in LLM (uvicorn in a thread) answers two deployments of one model
group.  Each row makes the same number of sequential ``acompletion`` calls:
- LiteLLM's default ``simple-shuffle`` (the baseline "added" is measured against);
- ours, a distinct prompt per call (MiniLM embedding + the packaged router on every call);
- ours, one prompt repeated (the strategy's cache hit);
- LiteLLM's ``complexity_router`` (its rule-based classifier, which runs offline).
The second table times the deployment choice alone (``async_get_available_deployment``), which is
what the strategy adds, without the call's own noise.

    .venv/bin/python benchmarks/litellm_integration.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from _common import console, environment, table  # noqa: E402

from tinydancer.gateway import default_router_path  # noqa: E402
from tinydancer.gateway.standin import StandIn, running  # noqa: E402
from tinydancer.integrations.litellm import TinyDancerRoutingStrategy  # noqa: E402

MAPPING = {"openai/big": "strong", "openai/small": "weak"}


def deployments(url: str) -> list[dict]:
    return [{"model_name": "auto", "litellm_params": {"model": f"openai/{m}", "api_base": f"{url}/v1", "api_key": "x"}}
            for m in ("big", "small")]


def prompts(n: int, distinct: bool) -> list[str]:
    topics = ["algebra", "tax law", "poetry", "sorting", "the Roman empire", "photosynthesis"]
    return [f"Question {i if distinct else 0}: explain {topics[(i if distinct else 0) % 6]} to a student."
            for i in range(n)]


def quantiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s) * 1e3, s[min(len(s) - 1, int(0.99 * len(s)))] * 1e3


async def time_calls(router: litellm.Router, model: str, texts: list[str]) -> list[float]:
    out = []
    for t in texts:
        started = time.perf_counter()
        await router.acompletion(model=model, messages=[{"role": "user", "content": t}])
        out.append(time.perf_counter() - started)
    return out


async def time_choice(router: litellm.Router, texts: list[str]) -> list[float]:
    out = []
    for t in texts:
        started = time.perf_counter()
        await router.async_get_available_deployment(model="auto", messages=[{"role": "user", "content": t}], request_kwargs={})
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    console.print(environment() + f", litellm {litellm.__version__ if hasattr(litellm, '__version__') else '1.108.7'}")
    n = args.calls
    with running(StandIn("standin").app()) as url:
        plain = litellm.Router(model_list=deployments(url), routing_strategy="simple-shuffle")
        ours = litellm.Router(model_list=deployments(url))
        strategy = TinyDancerRoutingStrategy(ours, MAPPING, query_router=default_router_path(), strong_share=0.3).install()
        complexity = litellm.Router(model_list=deployments(url) + [{"model_name": "smart", "litellm_params": {
            "model": "auto_router/complexity_router", "complexity_router_config": {
                "tiers": {"SIMPLE": "auto", "MEDIUM": "auto", "COMPLEX": "auto", "REASONING": "auto"}}}}])

        async def run() -> dict[str, tuple[list[float], list[float] | None]]:
            await time_calls(plain, "auto", prompts(20, True))  # warm every path (MiniLM loads lazily)
            await time_calls(ours, "auto", prompts(20, True))
            results: dict[str, tuple[list[float], list[float] | None]] = {}
            results["LiteLLM simple-shuffle"] = (await time_calls(plain, "auto", prompts(n, True)),
                                                 await time_choice(plain, prompts(n, True)))
            distinct = [f"{p} (run 2)" for p in prompts(n, True)]
            results["tinydancer, distinct prompts (embedding)"] = (
                await time_calls(ours, "auto", distinct), await time_choice(ours, [f"{p} (run 3)" for p in prompts(n, True)]))
            results["tinydancer, repeated prompt (cache hit)"] = (await time_calls(ours, "auto", prompts(n, False)),
                                                                 await time_choice(ours, prompts(n, False)))
            try:
                await time_calls(complexity, "smart", prompts(5, True))
                results["LiteLLM complexity_router (rules)"] = (await time_calls(complexity, "smart", prompts(n, True)), None)
            except Exception as exc:  # it may need what this machine lacks: say so instead of a number
                console.print(f"[yellow]complexity_router did not run offline: {type(exc).__name__}: {exc}[/]")
            return results

        results = asyncio.run(run())
    base50, base99 = quantiles(results["LiteLLM simple-shuffle"][0])
    rows = []
    for name, (calls, choice) in results.items():
        p50, p99 = quantiles(calls)
        c50 = "—" if choice is None else f"{quantiles(choice)[0]:.3f}"
        rows.append([name, f"{p50:.2f}", f"{p99:.2f}", "—" if name.startswith("LiteLLM simple") else f"{p50 - base50:+.2f}", c50])
    console.print(table(f"{n} sequential Router.acompletion calls each, one stand-in in-process (ms)",
                        ["strategy", "call p50", "call p99", "added p50", "choice alone p50"], rows))
    console.print(f"fallbacks to LiteLLM's choice during the run: {strategy.fallbacks}; routed: {strategy.routed}")
    console.print("targets: ≤ 5 ms added p50 with the embedding, ≤ 0.5 ms on a cache hit")


if __name__ == "__main__":
    main()
