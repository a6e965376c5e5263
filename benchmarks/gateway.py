"""The gateway against LiteLLM's proxy, in front of the same stand-in LLM, measured with wrk.

One run, four ways to reach one OpenAI-compatible stand-in (``python -m tinydancer.gateway.standin``,
Starlette, one uvicorn worker):
- directly;
- through our gateway naming a model (``"model": "weak"``: passthrough, logged);
- through our gateway routed (``"model": "tinydancer"``, a distinct prompt per request, so
  every request is embedded and scored: by the packaged router and its embedder, or with
  ``--embedder static|minilm`` by a router trained here, as the packaged one is (RouteLLM's MMLU +
  GSM8K training splits, strong share 0.3), on that embedder);
- through LiteLLM's proxy (``litellm[proxy]``, one worker, offline with a local cost map).
Each at 8 and 32 connections, streaming and not.  "added" is the p50 / p99 over the direct
call's at the same settings.  The gateway process's CPU time per call (from /proc, around each
run) is printed too: on cores shared with other jobs it moves far less than the latencies do.
Every process is on this machine and shares its 2 cores with wrk.  With ``--pin`` the two proxies
(ours and LiteLLM's) run on core 1 and the stand-in and wrk on core 0, as in production, where the
clients and the LLM are on other machines: the proxy under test then competes only with itself.
The direct calls run under the same pinning, so "added" compares like with like.

LiteLLM runs from its own virtual environment (its pins clash with ours):
``python3 -m venv benchmarks/.litellm && benchmarks/.litellm/bin/pip install 'litellm[proxy]'``
(``make bench`` does this).

    .venv/bin/python benchmarks/gateway.py [--duration 8] [--connections 8,32] [--litellm PATH]
        [--embedder packaged|static|minilm] [--no-stream] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import console, environment, free_port, parse_wrk, table, train_router

HERE = Path(__file__).resolve().parent
ROUTED = "gateway, routed"
KEY = "sk-bench-client-key-0123456789"

FIXED = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-client-key-0123456789"
wrk.body = '%s'
"""

# a distinct prompt per request: every one is embedded, none comes from a cache
DISTINCT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-client-key-0123456789"
local n = 0
local topics = {"algebra", "the French revolution", "photosynthesis", "sorting algorithms", "tax law", "poetry"}
request = function()
  n = n + 1
  local body = '{"model":"tinydancer","stream":%s,"messages":[{"role":"user","content":"Question ' .. n ..
    ': explain ' .. topics[(n %% #topics) + 1] .. ' to a student, case ' .. (n * 7919) .. '."}]}'
  return wrk.format(nil, nil, nil, body)
end
"""


def body(model: str, stream: bool) -> str:
    return json.dumps({"model": model, "stream": stream, "messages": [
        {"role": "user", "content": "Explain photosynthesis to a student in two sentences."}]})


def pinned(cpu: int | None):
    """A ``preexec_fn`` that puts the child on one core (Linux), or None when not pinning."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up")


def scrape(url: str) -> dict[str, float]:
    """Sums of the gateway's metrics that say where the time went."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():  # loopback: operator routes are open
        if line.startswith("#"):
            continue
        m = re.match(r'(\w+)(?:\{([^}]*)\})? (\S+)', line)
        if m:
            key = m.group(1) + ("{" + m.group(2) + "}" if m.group(2) else "")
            out[key] = float(m.group(3))
    return out


def histogram_p50(metrics: dict[str, float], name: str, label: str) -> str:
    """The bucket holding the median of a histogram series (an upper bound)."""
    buckets = sorted((float(re.search(r'le="([^"]+)"', k).group(1)), v) for k, v in metrics.items()  # type: ignore[union-attr]
                     if k.startswith(name + "_bucket{") and label in k)
    if not buckets or buckets[-1][1] == 0:
        return "—"
    half = buckets[-1][1] / 2
    edge = next(le for le, count in buckets if count >= half)
    return f"≤ {edge * 1e3:g} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", default="8,32")
    ap.add_argument("--litellm", type=Path, default=HERE / ".litellm" / "bin" / "litellm")
    ap.add_argument("--embedder", choices=("packaged", "static", "minilm"), default="packaged",
                    help="the routed calls' router: the packaged one, or one trained here on this embedder")
    ap.add_argument("--no-stream", action="store_true", help="non-streamed calls only (half the time)")
    ap.add_argument("--router", type=Path, default=None, help="a router folder to route with (instead of --embedder)")
    ap.add_argument("--pin", action="store_true",
                    help="proxies on core 1, the stand-in and wrk on core 0 (as when clients and the LLM are elsewhere)")
    args = ap.parse_args()
    if args.pin and (not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2
                     or not {0, 1} <= os.sched_getaffinity(0)):
        sys.exit("--pin needs Linux and cores 0 and 1 available to this process")
    proxy_cpu, load_cpu = (1, 0) if args.pin else (None, None)
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    litellm = args.litellm if args.litellm.exists() else shutil.which("litellm")
    if litellm is None:
        sys.exit(f"LiteLLM's proxy is needed: python3 -m venv {HERE / '.litellm'} && "
                 f"{HERE / '.litellm' / 'bin' / 'pip'} install 'litellm[proxy]'")
    console.print(environment())
    version = subprocess.run([str(Path(litellm).parent / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip() or "?"
    tmp = Path(tempfile.mkdtemp(prefix="td-gw-"))
    ports = {k: free_port() for k in ("standin", "gateway", "litellm")}
    url = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    routed_by = "the packaged router"
    router = {}
    if args.router is not None:
        routed_by = f"the router in {args.router}"
        router = {"router": str(args.router.resolve())}
    elif args.embedder != "packaged":
        routed_by = train_router(args.embedder, tmp / "router")
        router = {"router": str(tmp / "router")}
    (tmp / "gateway.yaml").write_text(json.dumps({**router, "operating_point": {"strong_share": 0.3}, "upstreams": [
        {"name": n, "base_url": f"{url['standin']}/v1", "model": "standin", "input_per_million": p[0], "output_per_million": p[1],
         "max_concurrency": 256} for n, p in (("strong", (2.5, 10.0)), ("weak", (0.15, 0.6)))]}))
    (tmp / "litellm.yaml").write_text(json.dumps({"model_list": [{"model_name": "standin", "litellm_params": {
        "model": "openai/standin", "api_base": f"{url['standin']}/v1", "api_key": "unused"}}],
        "litellm_settings": {"telemetry": False}}))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # both gateways check a client key on every call, as they would in production (LiteLLM's proxy
    # refuses to start without its master key)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TINY_DANCER_")}, "TINY_DANCER_API_KEYS": KEY}
    procs = [
        subprocess.Popen([sys.executable, "-m", "tinydancer.gateway.standin", "--port", str(ports["standin"]), "--name",
                          "standin"], preexec_fn=pinned(load_cpu), **quiet),
        subprocess.Popen([sys.executable, "-m", "tinydancer", "gateway", "--config", str(tmp / "gateway.yaml"), "--port",
                          str(ports["gateway"]), "--database-path", str(tmp / "gw.db")], env=env, preexec_fn=pinned(proxy_cpu),
                         **quiet),
        subprocess.Popen([str(litellm), "--config", str(tmp / "litellm.yaml"), "--port", str(ports["litellm"]),
                          "--num_workers", "1"], env={**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                                       "LITELLM_MASTER_KEY": KEY, "LITELLM_LOG": "ERROR"},
                         preexec_fn=pinned(proxy_cpu), **quiet),
    ]
    try:
        wait_http(url["standin"] + "/v1/models")
        wait_http(url["gateway"] + "/health/ready")
        wait_http(url["litellm"] + "/health/liveliness", 180)

        def script(name: str, text: str) -> Path:
            path = tmp / f"{name}.lua"
            path.write_text(text)
            return path

        def run(target: str, model: str | None, stream: bool, conns: int, duration: int) -> dict[str, float]:
            s = "true" if stream else "false"
            lua = (script(f"routed-{s}", DISTINCT % s) if model is None
                   else script(f"{target}-{model}-{s}", FIXED % body(model, stream)))
            cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(lua), url[target] + "/v1/chat/completions"]
            before = cpu_seconds(procs[1].pid)
            stats = parse_wrk(subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pinned(load_cpu)).stdout)
            # the gateway process's CPU time per answered call: what other jobs on the cores move least
            stats["gateway_cpu_us"] = (cpu_seconds(procs[1].pid) - before) * 1e6 / max(stats["requests"], 1.0)
            return stats

        ways = [("stand-in directly", "standin", "standin"), ("gateway, named model", "gateway", "weak"),
                (ROUTED, "gateway", None), (f"LiteLLM {version} proxy", "litellm", "standin")]
        console.print(f"routed calls: {routed_by}")
        for _label, target, model in ways:  # warm up every path (LiteLLM and MiniLM load lazily)
            run(target, model, False, 4, 2)
        rows, record = [], {}
        for conns in map(int, args.connections.split(",")):
            for stream in (False,) if args.no_stream else (False, True):
                results = {label: run(target, model, stream, conns, args.duration) for label, target, model in ways}
                base = results["stand-in directly"]
                lite = results[ways[-1][0]]
                for label, stats in results.items():
                    direct = label == "stand-in directly"
                    bad = stats["failed"] + stats["socket_errors"]
                    rows.append([f"{label}, {conns} conn.{', stream' if stream else ''}", f"{stats['rps']:,.0f}",
                                 f"{stats['p50_ms']:.2f}", f"{stats['p99_ms']:.2f}",
                                 "—" if direct else f"{stats['p50_ms'] - base['p50_ms']:+.2f}",
                                 "—" if direct else f"{stats['p99_ms'] - base['p99_ms']:+.2f}",
                                 f"{stats['rps'] / lite['rps']:.1f}×" if lite["rps"] else "—", f"{bad:.0f}"])
                    record[(label, conns, stream)] = stats
        where = ("proxies on core 1, stand-in and wrk on core 0" if args.pin else "2 cores shared by all")
        console.print(table(f"one uvicorn worker each, wrk -t1 -d{args.duration}s on loopback, {where}",
                            ["path", "requests/s", "p50 ms", "p99 ms", "added p50", "added p99", "vs LiteLLM", "failed"], rows))
        m = scrape(url["gateway"])
        batches = m.get("tiny_dancer_gateway_embed_batches_total", 0.0)
        texts = m.get("tiny_dancer_gateway_embedded_prompts_total", 0.0)
        console.print(table("where the gateway's time goes (its /metrics after the runs)", ["measure", "value"], [
            ["median time from request to upstream call, named", histogram_p50(m, "tiny_dancer_gateway_overhead_seconds", 'kind="named"')],
            ["median time from request to upstream call, routed (embedding + router)",
             histogram_p50(m, "tiny_dancer_gateway_overhead_seconds", 'kind="routed"')],
            ["prompts embedded / batches (mean batch)", f"{texts:,.0f} / {batches:,.0f} ({texts / max(batches, 1):.1f})"],
            ["calls logged ok", f"{sum(v for k, v in m.items() if k.startswith('tiny_dancer_gateway_calls_total') and 'ok' in k):,.0f}"],
            *([f"gateway CPU time per call (user + system), {label}, {conns} conn.",
               f"{record[(label, conns, False)]['gateway_cpu_us']:,.0f} µs"]
              for conns in map(int, args.connections.split(",")) for label in ("gateway, named model", ROUTED)),
        ]))
        for conns in map(int, args.connections.split(",")):
            lite = record[(ways[-1][0], conns, False)]
            named = record[("gateway, named model", conns, False)]
            routed = record[(ROUTED, conns, False)]
            base = record[("stand-in directly", conns, False)]
            console.print(f"{conns} conn., not streamed: named {named['rps'] / lite['rps']:.1f}× LiteLLM's requests/s "
                          f"(target ≥ 10×), added p50 {named['p50_ms'] - base['p50_ms']:.2f} ms (target ≤ 2 ms); routed "
                          f"{routed['rps'] / lite['rps']:.1f}× (target ≥ 10×), added p50 "
                          f"{routed['p50_ms'] - base['p50_ms']:.2f} ms (target ≤ 5 ms at 8 conn.)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
