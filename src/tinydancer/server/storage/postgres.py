"""The decision log in PostgreSQL, for several replicas sharing one database (``psycopg`` 3).

The same :class:`~tinydancer.server.storage.base.Storage` contract as SQLite, with this
backend's SQL kept here.  Tables and columns match SQLite's (``BYTEA`` for the packed arrays,
``DOUBLE PRECISION`` for reals); the schema version lives in ``tinydancer_schema`` and migrations
run under a transaction-scoped advisory lock, so replicas that start together migrate once: one
applies them, the others wait and find them applied.  A connection pool serves the threads; every
write is one transaction, committed before the caller returns (an outcome is acknowledged only
after its commit, as with SQLite).  ``schema`` puts the tables in a schema of their own (created
if missing), for tests and for sharing a database.

Selected by a ``postgresql://`` URL (``--database-url``, ``TINY_DANCER_DATABASE_URL``); libpq's
``options=-csearch_path%3D<schema>`` in the URL picks a schema.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable, Sequence

import numpy as np

from ...errors import TinyDancerError
from .base import (LABELLED_COLUMNS, LOG_TABLES, DecisionRow, LabelledLogs, candidate_rows, decision_tuples, outcome_target, refuse_duplicate,
                   inputs_from_rows, labelled_from_rows, statistics_from)

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("PostgreSQL storage needs psycopg 3: pip install 'tinydancer[postgres]'") from exc

__all__ = ["PG_MIGRATIONS", "PostgresStorage"]

#: pg_advisory_xact_lock key of the migrations (any constant; "tdschema" in ASCII)
MIGRATION_LOCK = 0x7464736368656D61

PG_MIGRATIONS: list[str] = [
    # 1-3 of SQLite's, as PostgreSQL starts them
    """
    CREATE TABLE candidates (
        id TEXT PRIMARY KEY, embedding BYTEA NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', created_at DOUBLE PRECISION,
        access_count BIGINT NOT NULL DEFAULT 0, success_rate DOUBLE PRECISION NOT NULL DEFAULT 0,
        updated_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE decisions (
        request_id TEXT PRIMARY KEY, kind TEXT NOT NULL, model_version TEXT NOT NULL, targets TEXT NOT NULL,
        n INTEGER NOT NULL, inputs BYTEA NOT NULL, confidence BYTEA NOT NULL, uncertainty BYTEA, lightweight BYTEA NOT NULL,
        n_lightweight INTEGER NOT NULL, confidence_sum DOUBLE PRECISION, uncertainty_sum DOUBLE PRECISION,
        latency_us DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL, query_key TEXT);
    CREATE INDEX decisions_created ON decisions (created_at);
    CREATE TABLE outcomes (
        request_id TEXT NOT NULL, target TEXT NOT NULL, rank INTEGER NOT NULL, success INTEGER NOT NULL,
        quality DOUBLE PRECISION, cost DOUBLE PRECISION, created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, target));
    CREATE TABLE outcome_corrections (
        request_id TEXT NOT NULL, target TEXT NOT NULL, old_success INTEGER, old_quality DOUBLE PRECISION,
        old_cost DOUBLE PRECISION, new_success INTEGER NOT NULL, new_quality DOUBLE PRECISION, new_cost DOUBLE PRECISION,
        corrected_at DOUBLE PRECISION NOT NULL, corrected_by TEXT);
    CREATE UNIQUE INDEX corrections_unique ON outcome_corrections (request_id, target, corrected_at)
    """,
    # 2: the gateway's calls (SQLite's 4)
    """
    CREATE TABLE calls (
        request_id TEXT NOT NULL, attempt INTEGER NOT NULL, upstream TEXT NOT NULL, target TEXT NOT NULL,
        status TEXT NOT NULL, http_status INTEGER, stream INTEGER NOT NULL, prompt_tokens BIGINT, completion_tokens BIGINT,
        cost DOUBLE PRECISION, ttft_ms DOUBLE PRECISION, total_ms DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (request_id, attempt));
    CREATE INDEX calls_created ON calls (created_at)
    """,
    # 3: prompts the gateway keeps when asked (SQLite's 5)
    "CREATE TABLE prompts (request_id TEXT PRIMARY KEY, text TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
]

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _q(n: int) -> str:
    return ",".join(["%s"] * n)


class PostgresStorage:
    """PostgreSQL behind the Storage contract; safe to share between threads (a connection pool)."""

    #: errors a retry can outlive (the writer keeps rows for the next commit on these)
    transient_errors: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)

    def __init__(self, url: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 8,
                 retention_days: float | None = None, retention_rows: int | None = None) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise TinyDancerError(f"schema {schema!r}: use lowercase letters, digits and _")
        self.url = url
        self.schema = schema
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        def configure(conn: psycopg.Connection) -> None:
            conn.execute(f"SET search_path TO {schema}")
            conn.commit()

        try:
            if schema is not None:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            self._pool = ConnectionPool(url, min_size=min_size, max_size=max_size,
                                        configure=configure if schema is not None else None, open=True, timeout=30.0)
        except psycopg.Error as exc:
            raise TinyDancerError(f"cannot open the PostgreSQL log at {_safe_url(url)}: {exc}") from None
        self.migrate()

    # ------------------------------------------------------------------ schema
    @property
    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            exists = conn.execute("SELECT to_regclass('tinydancer_schema')").fetchone()[0]
            if exists is None:
                return 0
            return int(conn.execute("SELECT version FROM tinydancer_schema").fetchone()[0])

    def migrate(self) -> int:
        """Apply the migrations this database has not seen, under an advisory lock; return the version."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS tinydancer_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM tinydancer_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO tinydancer_schema VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(PG_MIGRATIONS):
                raise TinyDancerError(f"the database has schema version {version}, newer than this release "
                                      f"({len(PG_MIGRATIONS)})")
            for number in range(version, len(PG_MIGRATIONS)):
                for statement in PG_MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("UPDATE tinydancer_schema SET version = %s", (len(PG_MIGRATIONS),))
        return len(PG_MIGRATIONS)

    # ------------------------------------------------------------------ writes
    def upsert_candidates(self, candidates: Iterable[Any]) -> int:
        rows = candidate_rows(candidates, time.time())
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO candidates VALUES ({_q(7)}) ON CONFLICT (id) DO UPDATE SET embedding=excluded.embedding,"
                " metadata=excluded.metadata, created_at=excluded.created_at, access_count=excluded.access_count,"
                " success_rate=excluded.success_rate, updated_at=excluded.updated_at", rows)
        return len(rows)

    def record_decisions(self, request_id: str, kind: str, model_version: str, rows: Sequence[DecisionRow],
                         latency_us: float) -> None:
        self.insert_decision_rows(decision_tuples(request_id, kind, model_version, rows, latency_us))

    def insert_decision_rows(self, data: list[tuple[Any, ...]]) -> None:
        self.insert_log(data, [], [])

    def insert_log(self, decisions: list[tuple[Any, ...]], calls: list[tuple[Any, ...]],
                   outcomes: list[tuple[Any, ...]], prompts: Sequence[tuple[Any, ...]] = ()) -> None:
        """Decisions, calls, automatic outcomes and prompts in one transaction (pipelined inserts)."""
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if decisions:
                cur.executemany(f"INSERT INTO decisions VALUES ({_q(15)})", decisions)
            if calls:
                cur.executemany(f"INSERT INTO calls VALUES ({_q(13)})", calls)
            if outcomes:
                cur.executemany(f"INSERT INTO outcomes VALUES ({_q(7)}) ON CONFLICT DO NOTHING", outcomes)
            if prompts:
                cur.executemany(f"INSERT INTO prompts VALUES ({_q(3)}) ON CONFLICT DO NOTHING", prompts)

    def record_outcome(self, request_id: str, target: str | None, success: bool, quality: float | None,
                       cost: float | None, *, correction: bool = False, by: str | None = None) -> str:
        """As SQLite's: one outcome per decision and target; the decision row is locked, so two
        replicas taking feedback for the same request at once are serialized."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT targets FROM decisions WHERE request_id=%s FOR UPDATE", (request_id,)).fetchone()
            chosen, rank = outcome_target(request_id, target, None if row is None else row[0])
            now = time.time()
            old = conn.execute("SELECT success, quality, cost FROM outcomes WHERE request_id=%s AND target=%s",
                               (request_id, chosen)).fetchone()
            refuse_duplicate(request_id, chosen, old, correction)
            if old is not None:
                conn.execute(f"INSERT INTO outcome_corrections VALUES ({_q(10)})",
                             (request_id, chosen, *old, int(bool(success)), quality, cost, now, by))
            conn.execute(f"INSERT INTO outcomes VALUES ({_q(7)}) ON CONFLICT (request_id, target) DO UPDATE SET "
                         "rank=excluded.rank, success=excluded.success, quality=excluded.quality, cost=excluded.cost, "
                         "created_at=excluded.created_at",
                         (request_id, chosen, rank, int(bool(success)), quality, cost, now))
            return str(chosen)

    def prune(self, now: float | None = None) -> int:
        """Retention, as SQLite's: decisions older than ``retention_days`` and all but the newest
        ``retention_rows``, with their outcomes, corrections, calls and prompts."""
        now = time.time() if now is None else now
        removed = 0
        with self._pool.connection() as conn, conn.transaction():
            cut: list[tuple[str, tuple[Any, ...]]] = []
            if self.retention_days is not None:
                cut.append(("created_at < %s", (now - self.retention_days * 86400.0,)))
            if self.retention_rows is not None:
                row = conn.execute("SELECT created_at FROM decisions ORDER BY created_at DESC LIMIT 1 OFFSET %s",
                                   (self.retention_rows,)).fetchone()
                if row is not None:
                    cut.append(("created_at <= %s", (row[0],)))
            for where, args in cut:
                old = f"SELECT request_id FROM decisions WHERE {where}"
                for table in ("outcomes", "outcome_corrections", "calls", "prompts"):
                    conn.execute(f"DELETE FROM {table} WHERE request_id IN ({old})", args)
                removed += conn.execute(f"DELETE FROM decisions WHERE {where}", args).rowcount
        return removed

    # ------------------------------------------------------------------ reads
    def labelled(self, kind: str = "candidate", since: float | None = None) -> LabelledLogs:
        sql = f"SELECT {LABELLED_COLUMNS} FROM decisions d JOIN outcomes o ON o.request_id = d.request_id WHERE d.kind = %s"
        args: list[Any] = [kind]
        if since is not None:
            sql += " AND d.created_at >= %s"
            args.append(since)
        with self._pool.connection() as conn:
            return labelled_from_rows(conn.execute(sql + " ORDER BY d.created_at, o.rank", args).fetchall())

    def logged_inputs(self, kind: str = "query", since: float | None = None) -> np.ndarray:
        sql = "SELECT inputs, n FROM decisions WHERE kind = %s" + (" AND created_at >= %s" if since is not None else "")
        with self._pool.connection() as conn:
            return inputs_from_rows(conn.execute(sql + " ORDER BY created_at", (kind,) if since is None else (kind, since))
                                    .fetchall())

    def prompt_texts(self, since: float | None = None) -> list[str]:
        sql = "SELECT text, MIN(created_at) AS t FROM prompts" + (" WHERE created_at >= %s" if since is not None else "")
        with self._pool.connection() as conn:
            rows = conn.execute(sql + " GROUP BY text ORDER BY t", (since,) if since is not None else ()).fetchall()
        return [r[0] for r in rows]

    def calls(self, request_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM calls" + (" WHERE request_id=%s" if request_id else "") + " ORDER BY created_at, attempt"
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, (request_id,) if request_id else ())
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def table_rows(self, table: str, batch: int = 5000) -> Iterable[list[tuple[Any, ...]]]:
        """Every row of a log table, in batches."""
        if table not in LOG_TABLES:
            raise ValueError(table)
        with self._pool.connection() as conn, conn.cursor(name=f"copy_{table}") as cur:
            cur.execute(f"SELECT * FROM {table}")
            while rows := cur.fetchmany(batch):
                yield [tuple(r) for r in rows]

    def insert_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Rows of a log table (from either backend); rows already here are kept."""
        if table not in LOG_TABLES:
            raise ValueError(table)
        if rows:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES ({_q(len(rows[0]))}) ON CONFLICT DO NOTHING", rows)

    def count(self, table: str) -> int:
        if table not in LOG_TABLES:
            raise ValueError(table)
        with self._pool.connection() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def statistics(self) -> dict[str, Any]:
        with self._pool.connection() as conn:
            totals = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(n_lightweight), 0), SUM(confidence_sum), "
                "SUM(uncertainty_sum), SUM(CASE WHEN uncertainty_sum IS NULL THEN 0 ELSE n END) FROM decisions").fetchone()
            latencies = np.array([r[0] for r in conn.execute("SELECT latency_us FROM decisions")], dtype=np.float64)
            outcomes = conn.execute("SELECT COUNT(*), AVG(success), AVG(quality) FROM outcomes").fetchone()
        return statistics_from(totals, latencies, outcomes)

    def close(self) -> None:
        self._pool.close()

    def drop_schema(self) -> None:
        """Remove this storage's schema and everything in it (tests; never the default schema)."""
        if self.schema is None:
            raise TinyDancerError("refusing to drop the default schema")
        self._pool.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def _safe_url(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
