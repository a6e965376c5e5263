"""The dashboard and ``tinydancer report``: numbers that equal SQL over the same log.

The browser test runs a real gateway (the ``openai`` client, loopback stand-in upstreams) and a
real headless Chromium (tests/browser.py) that signs in through the form, reads the totals off
the page and takes the screenshot the README shows (``docs/dashboard.png``; regenerate it with
``TINY_DANCER_SCREENSHOT=docs/dashboard.png pytest tests/test_dashboard.py -k browser``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from browser import Browser, chromium_path
from test_gateway import EMBEDDER, KEY, config_dict, router_dir  # noqa: F401 (fixture)
from test_storage_faults import storage  # noqa: F401 (fixture: SQLite and PostgreSQL)
from tinydancer.cli import app as cli
from tinydancer.gateway import create_gateway_app
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.standin import StandIn, running
from tinydancer.server import ServiceSettings
from tinydancer.server.client_keys import default_name
from tinydancer.server.guards import session_value
from tinydancer.server.report import Price, build_report, latency_bin, percentiles
from tinydancer.server.storage import CallRecord, SQLiteStorage, decision_record

ADMIN = "admin-token-for-the-dashboard"
PRICES = [Price("strong", "strong", 10.0, 30.0), Price("weak", "weak", 0.5, 1.5)]
#: the client key name of seeded call i (None: a call without one, the "(no key)" row)
KEY_NAMES = ("team-a", "team-b", None, "team-a", "ops", "team-b", "team-a")


def seed(storage: Any, now: float, n: int = 300, span_s: float = 3 * 86400) -> None:
    """``n`` calls spread over ``span_s`` before ``now``: every 7th falls back from strong to weak,
    every 11th fails outright; every 3rd gets an outcome.  Key names cycle through :data:`KEY_NAMES`."""
    decisions, calls, outcomes = [], [], []
    for i in range(n):
        at = now - span_s * (i + 0.5) / n
        rid = f"req{i:05d}"
        key = KEY_NAMES[i % len(KEY_NAMES)]
        model = "strong" if i % 3 == 0 else "weak"
        targets = [model]
        if i % 11 == 0:
            calls.append(CallRecord(rid, 0, model, model, "http_5xx", 500, False, None, None, None, None, 40.0 + i, at, key).row())
        elif i % 7 == 0:
            calls.append(CallRecord(rid, 0, "strong", "strong", "timeout", None, False, None, None, None, None, 5000.0, at,
                                    key).row())
            calls.append(CallRecord(rid, 1, "weak", "weak", "ok", 200, True, 20 + i, 50, PRICES[1].cost(20 + i, 50), 30.0,
                                    300.0 + i, at + 0.5, key).row())
            targets = ["weak", "strong"]
        else:
            p = PRICES[0] if model == "strong" else PRICES[1]
            calls.append(CallRecord(rid, 0, model, model, "ok", 200, i % 2 == 0, 10 + i, 100 + i, p.cost(10 + i, 100 + i),
                                    20.0 + i % 13, 100.0 + i, at, key).row())
        conf = np.array([0.4 + 0.5 * (model == "strong")] + [0.5] * (len(targets) - 1), np.float32)
        row = decision_record(rid, "query", "v1", targets, np.zeros((len(targets), 4), np.float32), conf, None,
                              np.zeros(len(targets), np.uint8), 9.0)
        decisions.append((*row[:13], at - 0.01, *row[14:]))
        if i % 3 == 0:
            outcomes.append((rid, targets[0], 0, int(i % 2 == 0), 0.7, None, at + 1))
    storage.insert_log(decisions, calls, outcomes)


def sql_totals(storage: Any, since: float | None) -> dict[str, float]:
    """What the report must say, straight from the calls table."""
    cut, args = (" WHERE created_at >= ?", (since,)) if since is not None else ("", ())
    row = storage.query("SELECT SUM(CASE WHEN attempt = 0 THEN 1 ELSE 0 END), COALESCE(SUM(cost), 0), "
                        "SUM(CASE WHEN status = 'ok' THEN prompt_tokens ELSE 0 END), "
                        f"SUM(CASE WHEN status = 'ok' THEN completion_tokens ELSE 0 END) FROM calls{cut}", args)[1][0]
    calls, spend, pt, ct = (float(v or 0) for v in row)
    return {"calls": calls, "spend": spend, "at_dearest": PRICES[0].cost(pt, ct)}


def sql_keys(storage: Any, since: float | None) -> dict[str, tuple[float, ...]]:
    """Per key name, straight from the calls table: calls, spend, served calls' tokens at the dearest
    upstream, saved against it (served calls with usage), failed calls."""
    cut, args = (" WHERE created_at >= ?", (since,)) if since is not None else ("", ())
    rows = storage.query("SELECT COALESCE(key_name, '(no key)'), SUM(CASE WHEN attempt = 0 THEN 1 ELSE 0 END), "
                         "COALESCE(SUM(cost), 0), SUM(CASE WHEN status = 'ok' THEN prompt_tokens ELSE 0 END), "
                         "SUM(CASE WHEN status = 'ok' THEN completion_tokens ELSE 0 END), "
                         "COALESCE(SUM(CASE WHEN status = 'ok' AND prompt_tokens IS NOT NULL THEN cost END), 0), "
                         f"SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) FROM calls{cut} GROUP BY 1", args)[1]
    out = {}
    for name, calls, spend, pt, ct, usage_spend, served in rows:
        at = PRICES[0].cost(float(pt or 0), float(ct or 0))
        out[name] = (float(calls), float(spend), at, at - float(usage_spend), float(calls) - float(served))
    return out


def test_report_totals_equal_sql_in_every_window_with_rollups_kept_through_deletes(storage: Any) -> None:  # noqa: F811
    now = time.time()
    seed(storage, now)
    _delete_before(storage, now - 2.5 * 86400)  # as retention does: the rollups' triggers take the rows away too
    for window, seconds in (("hour", 3600.0), ("5h", 5 * 3600.0), ("day", 86400.0), ("all", None)):
        r = build_report(storage, window=window, prices=PRICES, reference="weak", now=now)
        want = sql_totals(storage, None if seconds is None else now - seconds)
        assert r["totals"]["calls"] == want["calls"], window
        assert r["totals"]["spend"] == pytest.approx(want["spend"], rel=1e-9, abs=1e-12), window
        dearest = r["counterfactuals"][0]
        assert dearest["model"] == "strong" and dearest["at_reference"] == pytest.approx(want["at_dearest"], rel=1e-9, abs=1e-12)
        assert dearest["saved"] == pytest.approx(want["at_dearest"] - r["totals"]["usage_spend"], rel=1e-9, abs=1e-12)
        assert [c["role"] for c in r["counterfactuals"]] == ["dearest upstream", "reference"]
        cut = "" if seconds is None else f" WHERE created_at >= {now - seconds!r}"
        # spend per client key name: a GROUP BY key_name over the same rows
        keys = sql_keys(storage, None if seconds is None else now - seconds)
        assert {k["name"] for k in r["keys"]} == set(keys) and keys, window
        for k in r["keys"]:
            calls, spend, at, saved, failed = keys[k["name"]]
            assert (k["calls"], k["failed_calls"]) == (calls, failed), (window, k["name"])
            assert k["spend"] == pytest.approx(spend, rel=1e-9, abs=1e-12), (window, k["name"])
            assert k["at_dearest"] == pytest.approx(at, rel=1e-9, abs=1e-12) and k["dearest"] == "strong", (window, k["name"])
            assert k["saved"] == pytest.approx(saved, rel=1e-9, abs=1e-12), (window, k["name"])
            assert k["share"] == pytest.approx(spend / want["spend"], rel=1e-9), (window, k["name"])
        assert [k["spend"] for k in r["keys"]] == sorted((k["spend"] for k in r["keys"]), reverse=True)
        outcomes = storage.query(f"SELECT target, COUNT(*), SUM(success) FROM outcomes{cut} GROUP BY target")[1]
        assert {t: (m["outcomes"], m["successes"]) for t, m in r["quality"]["models"].items() if m["outcomes"]} == \
            {t: (int(n), int(ok)) for t, n, ok in outcomes}, window
    full = build_report(storage, window="all", prices=PRICES, now=now)
    assert {k["name"] for k in full["keys"]} == {"team-a", "team-b", "ops", "(no key)"}
    assert full["totals"]["fallback_attempts"] == storage.query("SELECT COUNT(*) FROM calls WHERE attempt > 0")[1][0][0] > 0
    assert full["upstreams"]["strong"]["errors"]["timeout"] > 0 and full["totals"]["failed_calls"] > 0
    # coverage: decisions with a rank-0 outcome over calls
    cov = full["coverage"]
    assert cov["calls"] == full["totals"]["calls"] and 0 < cov["share"] < 1
    assert full["quality"]["models"]["strong"]["predicted_mean"] == pytest.approx(0.9, abs=1e-6)
    assert len(full["recent"]) == 20 and full["recent"][0]["time"] >= full["recent"][-1]["time"]
    # the last decisions show each call's client key name
    named = dict(storage.query("SELECT request_id, key_name FROM calls")[1])
    assert all(d["key_name"] == named[d["request_id"]] for d in full["recent"] if d["attempts"])


def _execute(storage: Any, sql: str, args: tuple[Any, ...] = ()) -> None:
    """A write on either backend (``?`` placeholders)."""
    if isinstance(storage, SQLiteStorage):
        with storage._tx() as conn:
            conn.execute(sql, args)
    else:
        with storage._pool.connection() as conn:
            if args:
                conn.execute(sql.replace("?", "%s"), args)
            else:  # a script's statement: its % are operators, not placeholders
                conn.execute(sql)


def _delete_before(storage: Any, cut: float) -> None:
    _execute(storage, "DELETE FROM calls WHERE created_at < ?", (cut,))


def test_the_rollup_migrations_backfill_equals_what_its_triggers_kept(storage: Any) -> None:  # noqa: F811
    """A log upgraded with calls in it (the migration's backfill) has the rollups that a log whose
    triggers saw every insert has: per hour, upstream, model, status and key name."""
    from tinydancer.server.storage import postgres, sqlite
    from tinydancer.server.storage.rollups import PG_ROLLUPS, SQLITE_ROLLUPS

    seed(storage, time.time(), n=120)
    def rollups(table: str) -> list[tuple[Any, ...]]:  # sums in another order may differ in the last bits
        return sorted(tuple(round(v, 12) if isinstance(v, float) else v for v in r) for r in storage.query(f"SELECT * FROM {table}")[1])

    kept = {table: rollups(table) for table in ("call_hours", "call_latency")}
    if isinstance(storage, SQLiteStorage):
        drops, script, split = ("DROP TRIGGER calls_rollup_insert", "DROP TRIGGER calls_rollup_delete"), SQLITE_ROLLUPS, sqlite._statements
    else:
        drops, script, split = ("DROP FUNCTION calls_rollup() CASCADE",), PG_ROLLUPS, postgres._statements
    for statement in (*drops, "DROP TABLE call_hours", "DROP TABLE call_latency", "DROP INDEX outcomes_target", *split(script)):
        _execute(storage, statement)
    assert {table: rollups(table) for table in kept} == kept
    assert {r[4] for r in kept["call_hours"]} == {"team-a", "team-b", "ops", ""}


def test_latency_bins_agree_between_python_and_the_database_and_percentiles_are_within_a_bin(storage: Any) -> None:  # noqa: F811
    values = [0.0, 0.004, 0.5, 9.99, 10.0, 12.345, 99.5, 100.0, 1234.5, 98765.4]
    rows = [CallRecord(f"b{i}", 0, "up", "up", "ok", 200, False, 1, 1, 0.0, v, v, 1000.0 + i).row() for i, v in enumerate(values)]
    storage.insert_log([], rows, [])
    got = dict(storage.query("SELECT bin, SUM(n) FROM call_latency WHERE metric = 0 GROUP BY bin")[1])
    want: dict[int, int] = {}
    for v in values:
        want[latency_bin(v)] = want.get(latency_bin(v), 0) + 1
    assert {int(k): int(v) for k, v in got.items()} == want
    sample = np.random.default_rng(0).lognormal(5, 1, 5000)
    hist: dict[int, int] = {}
    for v in sample:
        hist[latency_bin(v)] = hist.get(latency_bin(v), 0) + 1
    p50, p99 = percentiles(hist)
    assert p50 == pytest.approx(np.percentile(sample, 50), rel=0.1)
    assert p99 == pytest.approx(np.percentile(sample, 99), rel=0.1)


def test_report_command_in_each_format(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    storage = SQLiteStorage(db)
    now = time.time()
    seed(storage, now)
    want = sql_totals(storage, now - 7 * 86400)
    keys = sql_keys(storage, now - 7 * 86400)
    storage.close()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(config_dict(None, {"strong": "http://127.0.0.1:9", "weak": "http://127.0.0.1:9"})))
    runner = CliRunner()
    base = ["report", "--database-path", str(db), "--since", "7d", "--config", str(config)]
    out = runner.invoke(cli, [*base, "--format", "json", "--reference", "weak"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["totals"]["calls"] == want["calls"] and data["totals"]["spend"] == pytest.approx(want["spend"])
    assert data["counterfactuals"][0]["at_reference"] == pytest.approx(want["at_dearest"])
    assert data["counterfactuals"][1]["model"] == "weak"
    assert {k["name"]: (k["calls"], k["spend"]) for k in data["keys"]} == \
        {name: (v[0], pytest.approx(v[1], rel=1e-9)) for name, v in keys.items()}
    out = runner.invoke(cli, [*base, "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = {(r["section"], r["name"], r["metric"]): r["value"] for r in csv.DictReader(io.StringIO(out.output))}
    assert float(rows[("totals", "", "calls")]) == want["calls"]
    assert float(rows[("counterfactual", "dearest upstream:strong", "at_reference")]) == pytest.approx(want["at_dearest"])
    assert float(rows[("coverage", "", "share")]) == pytest.approx(data["coverage"]["share"])
    for name, (calls, spend, at, saved, failed) in keys.items():
        assert float(rows[("key", name, "calls")]) == calls and float(rows[("key", name, "failed_calls")]) == failed
        assert float(rows[("key", name, "spend")]) == pytest.approx(spend, rel=1e-9)
        assert float(rows[("key", name, "saved")]) == pytest.approx(saved, rel=1e-9)
    out = runner.invoke(cli, [*base, "--format", "table"])
    assert out.exit_code == 0 and f"{int(want['calls']):,}" in out.output and "saved vs strong" in out.output
    assert "spend per client key" in out.output and all(name in out.output for name in keys)
    page = tmp_path / "snapshot.html"
    out = runner.invoke(cli, [*base, "--format", "html", "--output", str(page)])
    assert out.exit_code == 0, out.output
    text = page.read_text()
    assert f'id="calls" data-value="{int(want["calls"])}"' in text and "<svg" in text
    for name, (calls, *_rest) in keys.items():
        assert f'<tr data-key="{name}"><td>{name}</td><td class="n" data-value="{int(calls)}">' in text
    assert "<script" not in text and "http://" not in text and "https://" not in text  # standalone: nothing fetched
    bad = runner.invoke(cli, [*base, "--reference", "gpt-9"])
    assert bad.exit_code == 1 and "gpt-9" in bad.output
    bad = runner.invoke(cli, ["report", "--database-path", str(db), "--since", "yesterday"])
    assert bad.exit_code == 1 and "yesterday" in bad.output and "30m" in bad.output


def test_dashboard_auth_cookie_and_open_loopback(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = parse_config(config_dict(router_dir, {"strong": su, "weak": wu}))
        open_app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "a.db", auth_token=None, api_keys=(),
                                                           watch_interval_s=0), embedder=EMBEDDER)
        with running(open_app) as base:  # loopback, no token: open as the admin routes are
            assert httpx.get(f"{base}/dashboard").status_code == 200
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "b.db", auth_token=ADMIN, api_keys=(KEY,),
                                                      watch_interval_s=0), embedder=EMBEDDER)
        with running(app) as base:
            assert httpx.get(f"{base}/dashboard/report.json").status_code == 401
            browser = httpx.get(f"{base}/dashboard", headers={"accept": "text/html"})
            assert browser.status_code == 303 and browser.headers["location"] == "/dashboard/login"
            assert httpx.get(f"{base}/dashboard", headers={"authorization": f"Bearer {KEY}"}).status_code == 401  # a client key is not admin
            assert httpx.get(f"{base}/dashboard", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
            forged = session_value("not-the-token")
            assert httpx.get(f"{base}/dashboard/report.json", cookies={"tinydancer_dashboard": forged}).status_code == 401
            expired = session_value(ADMIN, now=time.time() - 2 * 86400)
            assert httpx.get(f"{base}/dashboard/report.json", cookies={"tinydancer_dashboard": expired}).status_code == 401
            good = session_value(ADMIN)
            assert httpx.get(f"{base}/dashboard/report.json", cookies={"tinydancer_dashboard": good}).status_code == 200
            assert httpx.get(f"{base}/dashboard?window=fortnight", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 422


def _drive_traffic(base: str, strong_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    ids = []
    for i in range(12):
        topic = "cohomology" if i % 2 else "bananas"
        answer = client.chat.completions.with_raw_response.create(
            model="tinydancer", messages=[{"role": "user", "content": f"question {i} about {topic}"}])
        ids.append(answer.headers["x-tinydancer-decision-id"])
    client.chat.completions.create(model="weak", messages=[{"role": "user", "content": "a named call"}])
    httpx.post(f"{strong_url}/_standin/mode", json={"mode": "500"}).raise_for_status()
    client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": "question 77 about sheaves"}])
    httpx.post(f"{strong_url}/_standin/mode", json={"mode": "ok"}).raise_for_status()
    for rid in ids[:5]:
        httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "success": True, "quality": 0.9},
                   headers={"authorization": f"Bearer {KEY}"}).raise_for_status()


def test_browser_signs_in_and_the_totals_shown_equal_sql(router_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    chromium_path()  # skips (or fails where services are required) without chromium
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = parse_config(config_dict(router_dir, {"strong": su, "weak": wu}, log_prompts=True))
        db = tmp_path / "gw.db"
        app = create_gateway_app(cfg, ServiceSettings(database_path=db, auth_token=ADMIN, api_keys=(KEY,), watch_interval_s=0),
                                 embedder=EMBEDDER)
        with running(app) as base:
            _drive_traffic(base, su)
            browser = Browser(tmp_path / "chromium")
            try:
                browser.open(f"{base}/dashboard")  # no session: sent to the form
                assert browser.evaluate("location.pathname") == "/dashboard/login"
                browser.submit("document.getElementById('token').value = 'wrong-token'; document.forms[0].submit()",
                               f"{base}/dashboard/login")
                assert browser.evaluate("!!document.getElementById('login-error')")
                assert not browser.cookies(f"{base}/dashboard")
                browser.submit(f"document.getElementById('token').value = {json.dumps(ADMIN)}; document.forms[0].submit()",
                               f"{base}/dashboard")
                cookie = next(c for c in browser.cookies(f"{base}/dashboard") if c["name"] == "tinydancer_dashboard")
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN not in cookie["value"]
                shown = browser.evaluate("({calls: document.getElementById('calls').dataset.value, spend: "
                                         "document.getElementById('spend').dataset.value, dearest: "
                                         "document.getElementById('at-dearest').dataset.value, text: "
                                         "document.getElementById('calls').textContent, note: "
                                         "document.getElementById('quality-note').textContent})")
                storage = SQLiteStorage(db)
                want = sql_totals(storage, time.time() - 86400)
                storage.close()
                assert float(shown["calls"]) == want["calls"] == 14 and shown["text"] == "14"
                assert float(shown["spend"]) == pytest.approx(want["spend"], rel=1e-9)
                assert float(shown["dearest"]) == pytest.approx(want["at_dearest"], rel=1e-9)
                assert "quality at the dearer model is unknown" in shown["note"] and "coverage" in shown["note"]
                assert browser.evaluate("document.querySelectorAll('#recent tr').length") == 1 + 14
                per_key = browser.evaluate("Array.from(document.querySelectorAll('#keys tr[data-key]'), r => "
                                           "[r.dataset.key, Number(r.cells[1].dataset.value)])")
                assert per_key == [[default_name(KEY), 14]]  # one client key made every call
                assert browser.evaluate("document.querySelector('svg rect') !== null")
                target = Path(os.environ.get("TINY_DANCER_SCREENSHOT") or tmp_path / "dashboard.png")
                browser.screenshot(target)
                assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            finally:
                browser.close()


def test_serve_shows_its_query_traffic_without_prices(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tinydancer.server import create_app

    db = tmp_path / "serve.db"
    log = SQLiteStorage(db)
    now = time.time()
    rows = [decision_record(f"q{i}", "query", "v7", ["strong" if i % 4 == 0 else "weak"], np.zeros((1, 4), np.float32),
                            np.array([0.25 if i % 4 else 0.75], np.float32), None, np.ones(1, np.uint8), 9.0) for i in range(40)]
    log.insert_log([(*r[:13], now - 60 - i, *r[14:]) for i, r in enumerate(rows)], [], [("q0", "strong", 0, 1, None, None, now - 30)])
    log.close()
    app = create_app(ServiceSettings(database_path=db, auth_token=None, api_keys=(), watch_interval_s=0, model_path=tmp_path / "none"))
    with TestClient(app) as client:
        data = client.get("/dashboard/report.json").json()
        page = client.get("/dashboard")
    assert page.status_code == 200 and "No gateway calls in this window" in page.text and "No prices known" in page.text
    assert data["totals"]["calls"] == 0 and data["counterfactuals"] == []
    assert data["coverage"] == {"calls": 40, "with_outcome": 1, "share": 1 / 40}
    models = data["quality"]["models"]
    assert models["strong"]["predicted_n"] == 10 and models["strong"]["predicted_mean"] == pytest.approx(0.75)
    assert models["weak"]["predicted_mean"] == pytest.approx(0.25) and models["strong"]["outcomes"] == 1
    assert data["router"]["versions_in_window"][0]["version"] == "v7" and len(data["recent"]) == 20
