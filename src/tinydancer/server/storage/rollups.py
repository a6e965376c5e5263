"""The dashboard's rollups of the ``calls`` table, as SQLite's migration 10 and PostgreSQL's 8 create them.

Per hour, upstream, model, status and client key name (``''`` for calls without one: a key of
the primary key cannot be NULL and still merge): attempts, first attempts (= calls), the token and cost sums
(``call_hours``); per hour and upstream a histogram of successful attempts' total time (metric 0)
and time to first byte (metric 1) (``call_latency``).  Triggers keep both in step with every insert
(the gateway's log, ``storage copy``) and delete (retention); the migration fills them from the
calls already logged.  :mod:`tinydancer.server.report` reads them, and decodes the bins
(``latency_bin`` and ``bin_range`` there compute the same bins in Python).  The outcomes get an
index by model and time: the page counts each model's outcomes in a window as one range scan.
"""

from __future__ import annotations

__all__ = ["PG_ROLLUPS", "SQLITE_ROLLUPS"]

#: the rollups' hour of a call row ``r`` and latency bin of a value ``v`` in ms: 100 × the digits of
#: the value in 0.01 ms + its leading two digits, rounded down to a step of 2 from 20 and of 5 from
#: 50 (35 bins a decade, each at most 10 % wide; decoded by tinydancer.server.report.bin_range)
_HOUR_SQLITE = "CAST({r}.created_at / 3600 AS INTEGER) * 3600"
_LEAD_SQLITE = "CAST(substr(CAST(CAST(max({v}, 0) * 100 AS INTEGER) AS TEXT), 1, 2) AS INTEGER)"
_BIN_SQLITE = ("(length(CAST(CAST(max({v}, 0) * 100 AS INTEGER) AS TEXT)) * 100 + " + _LEAD_SQLITE + " - CASE WHEN "
               + _LEAD_SQLITE + " >= 50 THEN " + _LEAD_SQLITE + " % 5 WHEN " + _LEAD_SQLITE + " >= 20 THEN " + _LEAD_SQLITE
               + " % 2 ELSE 0 END)")


def _sqlite_trigger(row: str, sign: int) -> str:
    """The trigger adding (``NEW``, +1) or taking away (``OLD``, -1) one calls row from the rollups."""
    event = "INSERT" if sign > 0 else "DELETE"
    hour = _HOUR_SQLITE.format(r=row)
    used = f"{row}.prompt_tokens IS NOT NULL"
    latency = "".join(
        f"""
        INSERT INTO call_latency SELECT {hour}, {row}.upstream, {metric}, {_BIN_SQLITE.format(v=f"{row}.{col}")}, {sign}
            WHERE {row}.status = 'ok' AND {row}.{col} IS NOT NULL
            ON CONFLICT (hour, upstream, metric, bin) DO UPDATE SET n = n + excluded.n;"""
        for metric, col in ((0, "total_ms"), (1, "ttft_ms")))
    return f"""
    CREATE TRIGGER calls_rollup_{event.lower()} AFTER {event} ON calls BEGIN
        INSERT INTO call_hours VALUES ({hour}, {row}.upstream, {row}.target, {row}.status, COALESCE({row}.key_name, ''), {sign},
            {sign} * ({row}.attempt = 0), {sign} * ({used}), {sign} * COALESCE({row}.prompt_tokens, 0),
            {sign} * COALESCE({row}.completion_tokens, 0), {sign} * (CASE WHEN {used} THEN COALESCE({row}.cost, 0) ELSE 0 END),
            {sign} * COALESCE({row}.cost, 0))
            ON CONFLICT (hour, upstream, target, status, key_name) DO UPDATE SET attempts = attempts + excluded.attempts,
            firsts = firsts + excluded.firsts, usage_n = usage_n + excluded.usage_n,
            prompt_tokens = prompt_tokens + excluded.prompt_tokens,
            completion_tokens = completion_tokens + excluded.completion_tokens,
            usage_cost = usage_cost + excluded.usage_cost, cost = cost + excluded.cost;{latency}
    END;"""


SQLITE_ROLLUPS = f"""
    CREATE TABLE call_hours (
        hour INTEGER NOT NULL, upstream TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL, key_name TEXT NOT NULL,
        attempts INTEGER NOT NULL, firsts INTEGER NOT NULL, usage_n INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL, usage_cost REAL NOT NULL, cost REAL NOT NULL,
        PRIMARY KEY (hour, upstream, target, status, key_name)
    );
    CREATE TABLE call_latency (
        hour INTEGER NOT NULL, upstream TEXT NOT NULL, metric INTEGER NOT NULL, bin INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (hour, upstream, metric, bin)
    );
    {_sqlite_trigger("NEW", 1)}
    {_sqlite_trigger("OLD", -1)}
    INSERT INTO call_hours SELECT {_HOUR_SQLITE.format(r="c")}, upstream, target, status, COALESCE(key_name, ''), COUNT(*),
        SUM(attempt = 0),
        SUM(prompt_tokens IS NOT NULL), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
        COALESCE(SUM(CASE WHEN prompt_tokens IS NOT NULL THEN cost END), 0), COALESCE(SUM(cost), 0)
        FROM calls c GROUP BY 1, 2, 3, 4, 5;
    INSERT INTO call_latency SELECT {_HOUR_SQLITE.format(r="c")}, upstream, 0, {_BIN_SQLITE.format(v="c.total_ms")}, COUNT(*)
        FROM calls c WHERE status = 'ok' GROUP BY 1, 2, 3, 4;
    INSERT INTO call_latency SELECT {_HOUR_SQLITE.format(r="c")}, upstream, 1, {_BIN_SQLITE.format(v="c.ttft_ms")}, COUNT(*)
        FROM calls c WHERE status = 'ok' AND ttft_ms IS NOT NULL GROUP BY 1, 2, 3, 4;
    CREATE INDEX outcomes_target ON outcomes (target, created_at, success, quality, rank)
    """

#: SQLite's rollup expressions (above) in PostgreSQL's words: the same hours and bins
_HOUR_PG = "(floor(c.created_at / 3600) * 3600)::bigint"
_LEAD_PG = "substr(trunc(greatest({v}, 0) * 100)::bigint::text, 1, 2)::int"
_BIN_PG = ("(length(trunc(greatest({v}, 0) * 100)::bigint::text) * 100 + " + _LEAD_PG + " - CASE WHEN " + _LEAD_PG
           + " >= 50 THEN " + _LEAD_PG + " % 5 WHEN " + _LEAD_PG + " >= 20 THEN " + _LEAD_PG + " % 2 ELSE 0 END)")


def _pg_fold(source: str, sign: str) -> str:
    """Add the calls rows of ``source`` (times ``sign``) to both rollups: one upsert per group, in
    key order, so that concurrent commits (replicas sharing the log) lock rollup rows in one order."""
    return f"""
        INSERT INTO call_hours SELECT {_HOUR_PG}, upstream, target, status, COALESCE(key_name, ''), {sign} * COUNT(*),
            {sign} * COUNT(*) FILTER (WHERE attempt = 0), {sign} * COUNT(prompt_tokens),
            {sign} * COALESCE(SUM(prompt_tokens), 0), {sign} * COALESCE(SUM(completion_tokens), 0),
            {sign} * COALESCE(SUM(cost) FILTER (WHERE prompt_tokens IS NOT NULL), 0), {sign} * COALESCE(SUM(cost), 0)
            FROM {source} c GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
            ON CONFLICT (hour, upstream, target, status, key_name) DO UPDATE SET attempts = call_hours.attempts + excluded.attempts,
            firsts = call_hours.firsts + excluded.firsts, usage_n = call_hours.usage_n + excluded.usage_n,
            prompt_tokens = call_hours.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = call_hours.completion_tokens + excluded.completion_tokens,
            usage_cost = call_hours.usage_cost + excluded.usage_cost, cost = call_hours.cost + excluded.cost;
        INSERT INTO call_latency SELECT h, upstream, metric, bin, {sign} * COUNT(*) FROM (
            SELECT {_HOUR_PG} AS h, upstream, 0 AS metric, {_BIN_PG.format(v="c.total_ms")} AS bin
                FROM {source} c WHERE status = 'ok'
            UNION ALL SELECT {_HOUR_PG}, upstream, 1, {_BIN_PG.format(v="c.ttft_ms")}
                FROM {source} c WHERE status = 'ok' AND ttft_ms IS NOT NULL) x
            GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
            ON CONFLICT (hour, upstream, metric, bin) DO UPDATE SET n = call_latency.n + excluded.n;"""


#: statement-level triggers (one fold per insert or delete statement, COPY included) over the
#: statement's rows ("changed", a transition table)
PG_ROLLUPS = f"""
    CREATE TABLE call_hours (
        hour BIGINT NOT NULL, upstream TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL, key_name TEXT NOT NULL,
        attempts BIGINT NOT NULL, firsts BIGINT NOT NULL, usage_n BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL, usage_cost DOUBLE PRECISION NOT NULL, cost DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (hour, upstream, target, status, key_name));
    CREATE TABLE call_latency (
        hour BIGINT NOT NULL, upstream TEXT NOT NULL, metric INTEGER NOT NULL, bin INTEGER NOT NULL, n BIGINT NOT NULL,
        PRIMARY KEY (hour, upstream, metric, bin));
    CREATE FUNCTION calls_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE sign INTEGER := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;
    BEGIN
        {_pg_fold("changed", "sign")}
        RETURN NULL;
    END $$;
    CREATE TRIGGER calls_rollup_insert AFTER INSERT ON calls REFERENCING NEW TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION calls_rollup();
    CREATE TRIGGER calls_rollup_delete AFTER DELETE ON calls REFERENCING OLD TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION calls_rollup();
    {_pg_fold("calls", "1")}
    CREATE INDEX outcomes_target ON outcomes (target, created_at, success, quality, rank)
    """
