"""The dashboard page: a report (:mod:`tinydancer.server.report`) as one self-contained HTML page.

Server-rendered, with inline SVG charts and CSS; no CDN, no external script.  The only script is
a few inline lines that reload the page every ``refresh_s`` seconds (the live page; the snapshot
``tinydancer report --format html`` writes has none).  Every number a test or a user may want to
check carries its exact value in a ``data-value`` attribute beside the rounded text.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any, Sequence

__all__ = ["login_page", "money", "render_dashboard"]

_COLORS = ("#3b6fd8", "#e0812d", "#3aa16b", "#b04fc2", "#c9413f", "#7c8a99", "#d1b330", "#2fb3b8")
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d232b}
header{background:#1d232b;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0;font-weight:600}header a{color:#cfd8e3;margin-right:10px;text-decoration:none}
header a.on{color:#fff;font-weight:700;border-bottom:2px solid #fff}header .meta{margin-left:auto;color:#9aa7b5;font-size:12px}
main{padding:16px 24px;max-width:1200px}section{background:#fff;border-radius:8px;padding:14px 18px;margin:0 0 14px;
box-shadow:0 1px 2px #0001}h2{font-size:15px;margin:0 0 10px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1 1 150px;background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px #0001}
.card .v{font-size:24px;font-weight:650}.card .l{color:#5b6673;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.good .v{color:#1e8a4c}.note{color:#5b6673;font-size:12.5px;margin:8px 0 0}.warn{color:#a15c00}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef1}
th{color:#5b6673;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.dot{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}.closed{color:#1e8a4c}.open{color:#c9413f}
.half_open{color:#a15c00}code{font-size:12px}.prompt{color:#5b6673;max-width:360px;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}
"""


def money(x: float | None) -> str:
    """Dollars at a glance: cents above $1, four significant digits below."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if abs(x) >= 1:
        return f"-${abs(x):,.2f}" if x < 0 else f"${x:,.2f}"
    text = f"{abs(x):.4g}" if x else "0.00"
    if "e" in text:
        text = f"{abs(x):.10f}".rstrip("0")
    if len(text.partition(".")[2]) < 2:  # $0.5 reads as a typo: $0.50
        text = f"{abs(x):.2f}"
    return f"-${text}" if x < 0 else f"${text}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} %"


def _ms(x: float | None) -> str:
    return "–" if x is None else (f"{x:,.0f} ms" if x >= 100 else f"{x:.3g} ms")


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _when(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _card(ident: str, label: str, value: Any, text: str, extra: str = "", cls: str = "") -> str:
    return (f'<div class="card {cls}"><div class="l">{_e(label)}</div>'
            f'<div class="v" id="{ident}" data-value="{_e(value)}">{_e(text)}</div>{extra}</div>')


def _cards(r: dict[str, Any]) -> str:
    t, cov = r["totals"], r["coverage"]
    cards = [_card("calls", "calls", t["calls"], f"{t['calls']:,}",
                   f'<div class="note">{t["failed_calls"]:,} failed · {t["fallback_attempts"]:,} fallback attempts</div>'),
             _card("spend", "spend", t["spend"], money(t["spend"]))]
    for cf in r["counterfactuals"]:
        key = "dearest" if cf["role"] == "dearest upstream" else "reference"
        cards.append(_card(f"at-{key}", f"same calls at {cf['model']}", cf["at_reference"], money(cf["at_reference"])))
        cards.append(_card(f"saved-{key}", f"saved vs {cf['model']}", cf["saved"],
                           f"{money(cf['saved'])} ({_pct(cf['saved_pct'])})", cls="good" if cf["saved"] > 0 else ""))
    share = cov["share"]
    cards.append(_card("coverage", "outcome coverage", "" if share is None else share, _pct(None if share is None else 100 * share),
                       f'<div class="note">{cov["with_outcome"]:,} of {cov["calls"]:,} calls have an outcome</div>'))
    live = r.get("live") or {}
    if live.get("strong_share") is not None or live.get("operating_point"):
        strong = live.get("strong_model")
        served = r["totals"]["served_by_model"]
        share_now = served.get(strong, 0) / r["totals"]["served"] if r["totals"]["served"] and strong else None
        cards.append(_card("strong-share", f"served by {strong or 'the strong model'}", "" if share_now is None else share_now,
                           _pct(None if share_now is None else 100 * share_now),
                           f'<div class="note">operating point: {_e(live.get("operating_point"))}</div>'))
    return f'<div class="cards">{"".join(cards)}</div>'


def _honesty(r: dict[str, Any]) -> str:
    cov, t = r["coverage"], r["totals"]
    parts = [f'<p class="note" id="quality-note">{_e(r["quality_note"])} Outcome coverage: '
             f'<b>{_pct(None if cov["share"] is None else 100 * cov["share"])}</b>.</p>']
    if not r["counterfactuals"]:
        parts.append('<p class="note warn">No prices known: savings need the upstreams\' prices '
                     "(a gateway's config, or <code>tinydancer report --config gateway.yaml</code>).</p>")
    elif t["served"] > t["usage_calls"]:
        parts.append(f'<p class="note warn">{t["served"] - t["usage_calls"]:,} served calls reported no token usage '
                     "and are left out of the comparison.</p>")
    return "".join(parts)


def _chart(series: dict[str, Any], colors: dict[str, str]) -> str:
    """Stacked bars: calls served per upstream per bucket."""
    starts: Sequence[float] = series["starts"]
    calls: dict[str, list[int]] = series["calls"]
    n = len(starts)
    if not calls or n == 0:
        return '<p class="note">No gateway calls in this window.</p>'
    totals = [sum(v[i] for v in calls.values()) for i in range(n)]
    top = max(max(totals), 1)
    w, h, left, bottom = 860, 190, 46, 22
    bw = (w - left) / n
    bars = []
    for i in range(n):
        y = h - bottom
        for name, values in calls.items():
            if values[i]:
                bh = (h - bottom - 8) * values[i] / top
                y -= bh
                bars.append(f'<rect x="{left + i * bw + 1:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" height="{bh:.1f}" '
                            f'fill="{colors[name]}"><title>{_e(name)}: {values[i]:,} calls at {_when(starts[i])}</title></rect>')
    fmt = "%H:%M" if series["bucket_s"] < 86400 else "%m-%d"
    labels = "".join(f'<text x="{left + i * bw + bw / 2:.1f}" y="{h - 6}" text-anchor="middle">{time.strftime(fmt, time.gmtime(starts[i]))}</text>'
                     for i in range(0, n, max(1, n // 8)))
    axis = (f'<text x="{left - 6}" y="14" text-anchor="end">{top:,}</text><text x="{left - 6}" y="{h - bottom}" text-anchor="end">0</text>'
            f'<line x1="{left}" y1="{h - bottom}" x2="{w}" y2="{h - bottom}" stroke="#c5ccd4"/>')
    return (f'<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="calls per upstream over time" '
            f'style="font-size:11px;fill:#5b6673">{axis}{"".join(bars)}{labels}</svg>'
            f'<p class="note">calls served per {_bucket_words(series["bucket_s"])} (UTC)</p>')


def _bucket_words(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds % 86400 == 0:
        return "day" if seconds == 86400 else f"{seconds / 86400:.0f} days"
    return "hour" if seconds == 3600 else f"{seconds / 3600:.0f} hours"


def _upstreams(r: dict[str, Any], colors: dict[str, str]) -> str:
    breakers = (r.get("live") or {}).get("upstreams", {})
    rows = []
    for name, u in r["upstreams"].items():
        lat, price = u["latency"], u["price"]
        errors = ", ".join(f"{k} {v:,}" for k, v in sorted(u["errors"].items())) or "–"
        state = (breakers.get(name) or {}).get("breaker", {}).get("state")
        prices = "–" if price is None else f'{money(price["input_per_million"])} / {money(price["output_per_million"])}'
        rows.append(
            f'<tr data-upstream="{_e(name)}"><td><span class="dot" style="background:{colors[name]}"></span>{_e(name)}</td>'
            f'<td>{_e(u["model"])}</td><td class="n">{prices}</td>'
            f'<td class="n" data-value="{u["served"]}">{u["served"]:,}</td><td class="n">{_pct(100 * u["share"])}</td>'
            f'<td class="n" data-value="{u["spend"]!r}">{money(u["spend"])}</td><td class="n">{u["fallback_attempts"]:,}</td>'
            f'<td>{_e(errors)}</td><td class="{_e(state or "")}">{_e(state or "–")}</td>'
            f'<td class="n">{_ms(lat.get("ttft_p50_ms"))} / {_ms(lat.get("ttft_p99_ms"))}</td>'
            f'<td class="n">{_ms(lat.get("total_p50_ms"))} / {_ms(lat.get("total_p99_ms"))}</td></tr>')
    if not rows:
        return ""
    return ('<table id="upstreams"><tr><th>upstream</th><th>plays</th><th class="n">$ / M tokens in / out</th><th class="n">served</th>'
            '<th class="n">share</th><th class="n">spend</th><th class="n">fallback attempts</th><th>errors</th><th>breaker</th>'
            '<th class="n">first byte p50 / p99</th><th class="n">total p50 / p99</th></tr>' + "".join(rows) + "</table>"
            '<p class="note">Latency of successful attempts, from bins at most 10 % wide. Fallback attempts: '
            "attempts after a call's first one.</p>")


def _keys(r: dict[str, Any]) -> str:
    """Spend per client key name; with a running gateway, today's spend against each key's budget."""
    keys = r.get("keys") or []
    if not keys:
        return '<p class="note">No gateway calls in this window.</p>'
    live = any("spent_today" in k for k in keys)
    dearest = next((k["dearest"] for k in keys if k.get("dearest")), None)
    head = ('<tr><th>key</th><th class="n">calls</th><th class="n">spend</th><th class="n">share of spend</th>'
            + (f'<th class="n">same calls at {_e(dearest)}</th><th class="n">saved</th>' if dearest else "")
            + '<th class="n">failed calls</th>'
            + ('<th class="n">today / daily budget (UTC)</th><th class="n">refused today</th>' if live else "") + "</tr>")
    rows = []
    for k in keys:
        saved = "" if not dearest else (f'<td class="n" data-value="{k["at_dearest"]!r}">{money(k["at_dearest"])}</td>'
                                        f'<td class="n" data-value="{k["saved"]!r}">{money(k["saved"])} ({_pct(k["saved_pct"])})</td>')
        today = ""
        if live:
            budget = k.get("budget")
            spent = k.get("spent_today")
            used = f" ({_pct(100 * spent / budget)})" if budget and spent is not None else ""
            today = (f'<td class="n" data-value="{_e(spent)}">{money(spent)} / {"no budget" if budget is None else money(budget)}'
                     f'{used}</td><td class="n" data-refused="{_e(k.get("refused_today", ""))}">{_e(k.get("refused_today", "–"))}</td>')
        rows.append(f'<tr data-key="{_e(k["name"])}"><td>{_e(k["name"])}</td><td class="n" data-value="{k["calls"]}">{k["calls"]:,}</td>'
                    f'<td class="n" data-value="{k["spend"]!r}">{money(k["spend"])}</td><td class="n">{_pct(100 * k["share"])}</td>'
                    f'{saved}<td class="n" data-value="{k["failed_calls"]}">{k["failed_calls"]:,}</td>{today}</tr>')
    note = ("Saved: the key's served calls with token usage, priced at the dearest upstream. "
            + ("Today's spend and refusals are this gateway's live count (budgets reset at 00:00 UTC). " if live else "")
            + "Calls without a client key name (no named client keys configured) are one row, (no key).")
    return f'<table id="keys">{head}{"".join(rows)}</table><p class="note">{note}</p>'


def _quality(r: dict[str, Any]) -> str:
    q = r["quality"]
    rows = []
    for model, m in sorted(q["models"].items()):
        rate = "–" if m["success_rate"] is None else f'{100 * m["success_rate"]:.1f} % ({m["successes"]:,} / {m["outcomes"]:,})'
        qual = "–" if m["quality_mean"] is None else f'{m["quality_mean"]:.3f} (n={m["quality_n"]:,})'
        pred = "–" if m.get("predicted_mean") is None else f'{m["predicted_mean"]:.3f} (n={m["predicted_n"]:,})'
        rows.append(f'<tr><td>{_e(model)}</td><td class="n">{rate}</td><td class="n">{qual}</td><td class="n">{pred}</td></tr>')
    body = ("<table id=\"quality\"><tr><th>model</th><th class=\"n\">success rate (successes / outcomes)</th>"
            "<th class=\"n\">mean quality</th><th class=\"n\">router's predicted quality</th></tr>" + "".join(rows) + "</table>"
            if rows else '<p class="note">No outcomes and no routed decisions in this window.</p>')
    return body + (f'<p class="note">Outcomes: feedback, judged labels and failed attempts. Predicted quality: the mean over '
                   f'the latest {q["predicted_sample"]:,} routed calls of the window, for the model each was sent to.</p>')


def _router(r: dict[str, Any]) -> str:
    live = r.get("live") or {}
    parts = []
    if live.get("router_version") is not None:
        parts.append(f'<p>Serving <code>{_e(live["router_version"] or "the packaged router")}</code></p>')
    seen = r["router"]["versions_in_window"]
    if seen:
        parts.append("<p>Versions that routed the window's latest calls: " + ", ".join(
            f'<code>{_e(v["version"] or "(unversioned)")}</code> ({v["decisions"]:,} calls, last {_when(v["last"])})' for v in seen)
            + "</p>")
    reg = r["router"]["registry"]
    if reg:
        rows = "".join(
            f'<tr><td><code>{_e(v["version"])}</code>{" <b>current</b>" if v["current"] else ""}</td><td>{_when(v["created_at"])}</td>'
            f'<td>{_e(v["promoted_by"] or "–")} {_when(v["promoted_at"]) if v["promoted_at"] else ""}</td>'
            f'<td><code>{_e(", ".join(f"{k}={v2:.4g}" if isinstance(v2, float) else f"{k}={v2}" for k, v2 in list(v["evidence"].items())[:8]))}</code></td></tr>'
            for v in reg)
        parts.append('<table id="registry"><tr><th>registry version</th><th>trained</th><th>promoted</th><th>evidence</th></tr>'
                     + rows + "</table>")
    else:
        parts.append('<p class="note">No registry versions (retrain keeps them: <code>tinydancer retrain</code>).</p>')
    return "".join(parts)


def _recent(r: dict[str, Any]) -> str:
    rows = r["recent"]
    if not rows:
        return '<p class="note">No routed decisions yet.</p>'
    keys = any("key_name" in d for d in rows)
    prompts = any("prompt" in d for d in rows)
    head = ("<tr><th>time (UTC)</th>" + ("<th>key</th>" if keys else "") + "<th>model</th><th class=\"n\">predicted quality</th>"
            "<th class=\"n\">tokens in / out</th><th class=\"n\">cost</th><th>status</th>" + ("<th>prompt</th>" if prompts else "") + "</tr>")
    out = []
    for d in rows:
        tokens = "–" if d["prompt_tokens"] is None else f'{d["prompt_tokens"]:,} / {d["completion_tokens"] or 0:,}'
        pq = "–" if d["predicted_quality"] is None else f'{d["predicted_quality"]:.3f}'
        status = d["status"] + (f' ({d["attempts"]} attempts)' if d["attempts"] > 1 else "")
        out.append(f'<tr><td>{_when(d["time"])}</td>' + (f'<td>{_e(d.get("key_name") or "–")}</td>' if keys else "")
                   + f'<td>{_e(d["model"])}</td><td class="n">{pq}</td><td class="n">{tokens}</td><td class="n">{money(d["cost"])}</td>'
                   f'<td>{_e(status)}</td>' + (f'<td class="prompt" title="{_e(d.get("prompt"))}">{_e(d.get("prompt") or "–")}</td>' if prompts else "")
                   + "</tr>")
    return f'<table id="recent">{head}{"".join(out)}</table>'


def render_dashboard(r: dict[str, Any], *, refresh_s: int | None = 30, base: str = "/dashboard",
                     references: Sequence[str] = ()) -> str:
    """The page of report ``r``.  ``refresh_s``: reload period (None: a static snapshot, no script);
    ``base``: where the window links point (None-like '' for a snapshot: no links)."""
    window = r["window"]["label"]
    colors = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(sorted(r["upstreams"]) or [])}
    for name in r["series"]["calls"]:
        colors.setdefault(name, _COLORS[len(colors) % len(_COLORS)])
    ref = next((c["model"] for c in r["counterfactuals"] if c["role"] == "reference"), "")
    suffix = f"&amp;reference={_e(ref)}" if ref else ""
    nav = "".join(f'<a href="{base}?window={w}{suffix}" class="{"on" if w == window else ""}">{w}</a>'
                  for w in ("hour", "day", "week", "all")) if base else f"<span>window: {_e(window)}</span>"
    if base and references:
        options = "".join(f'<option value="{_e(m)}"{" selected" if m == ref else ""}>{_e(m)}</option>' for m in references)
        nav += (f'<form method="get" action="{base}" style="display:inline"><input type="hidden" name="window" value="{_e(window)}">'
                f'<select name="reference" onchange="this.form.submit()" aria-label="reference model">'
                f'<option value="">reference: dearest</option>{options}</select></form>')
    script = (f"<script>setTimeout(function(){{if(!document.hidden)location.reload()}},{int(refresh_s) * 1000});"
              "document.addEventListener('visibilitychange',function(){if(!document.hidden)location.reload()});</script>"
              if refresh_s else "")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Tiny Dancer · {_e(window)}</title><style>{_CSS}</style></head><body>
<header><h1>Tiny Dancer: what routing saves</h1><nav>{nav}</nav>
<span class="meta">{_when(r["window"]["now"])} UTC · window {_e(window)} · computed in {r["compute_ms"]} ms</span></header>
<main>
<section><h2>Calls, spend and savings</h2>{_cards(r)}{_honesty(r)}</section>
<section><h2>Calls per upstream</h2>{_chart(r["series"], colors)}{_upstreams(r, colors)}</section>
<section><h2>Spend per client key</h2>{_keys(r)}</section>
<section><h2>Quality evidence</h2>{_quality(r)}</section>
<section><h2>Router</h2>{_router(r)}</section>
<section><h2>Last decisions</h2>{_recent(r)}</section>
</main>{script}</body></html>"""


def login_page(action: str = "/dashboard/login", failed: bool = False) -> str:
    """The admin token form (its POST sets the session cookie)."""
    message = '<p class="warn" id="login-error">That token is not the admin token.</p>' if failed else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Tiny Dancer · sign in</title>
<style>{_CSS}</style></head><body><main><section style="max-width:420px;margin:60px auto">
<h2>Tiny Dancer dashboard</h2><p class="note">Sign in with the admin token (TINY_DANCER_AUTH_TOKEN).</p>{message}
<form method="post" action="{_e(action)}"><input type="password" name="token" id="token" autocomplete="current-password"
style="width:100%;padding:6px;margin:6px 0" aria-label="admin token" autofocus>
<button type="submit" id="sign-in">Sign in</button></form></section></main></body></html>"""
