"""The gateway against hostile clients and broken upstreams (issue 25): nothing a client, an
upstream or the network does may fail another caller, lose a row, or reach the client as a 5xx
of our own making.

Upstreams are the loopback stand-ins (``mode: raw`` and ``usage_json`` misbehave on purpose);
clients are httpx, raw sockets and the official ``openai`` package.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from test_gateway import EMBEDDER, HARD_Q, KEY, Stack, config_dict, router_dir, stack  # noqa: F401 (fixtures)
from tinydancer.gateway import create_gateway_app
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.request_body import parse_body
from tinydancer.gateway.scoring import Scorer
from tinydancer.gateway.selection import RequestError
from tinydancer.gateway.standin import StandIn, running
from tinydancer.llm import QueryRouter
from tinydancer.server import ServiceSettings
from tinydancer.server.storage import SQLiteStorage

AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": HARD_Q}]


def post(stack: Stack, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    kw.setdefault("timeout", 30)
    return httpx.post(f"{stack.base}/v1/chat/completions", content=content, headers={**AUTH, **kw.pop("headers", {})}, **kw)


def raw_mode(stack: Stack, which: str, **raw: Any) -> None:
    httpx.post(f"{stack.urls[which]}/_standin/mode", json={"mode": "raw", "raw": raw}).raise_for_status()


def usage_mode(stack: Stack, which: str, usage_json: str) -> None:
    httpx.post(f"{stack.urls[which]}/_standin/mode", json={"mode": "ok", "usage_json": usage_json}).raise_for_status()


# ---------------------------------------------------------------- 1. client bodies
DEEP = "[" * 2000 + "]" * 2000


@pytest.mark.parametrize("body, param", [
    ('{"model": "tinydancer", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + DEEP + "}", "metadata"),
    ('{"model": "tinydancer", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400, '
     '"tinydancer": {"max_cost": 1}}', "max_tokens"),
    ('{"model": "tinydancer", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + "0" * 400 + "}",
     "max_tokens"),
    ('{"model": "tinydancer", "messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": "x"}',
     "stream_options"),
    ('{"model": "tinydancer", "messages": [{"role": "user", "content": "hi"}], "stream": "true"}', "stream"),
    ('{"model": "tinydancer", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
    ('{"model": "weak", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": -Infinity}}',
     "logit_bias.5"),
])
def test_a_hostile_body_is_a_400_naming_its_field(stack: Stack, body: str, param: str) -> None:
    r = post(stack, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert stack.strong.calls == 0 and stack.weak.calls == 0  # nothing invalid was forwarded


def test_a_deep_but_reasonable_body_still_passes(stack: Stack) -> None:
    schema: Any = {"type": "string"}
    for _ in range(20):  # a tool schema 40 levels deep: real clients send such things
        schema = {"type": "object", "properties": {"x": schema}}
    r = post(stack, {"model": "weak", "messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]})
    assert r.status_code == 200
    assert stack.weak.last_body["tools"][0]["function"]["parameters"] == schema


@pytest.mark.parametrize("depth", [2, 100, 101, 900, 5000])
def test_the_depth_limit_counts_every_level_once(depth: int) -> None:
    body = ('{"model": "x", "messages": [], "m": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}").encode()
    if depth <= 100:
        assert parse_body(body, 100)["model"] == "x"
    else:
        with pytest.raises(RequestError) as caught:
            parse_body(body, 100)
        assert caught.value.param == "m" and caught.value.status == 400


# ---------------------------------------------------------------- 2. one bad prompt in a batch
def test_one_bad_prompt_does_not_fail_the_batch_it_shares() -> None:
    """The real MiniLM tokenizer raises on a lone surrogate; the others in its batch are still scored."""
    from tinydancer.gateway.state import default_router_path
    from tinydancer.llm.embeddings import embedder_for_id

    router = QueryRouter.load(default_router_path())
    scorer = Scorer(router, embedder_for_id(router.embedder_id, cache=False), max_batch=32)
    scorer.inline_chars = 0  # every prompt the batched way (a short one would otherwise be embedded alone, inline)
    batches: list[int] = []
    scorer.on_batch = batches.append

    async def main() -> list[Any]:
        texts = [f"question {i} about apples" for i in range(9)] + ["bad \ud800 prompt"]
        return await asyncio.gather(*[scorer.score(t) for t in texts], return_exceptions=True)

    results = asyncio.run(main())
    assert not any(isinstance(r, BaseException) for r in results[:9]), results
    assert all(np.isfinite(r[1]).all() for r in results[:9])
    assert isinstance(results[9], Exception)  # the bad one alone hears of it
    # the ten shared one batch, which failed; then each was embedded alone, and the nine good ones counted
    assert batches == [1] * 9, batches


def test_a_prompt_with_a_lone_surrogate_is_refused_alone(stack: Stack) -> None:
    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
            bodies = [json.dumps({"model": "tinydancer", "messages": [{"role": "user", "content": f"question {i} about apples"}]})
                      for i in range(29)]
            bodies.insert(13, '{"model": "tinydancer", "messages": [{"role": "user", "content": "bad \\ud800 prompt"}]}')
            answers = await asyncio.gather(*[client.post(f"{stack.base}/v1/chat/completions", content=b) for b in bodies])
            return [a.status_code for a in answers]

    codes = asyncio.run(main())
    assert codes == [200] * 13 + [400] + [200] * 16, codes
    r = post(stack, {"model": "tinydancer", "messages": [{"role": "user", "content": "emoji \U0001F600 pairs are fine"}]})
    assert r.status_code == 200  # json.dumps escapes it as a surrogate pair: valid text


# ---------------------------------------------------------------- 3. upstream token counts
@pytest.mark.parametrize("usage", ['{"prompt_tokens": -1000, "completion_tokens": 5}',
                                   '{"prompt_tokens": 1e999, "completion_tokens": 5}',
                                   '{"prompt_tokens": "12", "completion_tokens": 5}',
                                   '{"prompt_tokens": 10, "completion_tokens": 1' + "0" * 30 + "}",
                                   '"many"', '{}', '{"total_tokens": 500}', '{"prompt_tokens": 10}'])
@pytest.mark.parametrize("streamed", [False, True])
def test_impossible_token_counts_are_logged_as_unknown_and_never_fail_the_client(stack: Stack, usage: str,
                                                                                 streamed: bool) -> None:
    usage_mode(stack, "weak", usage)
    client = stack.client()
    if streamed:
        with client.chat.completions.with_streaming_response.create(
                model="weak", messages=USER, stream=True, stream_options={"include_usage": True}) as raw:
            rid = raw.headers["x-tinydancer-decision-id"]
            chunks = list(raw.parse())  # the stream ends normally: no error event
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("[small-model]")
    else:
        raw = client.chat.completions.with_raw_response.create(model="weak", messages=USER)
        rid = raw.headers["x-tinydancer-decision-id"]
    (call,) = stack.calls(rid)
    assert call["status"] == "ok" and call["prompt_tokens"] is None and call["cost"] is None
    metrics = httpx.get(f"{stack.base}/metrics").text
    assert 'tiny_dancer_gateway_unknown_usage_total{upstream="weak"} 1.0' in metrics


# ---------------------------------------------------------------- 5. unbounded answers, redirects
@pytest.fixture()
def small_stack(router_dir: Path, tmp_path: Path) -> Iterator[Stack]:  # noqa: F811
    """Like ``stack``, with a 64 KiB answer limit and short timeouts."""
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        urls = {"strong": su, "weak": wu}
        cfg = config_dict(router_dir, urls)
        for up in cfg["upstreams"]:
            up["max_response_bytes"] = 64 * 1024
        db = tmp_path / "gw.db"
        app = create_gateway_app(parse_config(cfg), ServiceSettings(database_path=db, api_keys=(KEY,), watch_interval_s=0),
                                 embedder=EMBEDDER)
        with running(app) as base:
            yield Stack(base, strong, weak, urls, app, db)


def _answer(size: int) -> dict[str, Any]:
    return {"status": 200, "body": json.dumps({"choices": [{"message": {"content": "x" * size}}]})}


@pytest.mark.parametrize("raw", [_answer(200 * 1024), {"gzip_zeros": 300 * 1024 * 1024}])
def test_an_answer_over_the_size_limit_is_an_upstream_failure(small_stack: Stack, raw: dict[str, Any]) -> None:
    raw_mode(small_stack, "strong", **raw)
    started = time.monotonic()
    r = post(small_stack, {"model": "tinydancer", "messages": USER})
    assert r.status_code == 200 and r.headers["x-tinydancer-model"] == "weak"  # fell back
    assert time.monotonic() - started < 20  # nothing inflated 300 MB
    statuses = [c["status"] for c in small_stack.calls(r.headers["x-tinydancer-decision-id"], 2)]
    assert statuses == ["too_large", "ok"]
    # streamed too: the stand-in's raw answer is no stream, and too big
    r = post(small_stack, {"model": "tinydancer", "messages": USER, "stream": True})
    assert r.status_code == 200 and r.headers["x-tinydancer-model"] == "weak"


def test_an_answer_within_the_limit_passes(small_stack: Stack) -> None:
    raw_mode(small_stack, "strong", **_answer(30 * 1024))
    r = post(small_stack, {"model": "strong", "messages": USER})
    assert r.status_code == 200 and len(r.json()["choices"][0]["message"]["content"]) == 30 * 1024


def test_a_redirect_from_an_upstream_is_not_followed(stack: Stack) -> None:
    evil = StandIn("elsewhere")
    with running(evil.app()) as eu:
        raw_mode(stack, "strong", status=307, location=f"{eu}/v1/chat/completions")
        r = post(stack, {"model": "tinydancer", "messages": USER})
    assert r.status_code == 200 and r.headers["x-tinydancer-model"] == "weak"
    assert evil.calls == 0  # the prompt never went to the other host


# ---------------------------------------------------------------- 14. a 200 that is no answer
@pytest.mark.parametrize("raw", [
    {"body": "{not json"},
    {"body": "<html><body>Bad gateway</body></html>", "content_type": "text/html"},
    {"body": '{"error": {"message": "overloaded"}}'},
    {"body": '["a list"]'},
])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_200_that_is_not_an_answer_is_an_upstream_failure(stack: Stack, raw: dict[str, Any], streamed: bool) -> None:
    raw_mode(stack, "strong", status=200, **raw)
    r = post(stack, {"model": "tinydancer", "messages": USER, "stream": streamed})
    assert r.status_code == 200 and r.headers["x-tinydancer-model"] == "weak"
    calls = stack.calls(r.headers["x-tinydancer-decision-id"], 2)
    assert [c["status"] for c in calls] == ["invalid_answer", "ok"]
    logs = stack.storage().labelled("query")
    assert ("strong", 0.0) in set(zip(logs.targets, logs.labels.tolist()))  # it counts against the model


# ---------------------------------------------------------------- 6. a client gone before the first byte
def test_a_streamed_call_whose_client_leaves_before_the_first_byte_is_cancelled(stack: Stack) -> None:
    stack.set_mode("strong", "hang")
    with pytest.raises(httpx.ReadTimeout):
        post(stack, {"model": "tinydancer", "messages": USER, "stream": True}, timeout=1.0)
    deadline = time.monotonic() + 8  # well inside the upstream's 5 s timeout + the 1 s the client waited
    while stack.strong.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.strong.cancelled == 1  # the upstream call was closed under it
    time.sleep(0.5)
    assert stack.weak.calls == 0  # nobody is left to answer: no fallback is bought
    calls = [(c["upstream"], c["status"]) for c in stack.storage().calls()]
    assert calls == [("strong", "client_cancelled")]
    assert stack.app.state.gateway.upstreams["strong"].in_flight == 0  # its slot was given back


# ---------------------------------------------------------------- 7. queueing is not upstream time
def test_waiting_for_a_slot_is_not_upstream_time(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    strong = StandIn("big-model", delay_s=0.5)
    with running(strong.app()) as su:
        cfg = config_dict(router_dir, {"strong": su, "weak": "http://127.0.0.1:9"})
        cfg["upstreams"][0].update(max_concurrency=1, timeout_s=2.0, max_queue=16, queue_timeout_s=30)
        db = tmp_path / "g.db"
        app = create_gateway_app(parse_config(cfg), ServiceSettings(database_path=db, watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            async def main() -> list[int]:
                async with httpx.AsyncClient(timeout=60) as client:
                    rs = await asyncio.gather(*[client.post(f"{base}/v1/chat/completions", json={
                        "model": "strong", "messages": USER}) for _ in range(6)])
                    return [r.status_code for r in rs]

            codes = asyncio.run(main())  # one at a time, 0.5 s each: the last waits 2.5 s for its slot
            assert codes == [200] * 6
            metrics = httpx.get(f"{base}/metrics").text
            assert 'tiny_dancer_gateway_breaker_state{upstream="strong"} 0.0' in metrics


def test_a_full_queue_answers_503_with_retry_after_and_blames_no_one(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    strong = StandIn("big-model", delay_s=1.0)
    with running(strong.app()) as su:
        cfg = config_dict(router_dir, {"strong": su, "weak": "http://127.0.0.1:9"})
        cfg["upstreams"][0].update(max_concurrency=1, max_queue=1)
        db = tmp_path / "g.db"
        app = create_gateway_app(parse_config(cfg), ServiceSettings(database_path=db, watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            async def main() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=60) as client:
                    return await asyncio.gather(*[client.post(f"{base}/v1/chat/completions", json={
                        "model": "strong", "messages": USER}) for _ in range(5)])

            answers = asyncio.run(main())
            codes = sorted(r.status_code for r in answers)
            assert codes == [200, 200, 503, 503, 503]  # one in flight, one waiting, the rest turned away
            busy = [r for r in answers if r.status_code == 503]
            assert all(int(r.headers["retry-after"]) >= 1 for r in busy)
            assert all(r.json()["error"]["code"] == "upstream_busy" for r in busy)
            assert strong.calls == 2
            metrics = httpx.get(f"{base}/metrics").text
            assert 'tiny_dancer_gateway_breaker_state{upstream="strong"} 0.0' in metrics
        time.sleep(0.5)
        storage = SQLiteStorage(db)
        assert len(storage.labelled("query").targets) == 0  # no failure outcome against the model
        assert sorted(c["status"] for c in storage.calls()) == ["ok", "ok"]  # a call turned away before it was made is no attempt


# ---------------------------------------------------------------- 8. session ids
def test_an_oversized_session_id_is_refused(stack: Stack) -> None:
    r = post(stack, {"model": "tinydancer", "messages": USER}, headers={"x-session-id": "s" * 1024})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-session-id"
    assert "256" in r.json()["error"]["message"]
    ok = post(stack, {"model": "tinydancer", "messages": USER}, headers={"x-session-id": "s" * 256})
    assert ok.status_code == 200
    assert len(stack.app.state.gateway.sessions) == 1


# ---------------------------------------------------------------- 9. metric labels
def test_junk_paths_do_not_grow_the_metrics(stack: Stack) -> None:
    for i in range(40):
        httpx.get(f"{stack.base}/v1/junk-{i}")  # unauthenticated: 401
        httpx.get(f"{stack.base}/nothing-here-{i}")  # no such route
        httpx.post(f"{stack.base}/admin/junk-{i}", json={})
    text = httpx.get(f"{stack.base}/metrics").text
    assert "junk-" not in text and "nothing-here" not in text
    labels = {line.split("{")[1].split("}")[0] for line in text.splitlines()
              if line.startswith("tiny_dancer_errors_total{")}
    assert labels and len(labels) <= 3, labels


# ---------------------------------------------------------------- 10. slow bodies
def test_a_body_trickled_in_under_the_read_timeout_still_meets_a_whole_body_deadline(router_dir: Path,  # noqa: F811
                                                                                      tmp_path: Path) -> None:
    cfg = config_dict(router_dir, {"strong": "http://127.0.0.1:9", "weak": "http://127.0.0.1:9"})
    settings_ = ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0, body_read_timeout_s=5.0,
                                body_deadline_s=1.5)
    app = create_gateway_app(parse_config(cfg), settings_, embedder=EMBEDDER)
    with running(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 200\r\n\r\n")
            answer = b""
            for _ in range(60):  # a byte every 0.25 s: each read is well inside the 5 s read timeout
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
                sock.settimeout(0.25)
                try:
                    got = sock.recv(4096)
                except socket.timeout:
                    continue
                answer += got
                if not got or b"\r\n\r\n" in answer:
                    break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


# ---------------------------------------------------------------- no 5xx from any body
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
                     | st.text(st.characters(codec=None, exclude_categories=()), max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)  # lone surrogates included
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", 7]),
                                  "content": st.one_of(_text, _text, _json)})
_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["tinydancer", "weak", "strong", "router-mf-0.5", "nope", 3, None]),
     "messages": st.one_of(st.lists(_message, min_size=1, max_size=3), st.lists(_message, min_size=1, max_size=3), _json)},
    optional={"stream": st.one_of(st.just(True), st.booleans(), _json), "stream_options": _json, "max_tokens": _json,
              "max_completion_tokens": _json, "temperature": _json, "tinydancer": st.one_of(
                  _json, st.fixed_dictionaries({}, optional={"max_cost": _json, "models": _json, "strong_share": _json,
                                                            "cost_weight": _json, "quality_bar": _json})),
              "extra": _json})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=_body)
@example(body={"model": "tinydancer", "messages": USER, "stream": True, "stream_options": "x"})
@example(body={"model": "tinydancer", "messages": USER, "max_tokens": float("inf"), "tinydancer": {"max_cost": 1}})
@example(body={"model": "weak", "messages": [{"role": "user", "content": "\ud800"}]})
@example(body={"model": "strong", "messages": USER, "stream": "true"})
def test_no_body_a_client_can_send_gets_a_5xx(stack: Stack, body: dict[str, Any]) -> None:
    text = json.dumps(body, allow_nan=True)  # NaN and Infinity as Python writes them: clients do send them
    with httpx.Client(timeout=30, headers=AUTH) as client:
        r = client.post(f"{stack.base}/v1/chat/completions", content=text)
        assert r.status_code < 500, (r.status_code, r.text[:300], text[:300])
        if r.status_code >= 400:
            assert r.json()["error"]["message"]
        else:
            r.read()


# ---------------------------------------------------------------- issue 26 #7: what the gateway does not route
def test_embeddings_completions_and_responses_pass_through_to_a_named_upstream(stack: Stack) -> None:
    client = stack.client()
    emb = client.embeddings.with_raw_response.create(model="weak", input="hello")
    assert emb.headers["x-tinydancer-model"] == "weak" and emb.parse().data[0].embedding == [0.1, 0.2, 0.3]
    assert stack.weak.last_body["model"] == "small-model"  # the upstream's own model id
    done = client.completions.create(model="strong", prompt="hello")
    assert done.choices[0].text == "[big-model]"
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="strong", prompt="hi", stream=True))
    assert streamed == "[big-model]"
    assert client.responses.create(model="weak", input="hello").output_text == "[small-model]"
    with pytest.raises(openai.BadRequestError, match="passed through, not routed.*strong, weak"):
        client.embeddings.create(model="tinydancer", input="hello")
    with pytest.raises(openai.NotFoundError, match="upstream's name"):
        client.completions.create(model="gpt-9", prompt="hello")
    stack.set_mode("weak", "500")
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="weak", input="hello")
    assert caught.value.status_code == 502 and "sk-provider" not in caught.value.response.text
    metrics = httpx.get(f"{stack.base}/metrics").text
    assert 'tiny_dancer_gateway_calls_total{status="ok",upstream="weak"} 2.0' in metrics


# ---------------------------------------------------------------- found by attacking the hardened gateway
def test_a_half_open_probe_without_a_verdict_is_given_back(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """A probe that ends in a refused request (4xx) or a client that hung up says nothing about the
    upstream: the next call must be able to probe, or a healthy upstream stays shut until restart."""
    strong, weak = StandIn("big-model", mode="500"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = config_dict(router_dir, {"strong": su, "weak": wu}, breaker_failures=1, breaker_reset_s=0.3)
        app = create_gateway_app(parse_config(cfg), ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0),
                                 embedder=EMBEDDER)
        with running(app) as base:
            def call() -> httpx.Response:
                return httpx.post(f"{base}/v1/chat/completions", json={"model": "strong", "messages": USER}, timeout=30)

            assert call().status_code == 502  # the breaker opens
            strong.mode = "400"
            time.sleep(0.6)  # past breaker_reset_s: half-open
            assert call().status_code == 400  # the probe: a refused request, no verdict
            strong.mode = "ok"
            assert call().status_code == 200  # the next call probes, and closes the breaker
            assert app.state.gateway.upstreams["strong"].breaker.is_closed()


def test_the_circuit_breaker_gives_a_probe_back() -> None:
    from tinydancer.circuit import BreakerState, CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(1, reset_timeout_s=1.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 2.0
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.release()
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    breaker.record_success()
    breaker.release()  # closed: nothing to give back
    assert breaker.is_closed()


def test_a_body_of_many_small_containers_is_refused_cheaply(stack: Stack) -> None:
    body = b'{"model": "weak", "messages": [{"role": "user", "content": "hi"}], "m": [' + b",".join([b"[]"] * 50_000) + b"]}"
    started = time.perf_counter()
    r = post(stack, body)
    assert r.status_code == 400 and "arrays and objects" in r.json()["error"]["message"]
    assert stack.weak.calls == 0
    text = {"model": "weak", "messages": [{"role": "user", "content": "[{" * 40_000}]}  # brackets inside a string
    assert post(stack, text).status_code == 200
    assert time.perf_counter() - started < 30


def test_a_huge_prompt_is_routed_on_its_first_characters(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = config_dict(router_dir, {"strong": su, "weak": wu}, log_prompts=True, max_routed_chars=1000)
        db = tmp_path / "g.db"
        app = create_gateway_app(parse_config(cfg), ServiceSettings(database_path=db, watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            prompt = "question about cohomology " * 20_000
            r = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                           json={"model": "tinydancer", "messages": [{"role": "user", "content": prompt}]})
            assert r.status_code == 200
            assert len(strong.last_body["messages"][0]["content"] if r.headers["x-tinydancer-model"] == "strong"
                       else weak.last_body["messages"][0]["content"]) == len(prompt)  # the upstream gets it whole
        deadline = time.monotonic() + 10
        while not (texts := SQLiteStorage(db).prompt_texts()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [len(t) for t in texts] == [1000]  # what the router read, and the log keeps


def test_an_upstream_content_type_the_gateway_cannot_encode_is_not_copied(stack: Stack) -> None:
    raw_mode(stack, "strong", status=200, body=json.dumps({"choices": [{"message": {"content": "hi"}}]}),
             content_type="application/json; charset=\xe9")
    r = post(stack, {"model": "strong", "messages": USER})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"


def test_a_stream_framed_with_crlf_is_a_whole_answer(stack: Stack) -> None:
    events = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("cr", "lf")]
    body = "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events) + "data: [DONE]\r\n\r\n"
    raw_mode(stack, "strong", status=200, body=body, content_type="text/event-stream")
    with stack.client().chat.completions.with_streaming_response.create(model="strong", messages=USER, stream=True) as raw:
        rid = raw.headers["x-tinydancer-decision-id"]
        assert raw.headers["x-tinydancer-attempts"] == "1"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "crlf"
    (call,) = stack.calls(rid)
    assert call["status"] == "ok"  # [DONE] was seen: not 'broken', and the breaker is not fed


def test_a_key_straddling_the_error_texts_cut_is_still_scrubbed(stack: Stack) -> None:
    raw_mode(stack, "strong", status=400, body="x" * 192 + " sk-provider-secret-123456 was refused", content_type="text/plain")
    r = post(stack, {"model": "strong", "messages": USER})
    assert r.status_code == 400
    assert "sk-prov" not in r.text and "[redacted]" in r.text  # was: its first 7 characters


def test_another_process_holding_the_sqlite_write_lock_does_not_freeze_the_gateway(stack: Stack) -> None:
    import sqlite3
    import threading

    assert post(stack, {"model": "weak", "messages": USER}).status_code == 200
    holder = sqlite3.connect(stack.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell with an open transaction, or a DB browser, would
    answers: list[httpx.Response] = []
    try:
        calls = [threading.Thread(target=lambda: answers.append(post(stack, {"model": "weak", "messages": USER})))
                 for _ in range(3)]
        for t in calls:
            t.start()
        time.sleep(1.0)  # the group commit meets the lock meanwhile
        started = time.perf_counter()
        assert httpx.get(f"{stack.base}/health", timeout=30).status_code == 200
        health_s = time.perf_counter() - started
        time.sleep(2.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for t in calls:
        t.join(30)
    assert health_s < 1.5  # was the whole time the lock was held (30 s at most)
    assert [a.status_code for a in answers] == [200] * 3
    rids = [a.headers["x-tinydancer-decision-id"] for a in answers]
    assert all(stack.calls(rid) for rid in rids)  # kept and written once the lock was gone: nothing lost


def test_the_operator_sees_and_resets_the_upstream_breakers(router_dir: Path, tmp_path: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    strong = StandIn("big-model", mode="500")
    with running(strong.app()) as su:
        cfg = config_dict(router_dir, {"strong": su, "weak": "http://127.0.0.1:9"}, breaker_failures=1)
        settings_ = ServiceSettings(database_path=tmp_path / "g.db", watch_interval_s=0, auth_token="admin-token-for-tests")
        app = create_gateway_app(parse_config(cfg), settings_, embedder=EMBEDDER)
        with running(app) as base:
            admin = {"Authorization": "Bearer admin-token-for-tests"}
            assert httpx.post(f"{base}/v1/chat/completions", json={"model": "strong", "messages": USER}).status_code == 502
            assert httpx.get(f"{base}/admin/upstreams").status_code == 401  # the admin token is set
            seen = httpx.get(f"{base}/admin/upstreams", headers=admin).json()["upstreams"]["strong"]
            assert seen["breaker"]["state"] == "open" and seen["in_flight"] == 0 and seen["waiting"] == 0
            r = httpx.post(f"{base}/admin/upstreams/reset", headers={**admin, "Content-Type": "application/json"})
            assert r.json()["upstreams"]["strong"]["breaker"]["state"] == "closed"
            strong.mode = "ok"
            assert httpx.post(f"{base}/v1/chat/completions", json={"model": "strong", "messages": USER}).status_code == 200
