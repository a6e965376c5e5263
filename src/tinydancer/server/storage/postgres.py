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

A database that stops answering without refusing (packets dropped by a network or a firewall) is
noticed within ``timeout_s`` (3 s by default) rather than after TCP's minutes: every connection
gets libpq's ``connect_timeout``, TCP keepalives and ``tcp_user_timeout`` (:func:`with_timeouts`;
what the URL sets itself wins), the service's connections a server-side ``statement_timeout``,
and each call on the service's path a client-side deadline (:class:`_Deadlines`) that catches
what TCP cannot see (a peer that takes bytes and never answers).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ...errors import TinyDancerError
from .rollups import PG_ROLLUPS
from .base import (CORRECTIONS_SQL, with_source, LABELLED_COLUMNS, LOG_TABLES, SPEND_BY_KEY_SQL, OUTCOME_INSERT, DecisionRow, LabelledLogs, candidate_rows, decision_tuples, outcome_target, refuse_duplicate,
                   inputs_from_rows, labelled_from_rows, safe_url, statistics_from)

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("PostgreSQL storage needs psycopg 3: pip install 'tinydancer[postgres]'") from exc

__all__ = ["PG_MIGRATIONS", "PostgresStorage"]

log = logging.getLogger("tinydancer.storage")

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
    # 4: the model registry (a folder beside a SQLite log): every version's file as a row, and per
    # kind of model ('model' for candidate scoring, 'query_router') the pointer to the promoted one
    """
    CREATE TABLE model_versions (
        version TEXT PRIMARY KEY, kind TEXT NOT NULL, data BYTEA NOT NULL, sha256 TEXT NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}', parent TEXT, size_bytes BIGINT NOT NULL, file_bytes BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, promoted_by TEXT, promoted_at DOUBLE PRECISION);
    CREATE INDEX model_versions_kind ON model_versions (kind, created_at);
    CREATE TABLE model_current (
        kind TEXT PRIMARY KEY, version TEXT NOT NULL REFERENCES model_versions (version),
        promoted_by TEXT, promoted_at DOUBLE PRECISION NOT NULL)
    """,
    # 5: when the replaced outcome had been recorded (SQLite's 7)
    "ALTER TABLE outcome_corrections ADD COLUMN old_at DOUBLE PRECISION",
    # 6: the name of the client key each gateway call came with, never the key (SQLite's 8)
    "ALTER TABLE calls ADD COLUMN key_name TEXT",
    # 7: bounded exploration's propensity and flag (SQLite's 9)
    "ALTER TABLE decisions ADD COLUMN propensity DOUBLE PRECISION; ALTER TABLE decisions ADD COLUMN explored INTEGER",
    # 8: the dashboard's rollups and the outcomes' index by time (SQLite's 10; see rollups.py)
    PG_ROLLUPS,
    # 9 (issue 27): who recorded each outcome (SQLite's 11): 'feedback', 'failure' or 'judge'; NULL before
    "ALTER TABLE outcomes ADD COLUMN source TEXT",
    # 10 (issue 27): the rank of the model the propensity is for (SQLite's 12; NULL: rank 0)
    "ALTER TABLE decisions ADD COLUMN propensity_rank INTEGER",
]


#: the channel promotions are announced on; the payload is "<schema> <kind> <version>"
REGISTRY_CHANNEL = "tinydancer_registry"
#: pg_advisory_xact_lock key of promotions ("tdpromot")
PROMOTION_LOCK = 0x746470726F6D6F74

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration: split at semicolons, except inside a $$-quoted function body."""
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if pending.count("$$") % 2 == 0:
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        yield pending


def _q(n: int) -> str:
    return ",".join(["%s"] * n)


def with_timeouts(url: str, timeout_s: float, statement_timeout_s: float | None = None) -> str:
    """``url`` as a libpq conninfo that notices a silent outage within about ``timeout_s``.

    ``connect_timeout`` bounds a connection attempt (libpq's least is 2 s); keepalives every second
    find an idle connection whose peer is gone (``keepalives_idle`` + ``keepalives_count`` ×
    ``keepalives_interval`` ≈ ``timeout_s``); ``tcp_user_timeout`` ends a connection whose sent
    bytes go unacknowledged that long; ``statement_timeout`` (server-side, only when given: the
    service's connections, not a retrain's long reads) cancels a statement stuck on a lock.  A
    parameter the URL sets itself is left as it is, so each can be tuned in the URL.
    """
    params = conninfo_to_dict(url)
    step = max(1, int(timeout_s // 3))
    defaults = {"connect_timeout": str(max(2, math.ceil(timeout_s))), "keepalives": "1", "keepalives_idle": str(step),
                "keepalives_interval": str(step), "keepalives_count": str(max(1, int(timeout_s // step) - 1)),
                "tcp_user_timeout": str(int(timeout_s * 1000))}
    for key, value in defaults.items():
        params.setdefault(key, value)
    options = str(params.get("options") or "")
    if statement_timeout_s is not None and "statement_timeout" not in options:
        params["options"] = f"{options} -c statement_timeout={int(statement_timeout_s * 1000)}".strip()
    return make_conninfo("", **params)


class _Deadlines:
    """Client-side deadlines on calls over a connection.  A call still waiting for PostgreSQL past
    its deadline has its socket shut down, so it fails at once with ``OperationalError`` (a
    transient error: the writer keeps its rows, feedback answers 503) instead of waiting for TCP.
    The libpq settings cannot do this alone: where a peer takes bytes but never answers (a hung
    server, a proxy whose far side is gone) every keepalive is acknowledged and nothing times out.

    A call guarded with a ``stop`` event is cut as soon as it is set too (a prompt shutdown).  One
    thread checks every ``tick_s``; guarding a call costs two dictionary operations under a lock.
    """

    def __init__(self, tick_s: float = 0.1) -> None:
        self.tick_s = tick_s
        self._calls: dict[int, list[Any]] = {}  # id -> [deadline, connection, fired, stop]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, conn: psycopg.Connection, seconds: float | None,
              stop: threading.Event | None = None) -> Iterator[None]:
        if seconds is None:
            yield
            return
        entry = [time.monotonic() + seconds, conn, False, stop]
        with self._lock:
            self._calls[id(entry)] = entry
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._watch, name="tinydancer-pg-deadlines", daemon=True)
                self._thread.start()
        try:
            yield
        except psycopg.OperationalError as exc:
            if entry[2]:
                why = "stopped" if stop is not None and stop.is_set() else f"PostgreSQL did not answer within {seconds:g} s"
                raise psycopg.OperationalError(why) from exc
            raise
        finally:
            with self._lock:
                self._calls.pop(id(entry), None)
            if entry[2] and not conn.closed:
                conn.close()  # its socket is shut: the pool must not hand it out again

    def _watch(self) -> None:
        while True:
            stopping = self._stop.wait(self.tick_s)
            now = time.monotonic()
            with self._lock:  # held while shutting down: the guarded call cannot return its connection meanwhile
                for entry in self._calls.values():
                    if not entry[2] and (now > entry[0] or entry[3] is not None and entry[3].is_set()
                                         or self._stop.is_set()):
                        entry[2] = True
                        _shut(entry[1])
            if stopping:
                return  # closed: every call still guarded was cut above

    def close(self) -> None:
        self._stop.set()


def _shut(conn: psycopg.Connection) -> None:
    """Shut down a connection's socket under a call blocked on it (the call then fails at once)."""
    try:
        sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
    except (OSError, psycopg.Error):
        return  # closed already
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _long(conn: psycopg.Connection) -> None:
    """Lift the service's statement_timeout for this transaction: a scan of the whole log or a
    migration may rightly take long (needs a transaction: the pool's connections open one)."""
    conn.execute("SET LOCAL statement_timeout = 0")


class PostgresStorage:
    """PostgreSQL behind the Storage contract; safe to share between threads (a connection pool)."""

    #: over the network: the decision writer commits from a thread, the feedback route too
    remote = True
    #: errors a retry can outlive (the writer keeps rows for the next commit on these)
    transient_errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, PoolTimeout)
    errors: tuple[type[BaseException], ...] = (psycopg.Error, PoolTimeout)

    #: seconds between two retention passes of the maintenance thread
    PRUNE_EVERY_S = 60.0

    def __init__(self, url: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 8,
                 retention_days: float | None = None, retention_rows: int | None = None,
                 maintenance_interval_s: float = 0.0, wait_s: float = 5.0, timeout_s: float = 3.0,
                 statement_timeout_s: float | None = None) -> None:
        """``maintenance_interval_s`` > 0 starts a thread that checks the database that often (what
        :meth:`problem` reports) and applies retention every :attr:`PRUNE_EVERY_S`; ``wait_s`` is how
        long a caller waits for a connection before the call fails (an outage is reported, not queued).
        ``timeout_s``: how long a silent database may take to be noticed (see :func:`with_timeouts`);
        ``statement_timeout_s`` (the service sets it, batch jobs do not): the server cancels a
        statement after that long, and a call of the service's path (a log commit, an outcome, a
        registry read) gets a second more (for the server's answer) before it is cut client-side."""
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise TinyDancerError(f"schema {schema!r}: use lowercase letters, digits and _")
        self.url = url
        self.timeout_s = timeout_s
        #: the client-side deadline of a call on the service's path; None: calls are not cut
        self.call_deadline_s = None if statement_timeout_s is None else statement_timeout_s + min(timeout_s, 1.0)
        self.conninfo = with_timeouts(url, timeout_s, statement_timeout_s)
        self._deadlines = _Deadlines()
        self.schema = schema
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self._problem: str | None = None
        self._stop = threading.Event()
        def configure(conn: psycopg.Connection) -> None:
            conn.execute(f"SET search_path TO {schema}")
            conn.commit()

        try:
            if schema is not None:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            self._pool = ConnectionPool(self.conninfo, min_size=min_size, max_size=max_size,
                                        configure=configure if schema is not None else None, open=True, timeout=wait_s)
            self.migrate()
            with self._pool.connection() as conn:
                #: the schema the tables are in: promotions announced for another schema are not ours
                self.namespace = str(conn.execute("SELECT current_schema()").fetchone()[0])
        except (psycopg.Error, PoolTimeout) as exc:
            if hasattr(self, "_pool"):
                self._pool.close()
            raise TinyDancerError(f"cannot open the PostgreSQL log at {safe_url(url)}: {exc}") from None
        self._maintenance: threading.Thread | None = None
        if maintenance_interval_s > 0:
            self._maintenance = threading.Thread(target=self._maintain, args=(maintenance_interval_s,),
                                                 name="tinydancer-pg-maintenance", daemon=True)
            self._maintenance.start()

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A session-level advisory lock named ``name`` in this schema, held while the block runs on
        a connection of its own: True when this process got it, False when another holds it (the
        scheduled retrain runs on one replica at a time; a process that dies lets it go)."""
        key = int.from_bytes(hashlib.sha256(f"{self.namespace}:{name}".encode()).digest()[:8], "big", signed=True)
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            got = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
            try:
                yield got
            finally:
                if got and not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def problem(self) -> str | None:
        """Why the database was unreachable at the last check of the maintenance thread, or None."""
        return self._problem

    @contextmanager
    def _connection(self, deadline_s: float | None = None,
                    stop: threading.Event | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection whose use is cut after ``deadline_s`` (the service's calls), or when
        ``stop`` is set, or at :meth:`close`."""
        wait_s = None if deadline_s is None else self.timeout_s  # for a free connection (the pool may be reconnecting)
        with self._pool.connection(timeout=wait_s) as conn, self._deadlines.guard(conn, deadline_s, stop or self._stop):
            yield conn

    def _maintain(self, interval_s: float) -> None:
        last_prune = time.monotonic()
        # a real round trip, bounded so that a database gone silent is reported within timeout_s
        # of its last answer (the check's interval included)
        probe_s = max(0.5, self.timeout_s - interval_s)
        while not self._stop.wait(interval_s):
            try:
                with (self._pool.connection(timeout=probe_s) as conn, self._deadlines.guard(conn, probe_s, self._stop)):
                    conn.execute("SELECT 1")
                self._problem = None
            except (psycopg.Error, PoolTimeout) as exc:
                self._problem = f"PostgreSQL at {safe_url(self.url)} does not answer ({str(exc).strip()[:200]})"
                continue
            if (self.retention_days or self.retention_rows) and time.monotonic() - last_prune >= self.PRUNE_EVERY_S:
                last_prune = time.monotonic()
                try:
                    removed = self.prune()
                    if removed:
                        log.info("retention: %d old decisions removed", removed)
                except psycopg.Error as exc:
                    log.warning("retention failed (retried in %.0f s): %s", self.PRUNE_EVERY_S, exc)

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
            _long(conn)
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
                for statement in _statements(PG_MIGRATIONS[number]):
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
        """Decisions, calls, automatic outcomes and prompts in one transaction: the decisions by COPY
        (the bulk of the bytes: a request's inputs), the rest by pipelined inserts."""
        with self._connection(self.call_deadline_s) as conn, conn.transaction(), conn.cursor() as cur:
            if decisions:
                with cur.copy("COPY decisions FROM STDIN") as copy:
                    for row in decisions:
                        copy.write_row(row)
            if calls:
                cur.executemany(f"INSERT INTO calls VALUES ({_q(14)})", calls)
            if outcomes:
                cur.executemany(f"INSERT INTO {OUTCOME_INSERT} VALUES ({_q(8)}) ON CONFLICT DO NOTHING",
                                with_source(outcomes))
            if prompts:
                cur.executemany(f"INSERT INTO prompts VALUES ({_q(3)}) ON CONFLICT DO NOTHING", prompts)

    def record_outcome(self, request_id: str, target: str | None, success: bool, quality: float | None,
                       cost: float | None, *, correction: bool = False, by: str | None = None,
                       source: str = "feedback") -> str:
        """As SQLite's: one outcome per decision and target; the decision row is locked, so two
        replicas taking feedback for the same request at once are serialized."""
        with self._connection(self.call_deadline_s) as conn, conn.transaction():
            row = conn.execute("SELECT targets FROM decisions WHERE request_id=%s FOR UPDATE", (request_id,)).fetchone()
            chosen, rank = outcome_target(request_id, target, None if row is None else row[0])
            now = time.time()
            old = conn.execute("SELECT success, quality, cost, created_at, source FROM outcomes "
                               "WHERE request_id=%s AND target=%s", (request_id, chosen)).fetchone()
            refuse_duplicate(request_id, chosen, old, correction, source, None if old is None else old[4])
            if old is not None:
                conn.execute(f"INSERT INTO outcome_corrections VALUES ({_q(11)})",
                             (request_id, chosen, *old[:3], int(bool(success)), quality, cost, now, by, old[3]))
            conn.execute(f"INSERT INTO {OUTCOME_INSERT} VALUES ({_q(8)}) ON CONFLICT (request_id, target) DO UPDATE SET "
                         "rank=excluded.rank, success=excluded.success, quality=excluded.quality, cost=excluded.cost, "
                         "created_at=excluded.created_at, source=excluded.source",
                         (request_id, chosen, rank, int(bool(success)), quality, cost, now, source))
            return str(chosen)

    def prune(self, now: float | None = None) -> int:
        """Retention, as SQLite's: decisions older than ``retention_days`` and all but the newest
        ``retention_rows``, with their outcomes, corrections, calls and prompts."""
        now = time.time() if now is None else now
        removed = 0
        with self._pool.connection() as conn, conn.transaction():
            _long(conn)
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

    # ------------------------------------------------------------------ the model registry
    def registry_add(self, kind: str, version: str, data: bytes, sha256: str, metrics: str, parent: str | None,
                     size_bytes: int, created_at: float) -> bool:
        """Keep one version's file; False when the version name is taken (the caller picks another)."""
        with self._pool.connection() as conn, conn.transaction():
            cur = conn.execute(f"INSERT INTO model_versions (version, kind, data, sha256, metrics, parent, size_bytes, "
                               f"file_bytes, created_at) VALUES ({_q(9)}) ON CONFLICT (version) DO NOTHING",
                               (version, kind, data, sha256, metrics, parent, size_bytes, len(data), created_at))
            return cur.rowcount == 1

    def registry_versions(self, kind: str) -> list[dict[str, Any]]:
        """Every version of a kind, oldest first, without the file bytes."""
        sql = ("SELECT v.version, v.created_at, v.sha256, v.metrics, v.size_bytes, v.file_bytes, v.parent, "
               "v.promoted_by, v.promoted_at FROM model_versions v WHERE v.kind = %s ORDER BY v.created_at, v.version")
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, (kind,))
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def registry_current(self, kind: str, stop: threading.Event | None = None) -> tuple[str, str] | None:
        """(version, sha256) of the promoted version of a kind, or None before the first promotion
        (cut at once when ``stop`` is set: a follower told to stop does not wait for the database)."""
        with self._connection(self.call_deadline_s, stop) as conn:
            row = conn.execute("SELECT c.version, v.sha256 FROM model_current c JOIN model_versions v "
                               "ON v.version = c.version WHERE c.kind = %s", (kind,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def registry_data(self, version: str, stop: threading.Event | None = None) -> bytes:
        with self._connection(self.call_deadline_s, stop) as conn:
            row = conn.execute("SELECT data FROM model_versions WHERE version = %s", (version,)).fetchone()
        if row is None:
            raise TinyDancerError(f"no model version {version!r} in the registry")
        return bytes(row[0])

    def registry_promote(self, kind: str, version: str, by: str | None, expected: str | None,
                         check: bool = True) -> str | None:
        """Move the current pointer of ``kind`` to ``version`` in one transaction and announce it.

        With ``check``, the pointer moves only if it still names ``expected`` (a compare-and-set
        under an advisory lock, so two retrains that started from the same version cannot both
        promote); returns None when it moved, else the version that is current instead.  The
        NOTIFY is delivered to the listening replicas when the transaction commits.
        """
        now = time.time()
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROMOTION_LOCK,))
            row = conn.execute("SELECT version FROM model_current WHERE kind = %s", (kind,)).fetchone()
            found = None if row is None else str(row[0])
            if check and found != expected:
                return found if found is not None else "(none)"
            updated = conn.execute("UPDATE model_versions SET promoted_by = %s, promoted_at = %s WHERE version = %s "
                                   "AND kind = %s", (by, now, version, kind)).rowcount
            if updated != 1:
                raise TinyDancerError(f"no {kind} version {version!r} in the registry")
            conn.execute("INSERT INTO model_current VALUES (%s, %s, %s, %s) ON CONFLICT (kind) DO UPDATE SET "
                         "version = excluded.version, promoted_by = excluded.promoted_by, "
                         "promoted_at = excluded.promoted_at", (kind, version, by, now))
            conn.execute("SELECT pg_notify(%s, %s)", (REGISTRY_CHANNEL, f"{self.namespace} {kind} {version}"))
        return None

    def registry_notifications(self, stop: threading.Event, timeout_s: float = 5.0) -> Iterator[tuple[str, str] | None]:
        """Promotions as they happen, on a connection of their own: (kind, version), or None each
        ``timeout_s`` without one (so the caller can look at ``stop`` and poll).  The first item,
        None, comes as soon as the connection listens: a promotion made before it was not
        announced here, so the caller reads the current versions then, never before.  Raises
        ``psycopg.OperationalError`` when the connection is lost; the caller reconnects.

        A listening connection only reads, so nothing tells it that its peer went silent: each
        quiet ``timeout_s`` it sends a ping that must answer within :attr:`timeout_s`, and a
        connection that does not is dropped (the caller reconnects and reads what it missed)."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            with self._deadlines.guard(conn, self.timeout_s, stop):
                conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
            yield None
            while not stop.is_set():
                got = False
                for note in conn.notifies(timeout=timeout_s, stop_after=1):
                    got = True
                    namespace, kind, version = (note.payload.split(" ") + ["", "", ""])[:3]
                    if namespace == self.namespace:
                        yield kind, version
                if not got:
                    with self._deadlines.guard(conn, self.timeout_s, stop):
                        conn.execute("SELECT 1")
                    yield None

    # ------------------------------------------------------------------ reads
    def labelled(self, kind: str = "candidate", since: float | None = None) -> LabelledLogs:
        sql = f"SELECT {LABELLED_COLUMNS} FROM decisions d JOIN outcomes o ON o.request_id = d.request_id WHERE d.kind = %s"
        args: list[Any] = [kind]
        if since is not None:
            sql += " AND d.created_at >= %s"
            args.append(since)
        with self._pool.connection() as conn:
            _long(conn)
            return labelled_from_rows(conn.execute(sql + " ORDER BY d.created_at, o.rank", args).fetchall())

    def corrections(self, after: float) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return conn.execute(CORRECTIONS_SQL, (after,)).fetchall()

    def spend_by_key(self, since: float) -> dict[str, float]:
        # the gateway's path (start-up, and every refresh): cut at the service's deadline
        with self._connection(self.call_deadline_s) as conn:
            return {str(k): float(v) for k, v in conn.execute(SPEND_BY_KEY_SQL, (since,))}

    def logged_inputs(self, kind: str = "query", since: float | None = None) -> np.ndarray:
        sql = "SELECT inputs, n FROM decisions WHERE kind = %s" + (" AND created_at >= %s" if since is not None else "")
        with self._pool.connection() as conn:
            _long(conn)
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

    def query(self, sql: str, args: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """A read-only query of the reports, written with SQLite's ``?`` placeholders."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            _long(conn)
            cur.execute(sql.replace("?", "%s"), tuple(args))
            return [d.name for d in cur.description or ()], cur.fetchall()

    def statistics(self) -> dict[str, Any]:
        with self._pool.connection() as conn:
            _long(conn)
            totals = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(n_lightweight), 0), SUM(confidence_sum), "
                "SUM(uncertainty_sum), SUM(CASE WHEN uncertainty_sum IS NULL THEN 0 ELSE n END) FROM decisions").fetchone()
            latencies = np.array([r[0] for r in conn.execute("SELECT latency_us FROM decisions")], dtype=np.float64)
            outcomes = conn.execute("SELECT COUNT(*), AVG(success), AVG(quality) FROM outcomes").fetchone()
        return statistics_from(totals, latencies, outcomes)

    def close(self) -> None:
        """Stop the maintenance thread (its check in flight is cut) and close the pool: prompt even
        while the database is silent (a pool worker still connecting is left to its connect_timeout)."""
        self._stop.set()
        self._deadlines.close()
        self._pool.close(timeout=0.2)
        if self._maintenance is not None:
            self._maintenance.join(timeout=10)

    def drop_schema(self) -> None:
        """Remove this storage's schema and everything in it (tests; never the default schema)."""
        if self.schema is None:
            raise TinyDancerError("refusing to drop the default schema")
        self.close()
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
