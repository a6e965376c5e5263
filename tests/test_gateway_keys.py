"""Named client keys, spend and budgets per key, and the cost of every call, driven by the official
``openai`` client against the real gateway and stand-in upstreams (see test_gateway)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from test_gateway import EMBEDDER, HARD_Q, config_dict, router_dir, wait_calls  # noqa: F401 (fixtures)
from tinydancer.errors import ValidationError
from tinydancer.gateway import create_gateway_app
from tinydancer.gateway.budgets import BudgetExceeded, KeySpend, day_start
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.standin import StandIn, running
from tinydancer.server import ServiceSettings
from tinydancer.server.client_keys import client_keys, default_name
from tinydancer.server.settings import keys_from_environment

ALICE = "sk-alice-0123456789abcdef"
PLAIN = "sk-plain-fedcba9876543210"
BOB = "sk-bob-5555555555555555"
KEYS = (f"alice:{ALICE}", PLAIN, f"bob:{BOB}")
#: a named call to the strong stand-in: 4 prompt tokens at $10/M, 5 completion tokens at $30/M
STRONG_COST = (4 * 10.0 + 5 * 30.0) / 1e6
#: its estimate with max_tokens=10: 30 characters / 4 at $10/M, 10 tokens at $30/M
STRONG_ESTIMATE = (30 / 4 * 10.0 + 10 * 30.0) / 1e6


class Gateway:
    def __init__(self, base: str, strong: StandIn, db: Path) -> None:
        self.base, self.strong, self.db = base, strong, db

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0)


@pytest.fixture()
def upstreams() -> Iterator[tuple[StandIn, dict[str, str]]]:
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        yield strong, {"strong": su, "weak": wu}


def gateway(router: Path, urls: dict[str, str], strong: StandIn, db: Path, **extra: Any) -> Any:
    cfg = parse_config(config_dict(router, urls, **extra))
    app = create_gateway_app(cfg, ServiceSettings(database_path=db, api_keys=KEYS, watch_interval_s=0), embedder=EMBEDDER)
    return running(app)


def ask(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model="strong", messages=[{"role": "user", "content": HARD_Q}],
                                                            max_tokens=10, **kw)


def test_key_entries_are_named_and_duplicates_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = client_keys(["alice:sk-1", " sk-2 ", "# a comment", "", "bob : sk-3"])
    assert [(k.name, k.key) for k in keys] == [("alice", "sk-1"), (default_name("sk-2"), "sk-2"), ("bob", "sk-3")]
    assert default_name("sk-2").startswith("key-") and len(default_name("sk-2")) == 10
    assert "sk-1" not in repr(keys[0])
    path = tmp_path / "keys.txt"
    monkeypatch.setenv("TINY_DANCER_API_KEYS", "")
    monkeypatch.setenv("TINY_DANCER_API_KEYS_FILE", str(path))
    path.write_text("# team keys\nalice:sk-1\nbob:sk-2\nalice:sk-3\n")
    with pytest.raises(ValidationError, match=r"keys.txt line 4: the name 'alice' is already used by .*keys.txt line 2"):
        keys_from_environment()
    path.write_text("alice:sk-1\nsk-1\n")
    with pytest.raises(ValidationError, match=r"keys.txt line 2: this key is already listed at .*keys.txt line 1"):
        keys_from_environment()
    path.write_text("a b:sk-1\n")
    with pytest.raises(ValidationError, match=r"line 1: 'a b' is not a key name"):
        keys_from_environment()
    path.write_text("admin:sk-1\n")
    with pytest.raises(ValidationError, match="kept for the admin token"):
        keys_from_environment()
    path.write_text("alice:sk-1\nsk-2\n")
    assert keys_from_environment() == ("alice:sk-1", "sk-2")
    with pytest.raises(ValidationError, match="client key 2: the name 'x'"):
        ServiceSettings(api_keys=("x:1", "x:2"))


def test_the_log_keeps_the_key_name_never_the_key(router_dir: Path, upstreams: Any, tmp_path: Path) -> None:
    strong, urls = upstreams
    db = tmp_path / "gw.db"
    with gateway(router_dir, urls, strong, db) as base:
        gw = Gateway(base, strong, db)
        ids = {}
        for name, key in (("alice", ALICE), (default_name(PLAIN), PLAIN)):
            raw = ask(gw.client(key))
            ids[name] = raw.headers["x-tinydancer-decision-id"]
        streamed = gw.client(BOB).chat.completions.create(model="tinydancer", stream=True,
                                                          messages=[{"role": "user", "content": HARD_Q}])
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        for name, rid in ids.items():
            assert [c["key_name"] for c in wait_calls(db, rid)] == [name]
        metrics = httpx.get(f"{base}/metrics").text
    assert f'tiny_dancer_gateway_key_spend_dollars_total{{key="alice"}} {STRONG_COST}' in metrics
    assert 'tiny_dancer_gateway_key_spend_today_dollars{key="bob"}' in metrics
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("gw.db*"))
    assert b"alice" in stored and default_name(PLAIN).encode() in stored and b"bob" in stored
    for key in (ALICE, PLAIN, BOB):
        assert key.encode() not in stored


def test_a_budget_refuses_with_429_and_a_restart_keeps_todays_spend(router_dir: Path, upstreams: Any,
                                                                    tmp_path: Path) -> None:
    strong, urls = upstreams
    db = tmp_path / "gw.db"
    budget = 4 * STRONG_COST + STRONG_ESTIMATE - 1e-6  # four calls fit; the fifth's estimate would pass it
    with gateway(router_dir, urls, strong, db, key_budgets={"alice": budget, "*": 1.0}) as base:
        gw = Gateway(base, strong, db)
        for _ in range(4):
            raw = ask(gw.client(ALICE))
            assert float(raw.headers["x-tinydancer-cost"]) == pytest.approx(STRONG_COST)
        with pytest.raises(openai.RateLimitError) as refused:
            ask(gw.client(ALICE))
        ask(gw.client(BOB))  # another key's budget is its own
        wait_calls(db, raw.headers["x-tinydancer-decision-id"])
        status = httpx.get(f"{base}/admin/keys").json()
        report = httpx.get(f"{base}/dashboard/report.json").json()
        page = httpx.get(f"{base}/dashboard").text
    assert status["keys"]["alice"] == {"spent_today": pytest.approx(4 * STRONG_COST), "budget": budget, "held": 0.0,
                                       "refused": 1}
    # the dashboard's spend per key: the window's calls, and today's spend against the budget with the refusal
    alice = next(k for k in report["keys"] if k["name"] == "alice")
    assert alice["calls"] == 4 and alice["spend"] == pytest.approx(4 * STRONG_COST) and alice["failed_calls"] == 0
    assert alice["spent_today"] == pytest.approx(4 * STRONG_COST) and alice["budget"] == budget and alice["refused_today"] == 1
    assert 'data-key="alice"' in page and 'data-refused="1"' in page
    assert status["keys"]["bob"]["budget"] == 1.0 and status["keys"][default_name(PLAIN)]["spent_today"] == 0.0
    message = refused.value.message
    assert f"'alice' has spent ${4 * STRONG_COST:.6f} of its daily budget of ${budget:g}" in message
    assert f"estimated at ${STRONG_ESTIMATE:.6f}" in message
    assert "resets at " in message and "T00:00:00Z" in message
    assert refused.value.code == "budget_exceeded"
    retry = int(refused.value.response.headers["retry-after"])
    assert 0 < retry <= 86400 and abs(time.time() + retry - (day_start(time.time()) + 86400)) < 120
    assert strong.calls == 5  # four for alice, one for bob: the refused call never reached the upstream
    # a restart reads today's spend back from the log: alice is still over
    with gateway(router_dir, urls, strong, db, key_budgets={"alice": budget, "*": 1.0}) as base:
        with pytest.raises(openai.RateLimitError, match=f"spent \\${4 * STRONG_COST:.6f}"):
            ask(Gateway(base, strong, db).client(ALICE))
    assert strong.calls == 5


def test_budgets_roll_over_at_utc_midnight_and_name_known_keys() -> None:
    from prometheus_client import CollectorRegistry

    now = [day_start(time.time()) + 86400 - 1.0]
    spend = KeySpend({"alice": 1.0}, ("alice",), CollectorRegistry(), clock=lambda: now[0])
    spend.admit("r1", "alice", 0.5)
    spend.settle("r1", "alice", (0.9, "usage"))
    with pytest.raises(BudgetExceeded, match="in 0 h 0 min"):
        spend.admit("r2", "alice", 0.5)
    now[0] += 2.0  # the next UTC day
    spend.admit("r3", "alice", 0.5)
    assert spend.spent == {} and spend.in_flight["r3"][1] == 0.5
    with pytest.raises(ValidationError, match="key_budgets names carol"):
        KeySpend({"carol": 1.0}, ("alice",), CollectorRegistry())
    with pytest.raises(ValidationError, match="needs client keys"):
        KeySpend({"*": 1.0}, (), CollectorRegistry())
    everyone = KeySpend({"*": 1.0, "bob": 2.0}, ("alice", "bob"), CollectorRegistry())
    assert [everyone.budget_of(n) for n in ("alice", "bob", "admin", None)] == [1.0, 2.0, None, None]


def test_every_answer_says_what_it_cost(router_dir: Path, upstreams: Any, tmp_path: Path) -> None:
    strong, urls = upstreams
    db = tmp_path / "gw.db"
    with gateway(router_dir, urls, strong, db) as base:
        client = Gateway(base, strong, db).client(ALICE)
        raw = ask(client)
        assert raw.headers["x-tinydancer-cost-source"] == "usage"
        assert float(raw.headers["x-tinydancer-cost"]) == pytest.approx(STRONG_COST)
        assert raw.parse().usage.completion_tokens == 5
        # a stream whose client asked for usage gets the cost in the usage chunk
        chunks = list(client.chat.completions.create(model="strong", stream=True, max_tokens=10,
                                                     stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": HARD_Q}]))
        usage = chunks[-1].usage
        assert usage.prompt_tokens == 4 and usage.model_extra["tinydancer_cost_source"] == "usage"
        assert usage.model_extra["tinydancer_cost"] == pytest.approx(STRONG_COST)
        # one that did not ask gets the stream it would have had: no usage chunk at all
        plain = list(client.chat.completions.create(model="strong", stream=True, messages=[{"role": "user",
                                                                                            "content": HARD_Q}]))
        assert all(c.usage is None for c in plain)
        # an upstream that reports no usage: the estimate, said to be one
        strong.usage_json = "null"
        raw = ask(client)
        assert raw.headers["x-tinydancer-cost-source"] == "estimate"
        assert float(raw.headers["x-tinydancer-cost"]) == pytest.approx(STRONG_ESTIMATE)
        # in a stream, usage that cannot be true (a negative count) is priced at the estimate too
        strong.usage_json = '{"prompt_tokens": -4, "completion_tokens": 5, "total_tokens": 1}'
        chunks = list(client.chat.completions.create(model="strong", stream=True, max_tokens=10,
                                                     stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": HARD_Q}]))
        extra = chunks[-1].usage.model_extra
        assert extra["tinydancer_cost_source"] == "estimate" and extra["tinydancer_cost"] == pytest.approx(STRONG_ESTIMATE)


def test_replicas_sharing_a_postgresql_log_see_each_others_spend(router_dir: Path, upstreams: Any) -> None:
    from pg import fresh_schema, schema_url

    strong, urls = upstreams
    budget = 4 * STRONG_COST + STRONG_ESTIMATE - 1e-6  # as above: four of alice's calls fit, not five
    cfg = parse_config(config_dict(router_dir, urls, key_budgets={"alice": budget}, key_budget_refresh_s=0.05))
    with fresh_schema() as schema:
        def replica() -> Any:
            settings = ServiceSettings(database_url=schema_url(schema), api_keys=KEYS, watch_interval_s=0.05)
            return running(create_gateway_app(cfg, settings, embedder=EMBEDDER))

        with replica() as one, replica() as two:
            for _ in range(4):
                ask(Gateway(one, strong, Path()).client(ALICE))
            # the other replica re-reads the shared log within a few refreshes
            seen = wait_until(lambda: httpx.get(f"{two}/admin/keys").json()["keys"]["alice"]["spent_today"]
                              >= 4 * STRONG_COST - 1e-12)
            assert seen
            with pytest.raises(openai.RateLimitError, match="budget"):
                ask(Gateway(two, strong, Path()).client(ALICE))
    assert strong.calls == 4


def wait_until(condition: Any, deadline_s: float = 20.0) -> bool:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True
