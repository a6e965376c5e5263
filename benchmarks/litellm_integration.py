"""Time our routing strategy adds to ``litellm.Router.acompletion``, against LiteLLM's own strategies.

One process, one run.  A stand-in LLM (uvicorn in a thread) answers two deployments of one model
group.  Each row makes the same number of sequential ``acompletion`` calls:
- LiteLLM's default ``simple-shuffle`` (the baseline "added" is measured against);
- ours, a distinct prompt per call (MiniLM embedding + the packaged router on every call);
- ours, one prompt repeated (the strategy's cache hit);
- LiteLLM's ``complexity_router`` (its rule-based classifier, which runs offline).
The second table times the deployment choice alone (``async_get_available_deployment``), which is
what the strategy adds, without the call's own noise.

Then, in the same run (issue 31: never worse than LiteLLM alone):
- a dead weak deployment (it answers 500): calls served by plain LiteLLM and by ours, LiteLLM's
  retries on (2, its default);
- a Tiny Dancer service that never answers: what it adds to a call at the default 50 ms budget
  (breaker off, so every call waits the budget), and with the breaker on.

Finally (``--proxy-calls N``, 0 to skip), LiteLLM's proxy process with the shipped callbacks
module: its own ``x-litellm-overhead-duration-ms`` header on a group we route and on the same
deployments in a group LiteLLM routes alone, calls alternated, and calls served with the weak
deployment dead.

    .venv/bin/python benchmarks/litellm_integration.py [--calls 300] [--failure-calls 40] [--proxy-calls 200]
        [--embedder packaged|static|minilm]

``--embedder static`` (or ``minilm``) trains a router as the packaged one is, on that embedder, and
uses it everywhere the packaged one would be (the SDK rows, the failures, the proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from _common import console, environment, table, train_router  # noqa: E402

from tinydancer.gateway import default_router_path  # noqa: E402
from tinydancer.gateway.standin import StandIn, running  # noqa: E402
from tinydancer.integrations.litellm import TinyDancerRoutingStrategy  # noqa: E402

MAPPING = {"openai/big": "strong", "openai/small": "weak"}
#: the query router the strategy uses (--embedder replaces it)
ROUTER: dict[str, object] = {"path": default_router_path(), "label": "MiniLM"}


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


def hanging_service() -> object:
    """A service stand-in whose /v1/route/query never answers (until the client leaves)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def hang(request: object) -> Response:
        while (await request.receive())["type"] != "http.disconnect":  # type: ignore[attr-defined]
            pass
        return Response(status_code=499)

    return Starlette(routes=[Route("/v1/route/query", hang, methods=["POST"])])


async def served(router: litellm.Router, texts: list[str]) -> tuple[int, list[float]]:
    ok, times = 0, []
    for t in texts:
        started = time.perf_counter()
        try:
            await router.acompletion(model="auto", messages=[{"role": "user", "content": t}])
            ok += 1
        except Exception:  # noqa: BLE001 - a failed call is what is counted
            pass
        times.append(time.perf_counter() - started)
    return ok, times


def failures(n: int) -> None:
    """Served calls with a dead deployment, and a hanging service's cost, plain LiteLLM alongside."""
    dead, alive = StandIn("small"), StandIn("big")
    dead.mode = "500"
    with running(alive.app()) as au, running(dead.app()) as du, running(hanging_service()) as hung:
        def model_list(key: str) -> list[dict]:
            """Another api_key, another deployment id: the two routers must not share LiteLLM's cooldowns."""
            return [{"model_name": "auto", "litellm_params": {"model": f"openai/{m}", "api_base": f"{u}/v1", "api_key": key}}
                    for m, u in (("big", au), ("small", du))]

        plain = litellm.Router(model_list=model_list("plain"))
        ours = litellm.Router(model_list=model_list("ours"))
        strategy = TinyDancerRoutingStrategy(ours, MAPPING, query_router=ROUTER["path"], strong_share=0.3).install()
        texts = [f"{p} (dead {i})" for i, p in enumerate(prompts(n, True))]
        plain_ok, plain_t = asyncio.run(served(plain, texts))
        dead_plain = dead.calls
        ours_ok, ours_t = asyncio.run(served(ours, [f"{t}." for t in texts]))
        console.print(table(f"A dead weak deployment (500 on every call), {n} calls each, LiteLLM num_retries=2",
                            ["router", "served", "call p50 ms", "call p99 ms"],
                            [["LiteLLM simple-shuffle", f"{plain_ok}/{n}", *(f"{q:.2f}" for q in quantiles(plain_t))],
                             ["tinydancer (strong_share 0.3)", f"{ours_ok}/{n}", *(f"{q:.2f}" for q in quantiles(ours_t))]]))
        console.print(f"our decisions: {strategy.routed}; fallbacks: {strategy.stats()['fallback_causes']}; "
                      f"attempts on the dead deployment: LiteLLM {dead_plain}, ours {dead.calls - dead_plain} "
                      "(each router cools it down after its first failures)")

        alive_list = [{"model_name": "auto", "litellm_params": {"model": f"openai/{m}", "api_base": f"{au}/v1", "api_key": "x"}}
                      for m in ("big", "small")]
        base = litellm.Router(model_list=alive_list)
        no_breaker = litellm.Router(model_list=alive_list)
        s1 = TinyDancerRoutingStrategy(no_breaker, MAPPING, service_url=hung, breaker_threshold=10**9).install()
        with_breaker = litellm.Router(model_list=alive_list)
        s2 = TinyDancerRoutingStrategy(with_breaker, MAPPING, service_url=hung).install()
        texts = prompts(n, True)
        _, base_t = asyncio.run(served(base, texts))
        _, nb_t = asyncio.run(served(no_breaker, texts))
        _, wb_t = asyncio.run(served(with_breaker, texts))
        b50 = quantiles(base_t)[0]
        rows = [["LiteLLM alone", f"{b50:.2f}", f"{quantiles(base_t)[1]:.2f}", "—", "—"],
                ["service hangs, budget 50 ms, no breaker", *(f"{q:.2f}" for q in quantiles(nb_t)),
                 f"{quantiles(nb_t)[0] - b50:+.2f}", str(s1.stats()["fallback_causes"])],
                ["service hangs, budget 50 ms, breaker (5 failures)", *(f"{q:.2f}" for q in quantiles(wb_t)),
                 f"{quantiles(wb_t)[0] - b50:+.2f}", str(s2.stats()["fallback_causes"])]]
        console.print(table(f"A Tiny Dancer service that never answers, {n} calls each (ms)",
                            ["setup", "call p50", "call p99", "added p50", "fallbacks by cause"], rows))


def proxy_run(n: int) -> None:
    """The proxy process (offline, a master key), the packaged router, stand-ins as deployments."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import httpx
    import openai

    from tinydancer.gateway.standin import free_port

    big, small = StandIn("big"), StandIn("small")
    with running(big.app()) as bu, running(small.app()) as su, tempfile.TemporaryDirectory() as tmp:
        lines = ["model_list:"]
        for group, mapped in (("auto", True), ("plain", False)):
            for m, u, plays in (("big", bu, "strong"), ("small", su, "weak")):
                lines.append(f"  - model_name: {group}\n    litellm_params: {{model: openai/{m}, api_base: '{u}/v1', api_key: x}}")
                if mapped:
                    lines.append(f"    model_info: {{tinydancer_model: {plays}}}")
        lines += ["litellm_settings:\n  callbacks: tinydancer.integrations.litellm_proxy.proxy_handler",
                  "router_settings:\n  num_retries: 2", "general_settings:\n  master_key: sk-bench"]
        Path(tmp, "config.yaml").write_text("\n".join(lines) + "\n")
        port = free_port()
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TINY_DANCER_LITELLM_GROUPS": "auto",
               "TINY_DANCER_LITELLM_STRONG_SHARE": "0.3", "TINY_DANCER_LITELLM_DB": str(Path(tmp, "td.db")),
               "TINY_DANCER_LITELLM_ROUTER": str(ROUTER["path"])}
        log = open(Path(tmp, "proxy.log"), "wb")
        proc = subprocess.Popen([str(Path(sys.executable).parent / "litellm"), "--config", str(Path(tmp, "config.yaml")),
                                 "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"], cwd=tmp, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the proxy did not start:\n" + Path(tmp, "proxy.log").read_text()[-3000:])
                time.sleep(0.5)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0)
            nonce = f"{time.time_ns() % 10**9:09d}"

            def call(group: str, text: str) -> tuple[float, float | None]:
                started = time.perf_counter()
                r = client.chat.completions.with_raw_response.create(model=group, messages=[{"role": "user", "content": text}])
                r.parse()
                over = r.headers.get("x-litellm-overhead-duration-ms")
                return time.perf_counter() - started, None if over in (None, "None") else float(over)

            for i in range(10):  # warm both paths (MiniLM loads in the proxy's warm-up thread)
                call("plain", f"warm {i}")
                call("auto", f"warm {i}")
            time.sleep(3)
            out: dict[str, list[tuple[float, float | None]]] = {"plain": [], "auto distinct": [], "auto repeated": []}
            for i, text in enumerate(prompts(n, True)):
                out["plain"].append(call("plain", f"{text} ({nonce})"))
                out["auto distinct"].append(call("auto", f"{text} ({nonce} {i})"))
                out["auto repeated"].append(call("auto", prompts(1, False)[0]))
            rows = []
            for name, samples in out.items():
                overheads = [o for _, o in samples if o is not None]
                rows.append([name, f"{quantiles([t for t, _ in samples])[0]:.2f}",
                             f"{statistics.median(overheads):.2f}" if overheads else "—",
                             f"{quantiles([o / 1e3 for o in overheads])[1]:.2f}" if overheads else "—"])
            console.print(table(f"LiteLLM's proxy, {n} calls a row, alternated (ms)",
                                ["group", "client call p50", "x-litellm-overhead p50", "overhead p99"], rows))
            small.mode = "500"
            served = {"plain": 0, "auto": 0}
            for group in ("plain", "auto"):
                for i in range(20):
                    try:
                        call(group, f"dead {group} {i} {nonce}")
                        served[group] += 1
                    except openai.APIError:
                        pass
            console.print(f"weak deployment dead, 20 calls a group: served plain {served['plain']}/20, "
                          f"auto {served['auto']}/20")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--failure-calls", type=int, default=40)
    ap.add_argument("--proxy-calls", type=int, default=200)
    ap.add_argument("--embedder", choices=("packaged", "static", "minilm"), default="packaged",
                    help="the packaged router (MiniLM), or one trained here on this embedder")
    ap.add_argument("--router", type=Path, default=None, help="a router folder to use (instead of --embedder)")
    args = ap.parse_args()
    if args.router is not None:
        ROUTER.update(path=args.router, label=f"the router in {args.router}")
    elif args.embedder != "packaged":
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="td-litellm-router-"))
        ROUTER.update(path=folder, label=train_router(args.embedder, folder))
    console.print(environment() + f", litellm {litellm.__version__ if hasattr(litellm, '__version__') else '1.108.7'}")
    n = args.calls
    with running(StandIn("standin").app()) as url:
        plain = litellm.Router(model_list=deployments(url), routing_strategy="simple-shuffle")
        ours = litellm.Router(model_list=deployments(url))
        strategy = TinyDancerRoutingStrategy(ours, MAPPING, query_router=ROUTER["path"], strong_share=0.3).install()
        complexity = litellm.Router(model_list=deployments(url) + [{"model_name": "smart", "litellm_params": {
            "model": "auto_router/complexity_router", "complexity_router_config": {
                "tiers": {"SIMPLE": "auto", "MEDIUM": "auto", "COMPLEX": "auto", "REASONING": "auto"}}}}])

        # prompts no earlier run has seen: the embedding cache on disk must not answer for MiniLM
        nonce = f"{time.time_ns() % 10**9:09d}"

        async def paired(a: litellm.Router, b: litellm.Router, ta: list[str], tb: list[str]) -> tuple[list[float], list[float]]:
            """Alternate the two routers call by call: both see the same machine noise (2 shared cores)."""
            out_a: list[float] = []
            out_b: list[float] = []
            for x, y in zip(ta, tb):
                out_a += await time_calls(a, "auto", [x])
                out_b += await time_calls(b, "auto", [y])
            return out_a, out_b

        async def run() -> list[list[str]]:
            await time_calls(plain, "auto", prompts(20, True))  # warm every path
            await time_calls(ours, "auto", prompts(20, True))
            rows = []
            base, distinct = await paired(plain, ours, prompts(n, True), [f"{p} ({nonce} a)" for p in prompts(n, True)])
            base_choice = await time_choice(plain, prompts(n, True))
            rows.append(["LiteLLM simple-shuffle", *quantiles(base), None, quantiles(base_choice)[0]])
            choice = await time_choice(ours, [f"{p} ({nonce} b)" for p in prompts(n, True)])
            rows.append([f"tinydancer, distinct prompts ({ROUTER['label']} every call)", *quantiles(distinct),
                         quantiles(distinct)[0] - quantiles(base)[0], quantiles(choice)[0]])
            base2, repeated = await paired(plain, ours, prompts(n, True), prompts(n, False))
            choice = await time_choice(ours, prompts(n, False))
            rows.append(["tinydancer, repeated prompt (cache hit)", *quantiles(repeated),
                         quantiles(repeated)[0] - quantiles(base2)[0], quantiles(choice)[0]])
            try:
                await time_calls(complexity, "smart", prompts(5, True))
                calls = await time_calls(complexity, "smart", prompts(n, True))
                rows.append(["LiteLLM complexity_router (rules, not paired)", *quantiles(calls),
                             quantiles(calls)[0] - quantiles(base)[0], None])
            except Exception as exc:  # it may need what this machine lacks: say so instead of a number
                console.print(f"[yellow]complexity_router did not run offline: {type(exc).__name__}: {exc}[/]")
            return [[r[0], f"{r[1]:.2f}", f"{r[2]:.2f}", "—" if r[3] is None else f"{r[3]:+.2f}",
                     "—" if r[4] is None else f"{r[4]:.3f}"] for r in rows]

        rows = asyncio.run(run())
    console.print(table(f"{n} Router.acompletion calls each, one stand-in in-process; ours alternated call by call "
                        "with simple-shuffle (ms)", ["strategy", "call p50", "call p99", "added p50 (paired)",
                                                     "choice alone p50"], rows))
    console.print(f"fallbacks to LiteLLM's choice during the run: {strategy.fallbacks}; routed: {strategy.routed}")
    console.print("targets: ≤ 2 ms added p50 over LiteLLM's router (issue 31), ≤ 0.5 ms on a cache hit")
    failures(args.failure_calls)
    if args.proxy_calls:
        proxy_run(args.proxy_calls)


if __name__ == "__main__":
    main()
