"""What routing saved, computed from the decision log: the numbers of ``/dashboard`` and ``tinydancer report``.

One function, :func:`build_report`, reads a window of the log (an hour, a day, a week, all of it, or
any ``--since``) and returns plain data (JSON-ready): calls and spend; the same calls priced at the
dearest upstream and at a chosen reference model; calls, spend and share per upstream over time;
spend per client key name (with a running gateway's daily budgets);
fallbacks and errors; latency per upstream; quality evidence (outcomes per model, the router's
predicted quality, outcome coverage); the router's versions; the last decisions.

Honest counterfactuals: "saved" prices the token counts each call really used at the other
model's prices.  The other model would have written a different answer of a different length, and
its quality on these calls is unknown unless outcomes say something: the report gives the outcome
coverage next to every saving, and says so (:data:`QUALITY_NOTE`).

Fast on a large log: per-hour rollups (``call_hours`` by upstream, model, status and key name, and
``call_latency``, kept by triggers; see the
storage migrations) answer whole hours; the raw ``calls`` rows answer the partial hour at the
window's start, so totals are exact.  Latency percentiles come from the rollup's histogram bins
(35 a decade, each at most 10 % wide: the bin's midpoint is reported).  The router's predicted
quality, and the router versions listed, come from the latest :data:`PREDICTED_SAMPLE` decisions of the window.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ValidationError

__all__ = ["NO_KEY", "WINDOWS", "Price", "QUALITY_NOTE", "build_report", "latency_bin", "parse_since", "prices_of", "registry_versions"]

#: the dashboard's windows, in seconds (None: the whole log)
WINDOWS: dict[str, float | None] = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0, "all": None}
#: how many of the window's latest decisions the predicted quality per model is averaged over
PREDICTED_SAMPLE = 5000
#: windows this short are read from the raw rows (in 5-minute buckets), not from the hourly rollups
RAW_WINDOW_S = 2 * 3600.0
QUALITY_NOTE = ("Savings price the tokens each call used at the other model's prices. Whether the cheaper models "
                "answered as well is known only for calls with outcomes (feedback or judged labels): "
                "see the outcome coverage. Without outcomes, quality at the dearer model is unknown.")

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_S = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str | None) -> tuple[str, float | None]:
    """A window's label and length in seconds: ``hour``/``day``/``week``/``all``, or ``30m``, ``12h``, ``7d``, ``2w``."""
    text = (text or "day").strip().lower()
    if text in WINDOWS:
        return text, WINDOWS[text]
    match = _SINCE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValidationError(f"window {text!r}: use hour, day, week, all, or a length such as 30m, 12h, 7d, 2w")
    return text, float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class Price:
    """An upstream's prices, dollars per million tokens (from gateway.yaml)."""

    name: str
    model: str
    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


def prices_of(upstreams: Iterable[Any]) -> list[Price]:
    """Prices from a gateway config's upstreams (anything with name, plays and the two prices)."""
    return [Price(u.name, u.plays, float(u.input_per_million), float(u.output_per_million)) for u in upstreams]


def dearest(prices: Sequence[Price]) -> Price | None:
    """The reference the gateway's savings counter uses: the highest input + output price."""
    return max(prices, key=lambda p: (p.input_per_million + p.output_per_million, p.output_per_million), default=None)


# ---------------------------------------------------------------------------------------------- latency bins
def _step(lead: int) -> int:
    return 5 if lead >= 50 else 2 if lead >= 20 else 1


def latency_bin(ms: float) -> int:
    """The rollup's bin of a time in ms, as the storage triggers compute it: 100 × the number of
    digits of the time in 0.01 ms, plus its leading two digits rounded down to their step."""
    digits = str(int(max(ms, 0.0) * 100))
    lead = int(digits[:2])
    return len(digits) * 100 + lead - lead % _step(lead)


def bin_range(b: int) -> tuple[float, float]:
    """A bin's lower edge and width, in ms."""
    length, lead = divmod(b, 100)
    unit = 10.0 ** (length - len(str(lead))) / 100
    return lead * unit, _step(lead) * unit


def percentiles(hist: dict[int, int], qs: Sequence[float] = (0.5, 0.99)) -> list[float | None]:
    """The ``qs`` quantiles of a histogram of bins (each bin's midpoint); None when it is empty."""
    items = sorted((bin_range(b), n) for b, n in hist.items() if n > 0)
    total = sum(n for _, n in items)
    if total == 0:
        return [None for _ in qs]
    out: list[float | None] = []
    for q in qs:
        rank, seen = q * total, 0
        for (low, width), n in items:
            seen += n
            if seen >= rank:
                out.append(round(low + width / 2, 3))
                break
    return out


# ---------------------------------------------------------------------------------------------- reading
class _Log:
    """The queries, over either backend's :meth:`query` (``?`` placeholders)."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.storage.query(sql, args)[1]

    def named(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        names, rows = self.storage.query(sql, args)
        return [dict(zip(names, r)) for r in rows]


#: a bucket row: these, the key name last ('' for calls without one, as the rollup keeps them)
_HOUR_COLUMNS = ("hour, upstream, target, status, attempts, firsts, usage_n, prompt_tokens, completion_tokens, usage_cost, cost, "
                 "key_name")
#: the name a row of calls without a client key name gets (no client keys configured)
NO_KEY = "(no key)"


def _raw_hours(log: _Log, low: float, high: float | None, bucket_s: float) -> tuple[list[tuple[Any, ...]], dict]:
    """Raw calls rows in [low, high) aggregated as the rollups are, in buckets of ``bucket_s``."""
    sql = ("SELECT upstream, target, status, attempt, prompt_tokens, completion_tokens, cost, ttft_ms, total_ms, created_at, "
           "key_name "
           "FROM calls WHERE created_at >= ?" + (" AND created_at < ?" if high is not None else ""))
    agg: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0.0, 0.0])
    hist: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for up, target, status, attempt, pt, ct, cost, ttft, total, at, key in log.rows(sql, (low,) if high is None else (low, high)):
        a = agg[(math.floor(at / bucket_s) * bucket_s, up, target, status, key or "")]
        used = pt is not None
        a[0] += 1
        a[1] += attempt == 0
        a[2] += used
        a[3] += pt or 0
        a[4] += ct or 0
        a[5] += (cost or 0.0) if used else 0.0
        a[6] += cost or 0.0
        if status == "ok":
            hist[(up, 0)][latency_bin(total)] += 1
            if ttft is not None:
                hist[(up, 1)][latency_bin(ttft)] += 1
    return [(*k[:4], *v, k[4]) for k, v in agg.items()], hist


def _call_rows(log: _Log, since: float | None, now: float, window_s: float | None) -> tuple[list[tuple[Any, ...]], dict, float]:
    """Every (bucket, upstream, target, status) row of the window and the latency histograms per
    (upstream, metric): rollups for whole hours, raw rows for the rest.  Returns the bucket size too."""
    if since is not None and window_s is not None and window_s <= RAW_WINDOW_S:
        rows, hist = _raw_hours(log, since, None, 300.0)
        return rows, hist, 300.0
    span = window_s if window_s is not None else _log_span(log, now)
    bucket_s = max(3600.0, math.ceil(span / 48 / 3600) * 3600)
    boundary = None if since is None else math.ceil(since / 3600) * 3600
    where, args = ("", ()) if boundary is None else (" WHERE hour >= ?", (boundary,))
    rows = [(math.floor(r[0] / bucket_s) * bucket_s, *r[1:]) for r in log.rows(f"SELECT {_HOUR_COLUMNS} FROM call_hours{where}", args)]
    hist: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for up, metric, b, n in log.rows(f"SELECT upstream, metric, bin, SUM(n) FROM call_latency{where} GROUP BY upstream, metric, bin",
                                     args):
        hist[(up, int(metric))][int(b)] += int(n)
    if since is not None and boundary is not None and boundary > since:
        edge, edge_hist = _raw_hours(log, since, boundary, bucket_s)
        rows += edge
        for key, counts in edge_hist.items():
            hist[key].update(counts)
    return rows, hist, bucket_s


def _log_span(log: _Log, now: float) -> float:
    first = log.rows("SELECT MIN(hour) FROM call_hours")[0][0]
    return max(3600.0, now - float(first)) if first is not None else 86400.0


# ---------------------------------------------------------------------------------------------- sections
def _totals(rows: list[tuple[Any, ...]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Whole-window totals and the per-upstream table from the bucket rows."""
    t = dict(calls=0, attempts=0, served=0, fallback_attempts=0, spend=0.0, usage_calls=0, prompt_tokens=0,
             completion_tokens=0, usage_spend=0.0)
    ups: dict[str, dict[str, Any]] = {}
    served_by_model: Counter = Counter()
    for _b, up, target, status, attempts, firsts, usage_n, pt, ct, usage_cost, cost, _key in rows:
        u = ups.setdefault(up, dict(model=target, attempts=0, served=0, fallback_attempts=0, spend=0.0, errors={}))
        t["calls"] += firsts
        t["attempts"] += attempts
        t["fallback_attempts"] += attempts - firsts
        t["spend"] += cost
        u["attempts"] += attempts
        u["fallback_attempts"] += attempts - firsts
        u["spend"] += cost
        if status == "ok":
            t["served"] += attempts
            u["served"] += attempts
            served_by_model[target] += attempts
            t["usage_calls"] += usage_n
            t["prompt_tokens"] += pt
            t["completion_tokens"] += ct
            t["usage_spend"] += usage_cost
        elif attempts:
            u["errors"][status] = u["errors"].get(status, 0) + attempts
    t["failed_calls"] = t["calls"] - t["served"]
    t["served_by_model"] = dict(served_by_model)
    for u in ups.values():
        u["share"] = u["served"] / t["served"] if t["served"] else 0.0
    return t, ups


def _keys(rows: list[tuple[Any, ...]], prices: Sequence[Price], spend: float,
          live_keys: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Spend per client key name, dearest first: calls, spend, share of the window's ``spend``, failed
    calls, and the key's served calls with usage priced at the dearest upstream (the totals'
    comparison, per key).  ``live_keys`` (a running gateway's ``KeySpend.status()`` keys) adds today's
    spend, the budget and today's refusals, and the keys that made no call in the window."""
    top = dearest(prices)
    keys: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return keys.setdefault(name, dict(name=name, calls=0, served=0, spend=0.0, usage_calls=0, usage_spend=0.0,
                                          prompt_tokens=0, completion_tokens=0))

    for _b, _up, _t, status, attempts, firsts, usage_n, pt, ct, usage_cost, cost, key in rows:
        k = entry(key or NO_KEY)
        k["calls"] += firsts
        k["spend"] += cost
        if status == "ok":
            k["served"] += attempts
            k["usage_calls"] += usage_n
            k["prompt_tokens"] += pt
            k["completion_tokens"] += ct
            k["usage_spend"] += usage_cost
    for name in live_keys:
        entry(name)
    for name, k in keys.items():
        at = None if top is None else top.cost(k["prompt_tokens"], k["completion_tokens"])
        k.update(failed_calls=k["calls"] - k["served"], share=k["spend"] / spend if spend > 0 else 0.0,
                 dearest=None if top is None else top.name, at_dearest=at,
                 saved=None if at is None else at - k["usage_spend"],
                 saved_pct=100.0 * (at - k["usage_spend"]) / at if at else None)
        today = live_keys.get(name)
        if today is not None:
            k.update(spent_today=today.get("spent_today", 0.0), budget=today.get("budget"),
                     refused_today=today.get("refused", 0))
    return sorted(keys.values(), key=lambda k: (-k["spend"], k["name"]))


def _counterfactuals(totals: dict[str, Any], prices: Sequence[Price], reference: str | None) -> list[dict[str, Any]]:
    """The served calls with usage, priced at the dearest upstream and at ``reference``."""
    chosen: list[tuple[str, Price]] = []
    top = dearest(prices)
    if top is not None:
        chosen.append(("dearest upstream", top))
    if reference is not None:
        match = next((p for p in prices if reference in (p.name, p.model)), None)
        if match is None:
            raise ValidationError(f"reference model {reference!r} is not an upstream of the config "
                                  f"({', '.join(p.name for p in prices) or 'no prices given: pass --config gateway.yaml'})")
        if match is not top:
            chosen.append(("reference", match))
    out = []
    actual = totals["usage_spend"]
    for role, price in chosen:
        at_ref = price.cost(totals["prompt_tokens"], totals["completion_tokens"])
        saved = at_ref - actual
        out.append(dict(role=role, model=price.name, input_per_million=price.input_per_million,
                        output_per_million=price.output_per_million, calls_compared=totals["usage_calls"],
                        spend=actual, at_reference=at_ref, saved=saved,
                        saved_pct=100.0 * saved / at_ref if at_ref > 0 else None))
    return out


def _series(rows: list[tuple[Any, ...]], bucket_s: float, since: float | None, now: float) -> dict[str, Any]:
    """Served calls and spend per upstream per bucket, every bucket of the window present."""
    starts = [r[0] for r in rows]
    first = math.floor(since / bucket_s) * bucket_s if since is not None else (min(starts) if starts else now)
    last = math.floor(now / bucket_s) * bucket_s
    n = int(round((last - first) / bucket_s)) + 1 if last >= first else 1
    n = min(n, 500)
    first = last - (n - 1) * bucket_s
    calls: dict[str, list[int]] = {}
    spend: dict[str, list[float]] = {}
    for b, up, _t, status, attempts, _f, _u, _pt, _ct, _uc, cost, _key in rows:
        i = int(round((b - first) / bucket_s))
        if not 0 <= i < n:
            continue
        calls.setdefault(up, [0] * n)
        spend.setdefault(up, [0.0] * n)
        if status == "ok":
            calls[up][i] += attempts
        spend[up][i] += cost
    return dict(bucket_s=bucket_s, starts=[first + i * bucket_s for i in range(n)], calls=calls, spend=spend)


def _latency(hist: dict[tuple[str, int], Counter]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (up, metric), counts in sorted(hist.items()):
        p50, p99 = percentiles(counts)
        name = "total" if metric == 0 else "ttft"
        entry = out.setdefault(up, {})
        entry.update({f"{name}_p50_ms": p50, f"{name}_p99_ms": p99, f"{name}_n": int(sum(counts.values()))})
    return out


def _quality(log: _Log, since: float | None, calls: int) -> dict[str, Any]:
    """Outcomes per model, the router's predicted quality per model, and how much traffic has an outcome.

    Coverage counts the rank-0 outcomes recorded in the window (one a call at most: the outcome of
    the answer served, or of the first model tried when none answered) against the window's calls;
    an outcome sent after the window ends is counted in the window it arrived in."""
    cut, args = (" WHERE created_at >= ?", (since,)) if since is not None else ("", ())
    models: dict[str, dict[str, Any]] = {}
    covered = 0
    for target, n, ok, qn, qmean, first in _outcome_counts(log, since):
        covered += int(first or 0)
        models[target] = dict(outcomes=int(n), successes=int(ok or 0), success_rate=int(ok or 0) / n if n else None,
                              quality_n=int(qn), quality_mean=None if qmean is None else float(qmean))
    if calls == 0:  # no gateway calls (a `serve` log): its decisions are the traffic
        calls = int(log.rows(f"SELECT COUNT(*) FROM decisions{cut}", args)[0][0])
    predicted: dict[str, list[float]] = defaultdict(list)
    versions: dict[str, list[float]] = {}
    dcut = " AND created_at >= ?" if since is not None else ""
    for targets, confidence, version, at in log.rows(
            f"SELECT targets, confidence, model_version, created_at FROM decisions WHERE kind = 'query'{dcut} "
            "ORDER BY created_at DESC LIMIT ?", (*args, PREDICTED_SAMPLE)):
        names = json.loads(targets)
        conf = np.frombuffer(bytes(confidence), dtype=np.float32)
        if names and conf.size and np.isfinite(conf[0]):
            predicted[names[0]].append(float(conf[0]))
        seen = versions.setdefault(version, [0, float(at)])
        seen[0] += 1
    for model, values in predicted.items():
        entry = models.setdefault(model, dict(outcomes=0, successes=0, success_rate=None, quality_n=0, quality_mean=None))
        entry.update(predicted_mean=float(np.mean(values)), predicted_n=len(values))
    return dict(models=models, coverage=dict(calls=calls, with_outcome=covered, share=min(covered / calls, 1.0) if calls else None),
                predicted_sample=PREDICTED_SAMPLE,
                versions=[dict(version=v, decisions=n, last=t) for v, (n, t) in sorted(versions.items(), key=lambda x: x[1][1])])


_OUTCOME_SUMS = "COUNT(*), SUM(success), COUNT(quality), AVG(quality), SUM(CASE WHEN rank = 0 THEN 1 ELSE 0 END)"
#: past this many distinct outcome targets (candidate ids, not models), one GROUP BY instead of a range scan each
MAX_TARGET_SCANS = 64


def _outcome_counts(log: _Log, since: float | None) -> list[tuple[Any, ...]]:
    """(target, outcomes, successes, qualities, mean quality, rank-0 outcomes) per target: one range
    scan of the (target, created_at) index per target (the targets found by skipping through it),
    so a window costs the outcomes in it, without sorting them."""
    targets = [r[0] for r in log.rows(
        "WITH RECURSIVE t(target) AS (SELECT MIN(target) FROM outcomes UNION ALL "
        "SELECT (SELECT MIN(target) FROM outcomes WHERE target > t.target) FROM t WHERE t.target IS NOT NULL) "
        "SELECT target FROM t WHERE target IS NOT NULL LIMIT ?", (MAX_TARGET_SCANS + 1,))]
    time_cut = " AND created_at >= ?" if since is not None else ""
    if len(targets) > MAX_TARGET_SCANS:
        return log.rows(f"SELECT target, {_OUTCOME_SUMS} FROM outcomes WHERE 1 = 1{time_cut} GROUP BY target",
                        (since,) if since is not None else ())
    out = []
    for target in targets:
        row = log.rows(f"SELECT {_OUTCOME_SUMS} FROM outcomes WHERE target = ?{time_cut}",
                       (target, since) if since is not None else (target,))[0]
        if row[0]:
            out.append((target, *row))
    return out


def _recent(log: _Log, n: int) -> list[dict[str, Any]]:
    """The last ``n`` routed decisions with their calls; a key name where the calls table keeps one
    (the ``key_name`` column of per-key spend) and the prompt where ``log_prompts`` kept it."""
    if n <= 0:
        return []
    decisions = log.rows("SELECT request_id, created_at, model_version, targets, confidence FROM decisions "
                         "WHERE kind = 'query' ORDER BY created_at DESC LIMIT ?", (n,))
    ids = [d[0] for d in decisions]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in log.named(f"SELECT * FROM calls WHERE request_id IN ({marks}) ORDER BY attempt", ids):
        calls[c["request_id"]].append(c)
    prompts = dict(log.rows(f"SELECT request_id, text FROM prompts WHERE request_id IN ({marks})", ids))
    out = []
    for rid, at, version, targets, confidence in decisions:
        attempts = calls.get(rid, [])
        served = next((c for c in attempts if c["status"] == "ok"), None)
        conf = np.frombuffer(bytes(confidence), dtype=np.float32)
        names = json.loads(targets)
        row = dict(request_id=rid, time=float(at), model_version=version,
                   model=served["upstream"] if served else (attempts[-1]["upstream"] if attempts else (names or [""])[0]),
                   predicted_quality=float(conf[0]) if conf.size and np.isfinite(conf[0]) else None,
                   prompt_tokens=served["prompt_tokens"] if served else None,
                   completion_tokens=served["completion_tokens"] if served else None,
                   cost=sum(c["cost"] or 0.0 for c in attempts) if attempts else None,
                   status=(served or (attempts[-1] if attempts else {})).get("status", "routed"), attempts=len(attempts))
        if any("key_name" in c for c in attempts):  # lights up once the calls table has key names
            row["key_name"] = next((c["key_name"] for c in attempts if c.get("key_name")), None)
        if rid in prompts:
            row["prompt"] = prompts[rid][:300]
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- the report
def build_report(storage: Any, *, window: str = "day", prices: Sequence[Price] = (), reference: str | None = None,
                 now: float | None = None, last_n: int = 20, registry: Sequence[dict[str, Any]] = (),
                 live: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of one window of ``storage``'s log (see the module's docstring).  ``registry``: the
    router's versions (:func:`registry_versions`); ``live``: what only a running gateway knows (its
    breakers, operating point, served router version)."""
    started = time.perf_counter()
    label, window_s = parse_since(window)
    now = time.time() if now is None else now
    since = None if window_s is None else now - window_s
    log = _Log(storage)
    rows, hist, bucket_s = _call_rows(log, since, now, window_s)
    totals, upstreams = _totals(rows)
    latency = _latency(hist)
    for name, entry in upstreams.items():
        entry["latency"] = latency.get(name, {})
        price = next((p for p in prices if p.name == name), None)
        entry["price"] = None if price is None else dict(input_per_million=price.input_per_million,
                                                         output_per_million=price.output_per_million)
    quality = _quality(log, since, totals["calls"])
    return dict(
        window=dict(label=label, seconds=window_s, since=since, now=now),
        totals=totals,
        counterfactuals=_counterfactuals(totals, prices, reference),
        coverage=quality["coverage"],
        quality_note=QUALITY_NOTE,
        upstreams=dict(sorted(upstreams.items())),
        keys=_keys(rows, prices, totals["spend"], (live or {}).get("keys") or {}),
        series=_series(rows, bucket_s, since, now),
        quality=quality,
        router=dict(versions_in_window=quality.pop("versions"), registry=list(registry)),
        recent=_recent(log, last_n),
        live=live or {},
        compute_ms=round((time.perf_counter() - started) * 1e3, 1),
    )


def registry_versions(storage: Any, folder: Any, kind: str = "query_router", last: int = 5) -> list[dict[str, Any]]:
    """The registry's latest versions with their evidence (the metrics their promotion was decided
    on), newest first; empty where there is no registry (a folder is never created here)."""
    from pathlib import Path

    from .registry import DatabaseRegistry, ModelRegistry
    from .storage.base import keeps_registry

    if keeps_registry(storage):
        versions = DatabaseRegistry(storage, kind).versions()
    elif folder is not None and (Path(folder) / "versions").is_dir():
        reg = ModelRegistry(folder)
        current = reg.current()
        versions = reg.versions()
        for v in versions:
            v.promoted = v.version == current
    else:
        return []
    out = []
    for v in sorted(versions, key=lambda v: v.timestamp, reverse=True)[:last]:
        out.append(dict(version=v.version, created_at=v.timestamp, current=bool(v.promoted), promoted_by=v.promoted_by,
                        promoted_at=v.promoted_at, parent=v.parent, evidence=_evidence(v.metrics)))
    return out


def _evidence(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a registry version (what its promotion was decided on)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
