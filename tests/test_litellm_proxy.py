"""The real ``litellm`` proxy process (offline, a master key) with Tiny Dancer's shipped callbacks
module, loopback stand-ins as deployments, driven by the official ``openai`` client."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: before litellm is imported
pytest.importorskip("litellm", reason="the LiteLLM integration's tests need litellm (the dev extra)")
pytest.importorskip("backoff", reason="LiteLLM's proxy needs litellm[proxy] (the dev extra)")
openai = pytest.importorskip("openai")

from litellm_helpers import fit_query_router  # noqa: E402

from tinydancer.gateway.standin import StandIn, free_port, running  # noqa: E402

MASTER_KEY = "sk-tinydancer-test-master"
HARD = "question 9999 about cohomology"


def config(su: str, wu: str) -> str:
    """Group 'auto' routed by Tiny Dancer, group 'plain' (the same two deployments) by LiteLLM alone."""
    def entries(group: str, mapped: bool) -> str:
        out = ""
        for model, url, plays in (("big-model", su, "strong"), ("small-model", wu, "weak")):
            out += (f"  - model_name: {group}\n    litellm_params: {{model: openai/{model}, api_base: '{url}/v1', "
                    f"api_key: x}}\n")
            if mapped:
                out += f"    model_info: {{tinydancer_model: {plays}}}\n"
        return out

    return ("model_list:\n" + entries("auto", True) + entries("plain", False)
            + "litellm_settings:\n  callbacks: tinydancer.integrations.litellm_proxy.proxy_handler\n"
            + "router_settings:\n  num_retries: 2\n"
            + f"general_settings:\n  master_key: {MASTER_KEY}\n")


@contextlib.contextmanager
def litellm_proxy(tmp: Path, su: str, wu: str, env_extra: dict[str, str]) -> Iterator[Any]:
    """The ``litellm`` proxy process on a free port with :func:`config`; yields an ``openai`` client."""
    (tmp / "config.yaml").write_text(config(su, wu))
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TINY_DANCER_LITELLM_GROUPS": "auto",
           "TINY_DANCER_LITELLM_DB": str(tmp / "td.db"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]), **env_extra}
    log_file = open(tmp / "proxy.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "litellm"), "--config", str(tmp / "config.yaml"),
                             "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                            cwd=tmp, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("LiteLLM's proxy did not start:\n" + (tmp / "proxy.log").read_text()[-4000:])
            time.sleep(0.5)
        yield openai.OpenAI(base_url=f"{base}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("proxy")
    fit_query_router().save(tmp / "router")
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        env = {"TINY_DANCER_LITELLM_ROUTER": str(tmp / "router"),
               "TINY_DANCER_LITELLM_BUDGET_MS": "2000",  # the test machine is shared: no budget fallbacks here
               "TINY_DANCER_LITELLM_JUDGE": "litellm_helpers:stand_in_judge", "TINY_DANCER_LITELLM_JUDGE_RATE": "1.0"}
        with litellm_proxy(tmp, su, wu, env) as client:
            yield {"client": client, "strong": strong, "weak": weak, "db": tmp / "td.db", "log": tmp / "proxy.log",
                   "router": tmp / "router", "tmp": tmp}


def ask(client: Any, group: str, text: str) -> Any:
    return client.chat.completions.with_raw_response.create(model=group, messages=[{"role": "user", "content": text}])


def db_rows(db: Path, sql: str, want: int, timeout_s: float = 15.0) -> list[tuple[Any, ...]]:
    """Rows of the proxy's log once ``want`` of them are there (its writer runs in the background)."""
    deadline = time.monotonic() + timeout_s
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as conn:
                rows = conn.execute(sql).fetchall()
            if len(rows) >= want:
                break
        time.sleep(0.2)
    return rows


def test_the_proxy_routes_with_the_shipped_callbacks_and_tells_the_client_its_decision(proxy: dict[str, Any]) -> None:
    hard = ask(proxy["client"], "auto", HARD)
    easy = ask(proxy["client"], "auto", "question 9000 about bananas")
    assert hard.parse().choices[0].message.content.startswith("[big-model]"), proxy["log"].read_text()[-3000:]
    assert easy.parse().choices[0].message.content.startswith("[small-model]")
    ids = [r.headers.get("x-tinydancer-decision-id") for r in (hard, easy)]
    assert all(ids) and ids[0] != ids[1], dict(hard.headers)
    rows = db_rows(proxy["db"], "SELECT request_id FROM decisions", 2)
    assert set(ids) <= {r[0] for r in rows}  # the id the client got is the logged decision: feedback can name it


def test_a_stream_through_the_proxy_is_routed_and_logged_as_a_stream(proxy: dict[str, Any]) -> None:
    stream = proxy["client"].chat.completions.create(model="auto", stream=True,
                                                     messages=[{"role": "user", "content": "question 9200 about bananas"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("[small-model]")
    rows = db_rows(proxy["db"], "SELECT target, status FROM calls WHERE stream = 1", 1)
    assert ("weak", "ok") in rows


def test_judged_proxy_traffic_gives_retraining_the_outcomes_it_needs(proxy: dict[str, Any]) -> None:
    """The issue: retrain refused ("only 9 routed queries have feedback, need 200")."""
    import json

    for i in range(220):
        topic = ("apples", "bananas", "topology", "cohomology")[i % 4]
        ask(proxy["client"], "auto", f"question {20_000 + i} about {topic}")
    rows = db_rows(proxy["db"], "SELECT quality FROM outcomes WHERE quality IS NOT NULL", 220, timeout_s=60)
    assert len(rows) >= 220, len(rows)
    out = subprocess.run([str(Path(sys.executable).parent / "tinydancer"), "retrain", "--database-path", str(proxy["db"]),
                          "--query-router", str(proxy["router"]), "--registry", str(proxy["tmp"] / "registry"), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=proxy["tmp"])
    assert "have feedback" not in out.stdout + out.stderr, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["samples"] >= 200 and isinstance(report["promoted"], bool) and report["reason"], report


def test_through_the_proxy_a_dead_deployment_costs_no_more_calls_than_litellm_alone(proxy: dict[str, Any]) -> None:
    """The issue: with the weak deployment dead, plain LiteLLM served 5/5 through the proxy and the
    strategy 0/5.  (Last in this file: LiteLLM cools the dead deployment down for a while.)"""
    proxy["weak"].mode = "500"
    try:
        served = {}
        for group in ("plain", "auto"):
            ok = 0
            for i in range(5):
                try:
                    ask(proxy["client"], group, f"question {9100 + i} about bananas")
                    ok += 1
                except openai.APIError:
                    pass
            served[group] = ok
    finally:
        proxy["weak"].mode = "ok"
    assert served["auto"] >= served["plain"] and served["auto"] == 5, served


def test_through_the_proxy_a_hanging_tiny_dancer_service_costs_at_most_its_budget(tmp_path: Path) -> None:
    """A proxy whose strategy asks a Tiny Dancer service that never answers: every call is
    answered by LiteLLM's own choice, none waits much past the 200 ms budget."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def hang(request: Request) -> Response:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return Response(status_code=499)

    service = Starlette(routes=[Route("/v1/route/query", hang, methods=["POST"])])
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu, running(service) as hung:
        env = {"TINY_DANCER_LITELLM_SERVICE_URL": hung, "TINY_DANCER_LITELLM_BUDGET_MS": "200"}
        with litellm_proxy(tmp_path, su, wu, env) as client:
            durations, headers = [], []
            for i in range(4):
                started = time.perf_counter()
                r = ask(client, "auto", f"question {30_000 + i} about cohomology")
                durations.append(time.perf_counter() - started)
                assert r.parse().choices[0].message.content  # LiteLLM's own choice answered
                headers.append(r.headers.get("x-tinydancer-decision-id"))
            log = (tmp_path / "proxy.log").read_text()
    assert max(durations) < 2.0, durations  # the service hangs for ever
    assert headers == [None] * 4  # no decision was made, none is claimed
    assert "did not answer within the 200 ms budget" in log, log[-3000:]
