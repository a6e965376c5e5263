"""The OpenAI-compatible gateway, driven by the official ``openai`` client over real sockets.

Upstreams are stand-in LLMs on loopback (tinydancer.gateway.standin) that can answer 429 or 500,
hang, or break a stream half-way; the gateway runs in uvicorn in a thread.  The router is a
small one trained here on a hashing embedder (the packaged MiniLM router has a test of its own).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest

from tinydancer.errors import ValidationError
from tinydancer.gateway import create_gateway_app, load_config
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.sse import UsageTap
from tinydancer.gateway.standin import StandIn, running
from tinydancer.gateway.upstream import scrub
from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.server import ServiceSettings
from tinydancer.server.learning import RetrainConfig, retrain_query_router
from tinydancer.server.registry import ModelRegistry
from tinydancer.server.storage import SQLiteStorage

EMBEDDER = HashingEmbedder(128)
EASY = ["apples", "bananas", "cherries", "grapes"]
HARD = ["topology", "cohomology", "homotopy", "sheaves"]
KEY = "client-key-for-tests"


def pair_table(n: int, seed: int = 0) -> RoutingTable:
    """weak fails on hard topics; strong is right everywhere."""
    rng = np.random.default_rng(seed)
    queries, scores = [], []
    for i in range(n):
        hard = rng.random() < 0.5
        queries.append(f"question {i} about {rng.choice(HARD if hard else EASY)}")
        scores.append([rng.random() < 0.9, rng.random() < (0.1 if hard else 0.9)])
    return RoutingTable(queries, ["strong", "weak"], np.array(scores, float), np.tile([10.0, 1.0], (n, 1)))


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    router = QueryRouter.fit(pair_table(600), QueryRouterConfig(hidden_dims=(8,), epochs=20, memory=False), embedder=EMBEDDER)
    router.calibrate(0.5)
    folder = tmp_path_factory.mktemp("router")
    router.save(folder)
    return folder


class Stack:
    """Two stand-in upstreams and a gateway in front of them, with clients."""

    def __init__(self, base: str, strong: StandIn, weak: StandIn, urls: dict[str, str], app: Any, db: Path) -> None:
        self.base = base
        self.strong, self.weak = strong, weak
        self.urls = urls
        self.app = app
        self.db = db

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=KEY, max_retries=0, **kw)

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=KEY, max_retries=0)

    def set_mode(self, which: str, mode: str, delay_s: float = 0.0) -> None:
        httpx.post(f"{self.urls[which]}/_standin/mode", json={"mode": mode, "delay_s": delay_s}).raise_for_status()

    def storage(self) -> SQLiteStorage:
        return SQLiteStorage(self.db)

    def calls(self, request_id: str, n: int = 1) -> list[dict[str, Any]]:
        """The call rows of a request, once the group commit (or the log's embedding) wrote them."""
        return wait_calls(self.db, request_id, n)


def wait_calls(db: Path, request_id: str, n: int = 1) -> list[dict[str, Any]]:
    storage = SQLiteStorage(db)
    deadline = time.monotonic() + 20
    while len(rows := storage.calls(request_id)) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return rows


def config_dict(router: Path | None, urls: dict[str, str], **extra: Any) -> dict[str, Any]:
    ups = [{"name": "strong", "base_url": f"{urls['strong']}/v1", "model": "big-model", "api_key_env": "TD_TEST_PROVIDER_KEY",
            "input_per_million": 10.0, "output_per_million": 30.0, "timeout_s": 5},
           {"name": "weak", "base_url": f"{urls['weak']}/v1", "model": "small-model",
            "input_per_million": 0.5, "output_per_million": 1.5, "timeout_s": 5}]
    out: dict[str, Any] = {"upstreams": ups, **extra}
    if router is not None:
        out["router"] = str(router)
    return out


@pytest.fixture()
def stack(router_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv("TD_TEST_PROVIDER_KEY", "sk-provider-secret-123456")
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        urls = {"strong": su, "weak": wu}
        cfg = parse_config(config_dict(router_dir, urls, breaker_failures=3))
        db = tmp_path / "gw.db"
        app = create_gateway_app(cfg, ServiceSettings(database_path=db, api_keys=(KEY,), watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            yield Stack(base, strong, weak, urls, app, db)


HARD_Q = "question 9999 about cohomology"
EASY_Q = "question 9999 about bananas"


def test_routed_calls_go_by_difficulty_and_carry_the_decision(stack: Stack) -> None:
    client = stack.client()
    hard = client.chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
    easy = client.chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": EASY_Q}])
    assert hard.headers["x-tinydancer-model"] == "strong"
    assert easy.headers["x-tinydancer-model"] == "weak"
    answer = hard.parse()
    assert answer.choices[0].message.content.startswith("[big-model]")
    assert answer.usage.prompt_tokens == 4
    assert 0.0 <= float(hard.headers["x-tinydancer-predicted-quality"]) <= 1.0
    # the upstream got the body with its own model id, our field gone, and the provider key
    assert stack.weak.last_body["model"] == "small-model"
    assert stack.strong.last_headers["authorization"] == "Bearer sk-provider-secret-123456"
    calls = stack.calls(hard.headers["x-tinydancer-decision-id"])
    assert [(c["upstream"], c["status"]) for c in calls] == [("strong", "ok")]
    # usage × prices: 4 prompt tokens at $10/M, completion at $30/M
    completion = answer.usage.completion_tokens
    assert calls[0]["cost"] == pytest.approx((4 * 10.0 + completion * 30.0) / 1e6)
    assert stack.storage().prompt_texts() == []  # prompts are kept only when the config says log_prompts


def test_unknown_fields_pass_through_and_tinydancer_options_are_removed(stack: Stack) -> None:
    client = stack.client()
    client.chat.completions.create(
        model="tinydancer", messages=[{"role": "user", "content": EASY_Q}], temperature=0.2, n=1,
        response_format={"type": "json_object"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        extra_body={"tinydancer": {"models": ["weak"]}, "some_vendor_field": {"x": [1, 2]}})
    body = stack.weak.last_body
    assert body["some_vendor_field"] == {"x": [1, 2]}
    assert body["response_format"] == {"type": "json_object"} and body["tools"][0]["function"]["name"] == "f"
    assert body["temperature"] == 0.2 and "tinydancer" not in body


def test_named_model_passes_through_and_is_logged(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="weak", messages=[{"role": "user", "content": HARD_Q}])
    assert raw.headers["x-tinydancer-model"] == "weak"
    rid = raw.headers["x-tinydancer-decision-id"]
    assert [c["status"] for c in stack.calls(rid)] == ["ok"]
    # feedback is taken, but a named call was not embedded: retraining has nothing to learn from it
    r = httpx.post(f"{stack.base}/v1/feedback", json={"request_id": rid, "success": True, "quality": 0.5},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["target"] == "weak"
    assert len(stack.storage().labelled("query").targets) == 0


def test_narrowing_and_operating_point_per_call(stack: Stack) -> None:
    client = stack.client()
    only_weak = client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": HARD_Q}], extra_body={"tinydancer": {"models": ["weak"]}})
    assert only_weak.headers["x-tinydancer-model"] == "weak"
    all_strong = client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": EASY_Q}], extra_body={"tinydancer": {"strong_share": 1.0}})
    assert all_strong.headers["x-tinydancer-model"] == "strong"
    # RouteLLM's form: the number is the threshold on the strong score
    low = client.chat.completions.with_raw_response.create(model="router-mf-0.0", messages=[{"role": "user", "content": EASY_Q}])
    assert low.headers["x-tinydancer-model"] == "strong"
    high = client.chat.completions.with_raw_response.create(model="router-mf-1.5", messages=[{"role": "user", "content": HARD_Q}])
    assert high.headers["x-tinydancer-model"] == "weak"
    cheap = client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": HARD_Q}], max_tokens=100,
        extra_body={"tinydancer": {"max_cost": 0.001}})  # strong: 100 × $30/M = $0.003 > cap
    assert cheap.headers["x-tinydancer-model"] == "weak"


def test_bad_requests_get_openai_errors(stack: Stack) -> None:
    client = stack.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tinydancer", messages=[])
    with pytest.raises(openai.BadRequestError, match="strong_share"):
        client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"tinydancer": {"strong_share": 7}})
    with pytest.raises(openai.BadRequestError, match="unknown models"):
        client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"tinydancer": {"models": ["nope"]}})
    with pytest.raises(openai.BadRequestError, match="max_cost"):
        client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"tinydancer": {"max_cost": 1e-12}})
    r = httpx.post(f"{stack.base}/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_models_lists_aliases_and_upstreams(stack: Stack) -> None:
    ids = [m.id for m in stack.client().models.list()]
    assert ids == ["tinydancer", "strong", "weak"]


def test_streaming_relays_chunks_and_records_usage(stack: Stack) -> None:
    client = stack.client()
    with client.chat.completions.with_streaming_response.create(
            model="tinydancer", messages=[{"role": "user", "content": HARD_Q}], stream=True) as raw:
        rid = raw.headers["x-tinydancer-decision-id"]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[big-model] question 9999 about cohomology"
    # the client did not ask for usage: the usage chunk the gateway asked for is not passed on
    assert all(c.usage is None for c in chunks)
    assert stack.strong.last_body["stream_options"] == {"include_usage": True}
    (call,) = stack.calls(rid)
    assert call["status"] == "ok" and call["stream"] == 1 and call["prompt_tokens"] == 4
    assert call["completion_tokens"] == 5 and call["ttft_ms"] is not None
    # asked for: passed on
    chunks = list(client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5


def test_async_client(stack: Stack) -> None:
    async def main() -> list[str]:
        client = stack.aclient()
        answers = await asyncio.gather(*[client.chat.completions.create(
            model="tinydancer", messages=[{"role": "user", "content": q}]) for q in (HARD_Q, EASY_Q) * 4])
        await client.close()
        return [a.choices[0].message.content for a in answers]

    out = asyncio.run(main())
    assert sum(a.startswith("[big-model]") for a in out) == 4 and sum(a.startswith("[small-model]") for a in out) == 4


@pytest.mark.parametrize("mode", ["429", "500"])
def test_a_failing_upstream_falls_back_and_the_failure_is_an_outcome(stack: Stack, mode: str) -> None:
    stack.set_mode("strong", mode)
    raw = stack.client().chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
    assert raw.headers["x-tinydancer-model"] == "weak"
    rid = raw.headers["x-tinydancer-decision-id"]
    storage = stack.storage()
    assert [(c["upstream"], c["status"], c["http_status"]) for c in stack.calls(rid, 2)] == [
        ("strong", f"http_{'429' if mode == '429' else '5xx'}", int(mode)), ("weak", "ok", 200)]
    logs = storage.labelled("query")
    assert ("strong", 0.0) in set(zip(logs.targets, logs.labels.tolist()))
    # feedback without a target goes to the model that answered
    r = httpx.post(f"{stack.base}/v1/feedback", json={"request_id": rid, "success": True, "quality": 0.8},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["target"] == "weak"


def test_timeouts_fall_back_and_all_failing_gives_a_scrubbed_error(stack: Stack) -> None:
    stack.set_mode("strong", "500")
    stack.set_mode("weak", "429")
    with pytest.raises(openai.RateLimitError) as caught:
        stack.client().chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
    message = str(caught.value)
    assert "tried strong, weak" in message
    assert "sk-provider-secret" not in message and "127.0.0.1" not in message


def test_a_refused_request_is_not_retried_and_the_provider_key_never_reaches_the_client(stack: Stack) -> None:
    stack.set_mode("strong", "400")
    with pytest.raises(openai.BadRequestError, match="answered 400"):
        stack.client().chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
    assert stack.weak.calls == 0  # the request itself was refused: another model would not help
    stack.set_mode("strong", "401")  # the stand-in echoes the provider key it got, as providers do
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="strong", messages=[{"role": "user", "content": HARD_Q}])
    assert caught.value.status_code == 502 and "TD_TEST_PROVIDER_KEY" in str(caught.value)
    assert "sk-provider-secret" not in caught.value.response.text


def test_breaker_opens_after_repeated_failures(stack: Stack) -> None:
    stack.set_mode("strong", "500")
    client = stack.client()
    for _ in range(3):
        client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
    before = stack.strong.calls
    raw = client.chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
    assert raw.headers["x-tinydancer-model"] == "weak" and raw.headers["x-tinydancer-attempts"] == "1"
    assert stack.strong.calls == before  # the open breaker kept the call away from the failing upstream
    metrics = httpx.get(f"{stack.base}/metrics").text
    assert 'tiny_dancer_gateway_breaker_state{upstream="strong"} 2.0' in metrics


def test_refused_connection_falls_back(router_dir: Path, tmp_path: Path) -> None:
    weak = StandIn("small-model")
    with running(weak.app()) as wu:
        urls = {"strong": "http://127.0.0.1:9", "weak": wu}  # nothing listens on port 9
        cfg = parse_config(config_dict(router_dir, urls))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
            assert raw.headers["x-tinydancer-model"] == "weak"


def test_a_hanging_upstream_times_out_and_falls_back(router_dir: Path, tmp_path: Path) -> None:
    strong, weak = StandIn("big-model", mode="hang"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = config_dict(router_dir, {"strong": su, "weak": wu})
        cfg["upstreams"][0]["timeout_s"] = 0.5
        app = create_gateway_app(parse_config(cfg), ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0),
                                 embedder=EMBEDDER)
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
            assert raw.headers["x-tinydancer-model"] == "weak"
            rid = raw.headers["x-tinydancer-decision-id"]
            assert [c["status"] for c in wait_calls(tmp_path / "g.db", rid, 2)] == ["timeout", "ok"]


def test_a_stream_broken_after_its_first_byte_ends_with_an_error(stack: Stack) -> None:
    stack.set_mode("strong", "break")
    client = stack.client()
    got = []
    with pytest.raises(openai.APIError, match="broke off the stream|without \\[DONE\\]"):
        for chunk in client.chat.completions.create(model="strong", messages=[{"role": "user", "content": HARD_Q}], stream=True):
            got.append(chunk)
    assert got  # the first chunks arrived before the error: no silent truncation, no fallback after bytes


def test_a_client_that_hangs_up_cancels_the_upstream_call(stack: Stack) -> None:
    stack.set_mode("strong", "hang")
    client = stack.client(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="strong", messages=[{"role": "user", "content": HARD_Q}])
    deadline = time.monotonic() + 10
    while stack.strong.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.strong.cancelled == 1


def test_sessions_keep_a_conversation_on_one_model(stack: Stack) -> None:
    client = stack.client()
    first = client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": HARD_Q}], extra_headers={"x-session-id": "conv-1"})
    assert first.headers["x-tinydancer-model"] == "strong"
    later = client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": EASY_Q}], extra_headers={"x-session-id": "conv-1"})
    assert later.headers["x-tinydancer-model"] == "strong"
    other = client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": EASY_Q}], extra_headers={"x-session-id": "conv-2"})
    assert other.headers["x-tinydancer-model"] == "weak"


def test_client_keys_are_required_when_set(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.base}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="tinydancer", messages=[{"role": "user", "content": "hi"}])
    assert httpx.get(f"{stack.base}/health").status_code == 200
    assert httpx.get(f"{stack.base}/health/ready").status_code == 200


def test_metrics_count_calls_tokens_cost_and_savings(stack: Stack) -> None:
    client = stack.client()
    for q in (HARD_Q, EASY_Q, EASY_Q):
        client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": q}])
    text = httpx.get(f"{stack.base}/metrics").text
    assert 'tiny_dancer_gateway_calls_total{status="ok",upstream="weak"} 2.0' in text
    assert 'tiny_dancer_gateway_tokens_total{kind="prompt",upstream="strong"} 4.0' in text
    saved = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("tiny_dancer_gateway_saved_dollars_total")))
    # two weak calls instead of strong: (4 × (10 − 0.5) + 5 × (30 − 1.5)) / 1e6 each
    assert saved == pytest.approx(2 * (4 * 9.5 + 5 * 28.5) / 1e6)


def test_retrain_learns_from_gateway_logs(stack: Stack, router_dir: Path, tmp_path: Path) -> None:
    """Gateway calls with feedback are what `retrain --query-router` reads."""
    client = stack.client()
    ids = []
    for i in range(30):
        raw = client.chat.completions.with_raw_response.create(
            model="tinydancer", messages=[{"role": "user", "content": f"question {i} about {HARD[i % 4]}"}])
        ids.append(raw.headers["x-tinydancer-decision-id"])
    for rid in ids:
        httpx.post(f"{stack.base}/v1/feedback", json={"request_id": rid, "success": True, "quality": 1.0},
                   headers={"Authorization": f"Bearer {KEY}"}).raise_for_status()
    stack.calls(ids[-1])
    logs = stack.storage().labelled("query")
    assert len(logs.targets) == 30 and logs.inputs.shape[1] == 128
    assert set(logs.targets) <= {"strong", "weak"}
    copy = tmp_path / "router"
    shutil.copytree(router_dir, copy)
    report = retrain_query_router(stack.storage(), copy, ModelRegistry(tmp_path / "registry"),
                                  RetrainConfig(min_samples=20, epochs=5))
    assert report.samples == 30 and report.skipped == 0


# ---------------------------------------------------------------------- config and parts
def test_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "g.yaml"
    bad.write_text("upstreams:\n  - name: a\n    base_url: ftp://x\n    model: m\n    input_per_millon: 3\n")
    with pytest.raises(ValidationError) as caught:
        load_config(bad)
    text = str(caught.value)
    assert "upstreams.0.base_url" in text and "upstreams.0.input_per_millon: unknown key" in text
    bad.write_text("upstreams: [")
    with pytest.raises(ValidationError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("operating_point: {strong_share: 0.3, cost_weight: 1}\nupstreams:\n  - {name: a, base_url: 'http://x', model: m}\n")
    with pytest.raises(ValidationError, match="operating_point"):
        load_config(bad)


def test_config_relative_router_is_read_from_the_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("router: routers/mine\nupstreams:\n  - {name: strong, base_url: 'http://127.0.0.1:1/v1', model: m}\n")
    assert load_config(path).router == (tmp_path / "routers" / "mine").resolve()


def test_scrub_removes_keys_and_url_credentials() -> None:
    text = scrub("bad key sk-abcdef1234567890 at https://user:pw@host/v1 (secret-value)", ("secret-value",))
    assert "sk-abcdef" not in text and "user:pw" not in text and "secret-value" not in text


def test_usage_tap_reassembles_split_events() -> None:
    tap = UsageTap(keep_usage_chunk=False)
    stream = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n')
    out = b"".join(tap.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + tap.tail()
    assert tap.usage == (3, 1) and tap.done
    assert b"usage" not in out and out.endswith(b"data: [DONE]\n\n") and b'"content":"a"' in out


def test_packaged_router_routes_real_text(tmp_path: Path) -> None:
    """No router key, upstreams named strong and weak: the packaged router routes, reading prompts
    with the static embedder distilled from MiniLM and the prompt features (tools/build_default_router.py)."""
    pytest.importorskip("tokenizers", reason="the static embedder needs the MiniLM tokenizer (make embed)")
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = parse_config(config_dict(None, {"strong": su, "weak": wu}, operating_point={"strong_share": 0.5}))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0))
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            prompts = ["What is 2 + 2?", "Hi!", "Prove that there are infinitely many primes of the form 4k+3.",
                       "Derive the Euler-Lagrange equation and apply it to a pendulum with a moving pivot."]
            went = [client.chat.completions.with_raw_response.create(
                model="tinydancer", messages=[{"role": "user", "content": p}]).headers["x-tinydancer-model"] for p in prompts]
    assert set(went) <= {"strong", "weak"} and len(went) == 4
    gw = app.state.gateway
    assert gw.router.models == ["strong", "weak"] and gw.router.embedder_id == "static-minilm-v1-256+prompt-features-v1"
    scores = gw.router.strong_scores(prompts)
    assert np.all(np.isfinite(scores)) and len(set(np.round(scores, 6).tolist())) == 4  # it reads the text


def test_the_cli_refuses_a_public_address_without_client_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tinydancer.cli import app

    for name in ("TINY_DANCER_API_KEYS", "TINY_DANCER_API_KEYS_FILE", "TINY_DANCER_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("upstreams:\n  - {name: strong, base_url: 'http://127.0.0.1:9/v1', model: m}\n")
    result = CliRunner().invoke(app, ["gateway", "--config", str(cfg), "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "TINY_DANCER_API_KEYS" in result.output and "refusing to listen on 0.0.0.0" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: []\n")
    result = CliRunner().invoke(app, ["gateway", "--config", str(bad)])
    assert result.exit_code == 1 and "upstreams" in result.output
    result = CliRunner().invoke(app, ["gateway", "--config", str(cfg), "--retention-rows", "0"])  # reaches the settings
    assert result.exit_code == 1 and "retention_rows" in result.output


def test_the_gateway_hot_reloads_a_router_that_changes_on_disk(router_dir: Path, tmp_path: Path) -> None:
    served = tmp_path / "router"
    shutil.copytree(router_dir, served)
    weak = StandIn("small-model")
    with running(weak.app()) as wu, running(StandIn("big-model").app()) as su:
        cfg = parse_config(config_dict(served, {"strong": su, "weak": wu}))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0.05), embedder=EMBEDDER)
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            ask = lambda: client.chat.completions.with_raw_response.create(  # noqa: E731
                model="tinydancer", messages=[{"role": "user", "content": EASY_Q}]).headers["x-tinydancer-model"]
            assert ask() == "weak"
            router = QueryRouter.load(served)
            router.calibrate(1.0)  # a retrain promoted a router that sends everything to strong
            router.save(served)
            deadline = time.monotonic() + 20
            while 'tiny_dancer_model_reloads_total{result="ok"} 1.0' not in httpx.get(f"{base}/metrics").text:
                assert time.monotonic() < deadline, "the new router was not picked up"
                time.sleep(0.05)
            assert ask() == "strong"
            (served / "router.safetensors").write_bytes(b"broken")  # a bad file keeps the old router
            deadline = time.monotonic() + 20
            while 'tiny_dancer_model_reloads_total{result="failed"} 1.0' not in httpx.get(f"{base}/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert ask() == "strong"


def test_calibrate_sets_the_operating_point_from_logged_traffic(stack: Stack, router_dir: Path, tmp_path: Path) -> None:
    """`tinydancer calibrate`: the share of strong calls is measured on the queries users sent."""
    from typer.testing import CliRunner

    from tinydancer.cli import app

    client = stack.client()
    ids = [client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": f"question {i} about {HARD[i % 4]}"}]
    ).headers["x-tinydancer-decision-id"] for i in range(40)]  # this traffic is all hard
    stack.calls(ids[-1])
    copy = tmp_path / "router"
    shutil.copytree(router_dir, copy)
    result = CliRunner().invoke(app, ["calibrate", str(copy), "--database-path", str(stack.db), "--strong-share", "0.25",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["queries"] == 40 and report["written"] is True
    router = QueryRouter.load(copy)
    scores = router.strong_scores(EMBEDDER.embed([f"question {i} about {HARD[i % 4]}" for i in range(40)]))
    assert np.mean(scores >= router.threshold) == pytest.approx(0.25, abs=0.05)  # a quarter of *this* traffic
    # the budget form: at costs 10 / 1, $3 a query allows at most 2/9 of the calls strong (in steps of 1/40 here)
    result = CliRunner().invoke(app, ["calibrate", str(copy), "--database-path", str(stack.db), "--budget", "3", "--json",
                                      "--dry-run"])
    report = json.loads(result.output)
    assert report["predicted_cost"] <= 3.0 and 0.15 <= report["strong_share"] <= 2 / 9 and report["written"] is False
    result = CliRunner().invoke(app, ["calibrate", str(copy), "--database-path", str(stack.db), "--budget", "0.5"])
    assert result.exit_code == 1 and "below the cheaper model" in result.output


def test_the_gateway_logs_to_postgresql_when_given_a_url(router_dir: Path, tmp_path: Path) -> None:
    """--database-url: decisions, calls and feedback go to PostgreSQL (a schema of this test's own)."""
    import uuid

    from pg import PG_URL as base_url, require_postgres

    psycopg = require_postgres()  # skips, saying why, or fails where the services are required
    schema = f"td_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{base_url}?options=-csearch_path%3D{schema}"
    try:
        strong, weak = StandIn("big-model"), StandIn("small-model")
        with running(strong.app()) as su, running(weak.app()) as wu:
            cfg = parse_config(config_dict(router_dir, {"strong": su, "weak": wu}))
            app = create_gateway_app(cfg, ServiceSettings(database_url=url, watch_interval_s=0), embedder=EMBEDDER)
            with running(app) as base:
                client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
                raw = client.chat.completions.with_raw_response.create(model="tinydancer",
                                                                       messages=[{"role": "user", "content": HARD_Q}])
                rid = raw.headers["x-tinydancer-decision-id"]
                r = httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "success": True, "quality": 0.7})
                assert r.status_code == 200 and r.json()["target"] == "strong"
                assert httpx.get(f"{base}/health/ready").status_code == 200
        from tinydancer.server.storage import open_storage

        storage = open_storage(url)
        assert [c["status"] for c in storage.calls(rid)] == ["ok"]
        logs = storage.labelled("query")
        assert logs.targets == ["strong"] and logs.quality.tolist() == [0.7]
        storage.close()
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_a_half_open_breaker_is_not_kept_shut_by_an_unused_probe(router_dir: Path, tmp_path: Path) -> None:
    """A recovering upstream ranked second must not lose its one probe to a call the first upstream served."""
    from tinydancer.circuit import BreakerState

    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = parse_config(config_dict(router_dir, {"strong": su, "weak": wu}, breaker_failures=1, breaker_reset_s=0.01))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0), embedder=EMBEDDER)
        gw = app.state.gateway
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            gw.upstreams["weak"].breaker.record_failure()  # weak's breaker opens, then turns half-open
            time.sleep(0.05)
            assert gw.upstreams["weak"].breaker.state is BreakerState.HALF_OPEN
            for _ in range(3):  # hard queries: strong answers first, weak is only the fallback
                client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
            raw = client.chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": EASY_Q}])
            assert raw.headers["x-tinydancer-model"] == "weak"  # its probe was still there, and it closed the breaker
            assert gw.upstreams["weak"].breaker.state is BreakerState.CLOSED
