"""Write docs/http.md: a real request and response for every HTTP route, made by calling them.

The gateway (with two stand-in upstreams on loopback, the packaged query router and a freshly
trained candidate model) is served in-process and every route is called once; what it answered
is what the page shows, so the page cannot drift from the code.  Long arrays are cut for reading.

    .venv/bin/python tools/http_examples.py            # rewrites docs/http.md
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tinydancer.demo import train_default_router_model
from tinydancer.gateway import create_gateway_app, default_router_path
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.standin import StandIn, running
from tinydancer.server import ServiceSettings

OUT = Path(__file__).resolve().parents[1] / "docs" / "http.md"

HEAD = """# The HTTP API, route by route

Every request and response below was produced by `tools/http_examples.py`, which serves the
gateway (two stand-in LLMs on loopback as upstreams, the packaged query router, a freshly trained
candidate model) and calls each route once. Long arrays are shortened with `…`; ids and timings
differ from run to run.

Who may call what: `/health*` is open; `/v1/*` needs a client key (`Authorization: Bearer <key>`,
keys from `TINY_DANCER_API_KEYS`) when keys are set; the admin and operator routes (`/admin/*`,
`/info`, `/metrics`, `/docs`, `/openapi.json`) need `TINY_DANCER_AUTH_TOKEN` when it is set, and
`/dashboard*` that token or the session cookie its sign-in form (`/dashboard/login`) sets.
Without credentials, the service answers on a loopback address only. Errors are JSON: FastAPI's
`{"detail": ...}` on the service's routes, OpenAI's `{"error": {...}}` on the gateway's.
"""


def shorten(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) > 6 and all(isinstance(v, (int, float)) for v in value):
            return [*value[:3], "…"]
        return [shorten(v) for v in value[:5]] + (["…"] if len(value) > 5 else [])
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    if isinstance(value, str) and len(value) > 300:
        return value[:300] + "…"
    return value


def section(title: str, method: str, path: str, body: Any, status: int, answer: Any, headers: dict[str, str] | None = None) -> str:
    parts = [f"## `{method} {path}`", "", title, ""]
    if body is not None:
        parts += ["Request:", "", "```json", json.dumps(body, indent=1, ensure_ascii=False), "```", ""]
    shown = "" if not headers else "".join(f"{k}: {v}\n" for k, v in headers.items())
    parts += [f"Response `{status}`:", ""]
    if shown:
        parts += ["```", shown.rstrip(), "```", ""]
    if isinstance(answer, str):
        parts += ["```", answer.rstrip(), "```", ""]
    else:
        parts += ["```json", json.dumps(shorten(answer), indent=1, ensure_ascii=False), "```", ""]
    return "\n".join(parts)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="td-http-"))
    model = tmp / "default.safetensors"
    train_default_router_model(model)
    strong, weak = StandIn("gpt-4o"), StandIn("gpt-4o-mini")
    out = [HEAD]
    with running(strong.app()) as su, running(weak.app()) as wu:
        config = parse_config({"operating_point": {"strong_share": 0.3}, "upstreams": [
            {"name": "strong", "base_url": f"{su}/v1", "model": "gpt-4o", "input_per_million": 2.5, "output_per_million": 10},
            {"name": "weak", "base_url": f"{wu}/v1", "model": "gpt-4o-mini", "input_per_million": 0.15,
             "output_per_million": 0.6}]})
        settings = ServiceSettings(model_path=model, database_path=tmp / "db.sqlite", query_router_path=default_router_path(),
                                   watch_interval_s=0)
        with TestClient(create_gateway_app(config, settings, serve_candidate_model=True)) as c:
            def call(title: str, method: str, path: str, body: Any = None, keep_headers: tuple[str, ...] = ()) -> Any:
                r = c.request(method, path, json=body, headers={"Content-Type": "application/json"} if method != "GET" else {})
                answer: Any = r.text if "json" not in r.headers.get("content-type", "") else r.json()
                if path == "/metrics":
                    answer = "\n".join(line for line in r.text.splitlines() if "gateway_calls_total" in line
                                       or "tiny_dancer_requests_total" in line)
                headers = {h: r.headers[h] for h in keep_headers if h in r.headers}
                out.append(section(title, method, path, body, r.status_code, answer, headers))
                return r

            chat = {"model": "tinydancer", "messages": [{"role": "user", "content": "Prove that √2 is irrational."}]}
            r = call("The gateway: an OpenAI chat completion, routed (`model`: an upstream's name, `tinydancer`, or "
                     "`router-<name>-<threshold>`; the optional `tinydancer` field narrows the models or moves the "
                     "operating point for this call). The answer's headers carry the decision.",
                     "POST", "/v1/chat/completions", chat,
                     ("x-tinydancer-model", "x-tinydancer-decision-id", "x-tinydancer-predicted-quality", "x-tinydancer-attempts",
                      "x-tinydancer-cost", "x-tinydancer-cost-source"))
            decision = r.headers["x-tinydancer-decision-id"]
            stream = {**chat, "stream": True, "tinydancer": {"models": ["weak"]}}
            call("Streamed (server-sent events ending in `data: [DONE]`), narrowed to one upstream.", "POST",
                 "/v1/chat/completions", stream, ("content-type", "x-tinydancer-model"))
            call("Streamed with `stream_options.include_usage`: the final usage chunk carries the call's cost "
                 "(`tinydancer_cost`, `tinydancer_cost_source`).", "POST", "/v1/chat/completions",
                 {**stream, "stream_options": {"include_usage": True}}, ("content-type",))
            call("The routed aliases and the upstreams.", "GET", "/v1/models")
            call("Passed through, not routed (`/v1/completions` and `/v1/responses` alike): `model` names an upstream, "
                 "and the call gets its slots, breaker, size limit and scrubbed errors, without fallback; counted in "
                 "`/metrics`, not logged as a decision.", "POST", "/v1/embeddings",
                 {"model": "weak", "input": "What is the capital of France?"})
            call("How a routed call turned out (here, a gateway call: without `candidate_id` it goes to the model "
                 "that answered). One outcome per decision and target; `\"correction\": true` replaces one.",
                 "POST", "/v1/feedback", {"request_id": decision, "success": True, "quality": 0.9})
            call("Model-tier routing without forwarding: which model should this query go to (text, or an `embedding`; "
                 "optional `strong_share`, or `cost_weight` / `quality_bar` for N-model routers).",
                 "POST", "/v1/route/query", {"query": "What is the capital of France?", "strong_share": 0.5})
            call("LiteLLM's complexity-router classifier protocol: which of the request's tiers (least to most "
                 "demanding) this request needs, from the query router's view of its difficulty. The tiers are cut "
                 "from the live score distribution (the last 2,048 requests) so that the upper half of the tiers takes "
                 "the served strong share of the traffic. Each request is a logged decision: `request_id` is what "
                 "`/v1/feedback` names, `router_model` the model the router would pick at the served operating point.",
                 "POST", "/v1/systemone",
                 {"state": "Prove that there are infinitely many primes.", "model": "tinydancer", "questions": {"tier": {
                     "type": "choice", "instructions": "Pick the tier this request needs.",
                     "criteria": {"SIMPLE": "lookups and chit-chat", "MEDIUM": "ordinary tasks", "COMPLEX": "hard tasks",
                                  "REASONING": "proofs and multi-step reasoning"}}}})
            candidates = {"query_embedding": [0.1, 0.3, 0.5, 0.7], "candidates": [
                {"id": "fast-path", "embedding": [0.1, 0.3, 0.5, 0.6], "success_rate": 0.92, "access_count": 40,
                 "created_at": 1764000000},
                {"id": "careful-path", "embedding": [0.7, 0.1, 0.2, 0.1], "success_rate": 0.6, "access_count": 3,
                 "created_at": 1764700000}]}
            call("The seed's candidate scoring (see docs/candidates.md).", "POST", "/v1/route", candidates)
            call("Spend today (UTC) and daily budget per client key name (`key_budgets` in gateway.yaml; here "
                 "no keys are set, so none are listed).", "GET", "/admin/keys")
            call("Each upstream's breaker, calls in flight and waiting, and the live operating point with the router "
                 "version and how many routed calls its window holds.", "GET", "/admin/upstreams")
            call("Close every upstream's breaker.", "POST", "/admin/upstreams/reset", {})
            call("Liveness.", "GET", "/health")
            call("Readiness: 503 with the reason while the service should not take traffic; when ready, what it serves "
                 "and its process id (after a restart, which process answered).", "GET", "/health/ready")
            call("What this process serves (here the gateway, its query router and, asked for, a candidate model), "
                 "each with its path, version and operating point; versions and storage.", "GET", "/info")
            call("Prometheus text (two of its families shown).", "GET", "/metrics")
            call("Totals, averages and latency percentiles from the stored decisions.", "GET", "/admin/stats")
            call("The dashboard's numbers (`/dashboard` is the page; `?window=` hour, day, week, all or 30m, 12h, 7d; "
                 "`?reference=` an upstream to price the calls at): calls, spend, the same calls at the dearest upstream, "
                 "outcome coverage, per upstream, quality evidence, the router, the last decisions.",
                 "GET", "/dashboard/report.json?window=hour&last=2")
            call("The live thresholds.", "GET", "/admin/config")
            call("Change them (validated: a bad value is a 422).", "PUT", "/admin/config", {"confidence_threshold": 0.8})
            call("The candidate model's circuit breaker.", "GET", "/admin/circuit-breaker")
            call("Close it.", "POST", "/admin/circuit-breaker/reset", {})
            call("Reload the model file (validated first: a bad file keeps the old model).", "POST", "/admin/reload", {})
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(out), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
