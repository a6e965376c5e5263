"""Where decisions and their outcomes are kept, so routing logs become training data.

:class:`SQLiteStorage` implements :class:`~tinydancer.server.storage.base.Storage` (WAL mode,
one file).  The schema is versioned with ``PRAGMA user_version`` and upgraded by the ordered
``MIGRATIONS`` when a database is opened.

Tables
    candidates  the candidate catalogue (embedding, metadata, counters)
    decisions   one row per request: model version, the ranked targets with the features or query
                embedding retraining needs, confidence, uncertainty and decision of each (packed
                arrays), latency, time — one insert per routed request, not one per candidate
    outcomes    feedback joined to decisions by request id and target: success, quality, cost
    prompts     the text the gateway routed on, only when its config says log_prompts: true
    calls       the gateway's upstream attempts: one row per attempt of a call (status, tokens,
                actual cost, time to first token, total time), joined to its decision by request id
Statistics (totals, averages, p50/p95/p99 latency) are computed from the stored rows.

Durability: an outcome is committed before it is acknowledged, and in WAL mode a committed
transaction survives the process being killed (SIGKILL).  The service logs decisions through a
:class:`~tinydancer.server.storage.writer.DecisionWriter` (group commit, a few milliseconds); feedback flushes it first, so an
outcome never misses its decision.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ...errors import TinyDancerError
from .rollups import SQLITE_ROLLUPS
from .base import (CORRECTIONS_SQL, with_source, LABELLED_COLUMNS, LOG_COLUMNS, LOG_TABLES, SPEND_BY_KEY_SQL, OUTCOME_INSERT, DecisionRow, LabelledLogs, candidate_rows, decision_tuples, outcome_target, refuse_duplicate,
                   inputs_from_rows, labelled_from_rows, statistics_from)

log = logging.getLogger("tinydancer.storage")

#: the log's inserts, one placeholder per column of ``LOG_COLUMNS`` (a migration that adds a column
#: adds it there, not to a count of question marks here)
_INSERT = {table: f"INSERT INTO {table} VALUES ({','.join('?' * len(cols))})" for table, cols in LOG_COLUMNS.items()}

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE candidates (
        id TEXT PRIMARY KEY,
        embedding BLOB NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at REAL,
        access_count INTEGER NOT NULL DEFAULT 0,
        success_rate REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE decisions (
        request_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,              -- 'candidate' or 'query'
        model_version TEXT NOT NULL,
        targets TEXT NOT NULL,           -- JSON list: candidate ids (ranked) or the chosen model
        n INTEGER NOT NULL,
        inputs BLOB NOT NULL,            -- float32 (n, d): features (candidate) or query embedding
        confidence BLOB NOT NULL,        -- float32 (n,), NaN for a non-finite score
        uncertainty BLOB,                -- float32 (n,), NULL when uncalibrated
        lightweight BLOB NOT NULL,       -- uint8 (n,)
        n_lightweight INTEGER NOT NULL,
        confidence_sum REAL,
        uncertainty_sum REAL,
        latency_us REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX decisions_created ON decisions (created_at);
    CREATE TABLE outcomes (
        request_id TEXT NOT NULL,
        target TEXT NOT NULL,
        rank INTEGER NOT NULL,
        success INTEGER NOT NULL,
        quality REAL,
        cost REAL,
        created_at REAL NOT NULL,
        PRIMARY KEY (request_id, target)
    );
    """,
    # 2: a query decision's key (hash of its text, 16 hex digits) so that its feedback can reach
    #    the query router's outcome memory; NULL for candidates and for queries sent as embeddings
    "ALTER TABLE decisions ADD COLUMN query_key TEXT",
    # 3: one outcome per (decision, target); replacing one is a correction, and every correction is
    #    kept here with the value it replaced and who sent it (a key's fingerprint, never the key)
    """
    CREATE TABLE outcome_corrections (
        request_id TEXT NOT NULL,
        target TEXT NOT NULL,
        old_success INTEGER, old_quality REAL, old_cost REAL,
        new_success INTEGER NOT NULL, new_quality REAL, new_cost REAL,
        corrected_at REAL NOT NULL,
        corrected_by TEXT
    );
    """,
    # 4: the gateway's upstream calls, one row per attempt (a call that fell back has several)
    """
    CREATE TABLE calls (
        request_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        upstream TEXT NOT NULL,          -- the configured upstream's name
        target TEXT NOT NULL,            -- the router's model it plays
        status TEXT NOT NULL,            -- ok, http_429, http_5xx, timeout, connect, broken, client_error, client_cancelled
        http_status INTEGER,
        stream INTEGER NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost REAL,                       -- dollars, from usage x the upstream's prices
        ttft_ms REAL,                    -- time to the first byte (streams: the first chunk)
        total_ms REAL NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (request_id, attempt)
    );
    CREATE INDEX calls_created ON calls (created_at)
    """,
    # 5: the text the gateway routed on, kept only when the operator asks (log_prompts), so that
    #    `tinydancer label --from-db` can label real traffic
    """
    CREATE TABLE prompts (
        request_id TEXT PRIMARY KEY,
        text TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    # 6: a correction is one row per decision, target and time, so copying a log twice keeps one
    "CREATE UNIQUE INDEX corrections_unique ON outcome_corrections (request_id, target, corrected_at)",
    # 7: when the replaced outcome had been recorded, so retraining knows whether its outcome
    #    memory already counted it (NULL in corrections made before this column)
    "ALTER TABLE outcome_corrections ADD COLUMN old_at REAL",
    # 8: the name of the client key each gateway call came with (never the key itself), for spend
    #    and budgets per key; NULL without client keys and in calls logged before this column
    "ALTER TABLE calls ADD COLUMN key_name TEXT",
    # 9: bounded exploration (server/exploration.py): the probability of the planned model under the
    #    logging policy (NULL: deterministic) and whether it was explored, for off-policy estimates
    "ALTER TABLE decisions ADD COLUMN propensity REAL; ALTER TABLE decisions ADD COLUMN explored INTEGER",
    # 10: the dashboard's rollups (tinydancer.server.report): calls, tokens and cost per hour, upstream,
    #    model, status and client key name, and a latency histogram per hour and upstream, kept by triggers on calls
    #    (see rollups.py); outcomes get an index by time for the page
    SQLITE_ROLLUPS,
    # 11 (issue 27): who recorded each outcome: 'feedback', 'failure' (a failed gateway attempt) or
    #    'judge' (the gateway's judge grading a sampled answer); NULL for outcomes recorded before
    "ALTER TABLE outcomes ADD COLUMN source TEXT",
    # 12 (issue 27): the rank, in the decision's targets, of the model the propensity is for: 0 when
    #    it answered; its failed attempt's rank when the call fell back from it (NULL: rank 0)
    "ALTER TABLE decisions ADD COLUMN propensity_rank INTEGER",
]


class SQLiteStorage:
    """SQLite in WAL mode; safe to share between threads (one connection per thread).

    With ``checkpoint_interval_s`` > 0, no commit checkpoints the WAL into the database file (which
    fsyncs, and would stall a serving event loop); a background thread does it that often instead.
    While it runs, :attr:`checkpointing` is set, and the decision writer and the feedback route
    hold back: a checkpoint raced by new commits never catches up.  Past ``wal_limit_bytes`` the
    checkpoint truncates the WAL (see :meth:`checkpoint`).  Under route + feedback from 8 clients
    the WAL grew to 550 MB in 30 s before both; now it stays under ~80 MB (benchmarks/soak.py).
    """

    #: errors a retry can outlive (the writer keeps rows for the next commit), and every database error
    transient_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    #: how long a truncating checkpoint waits for readers before it gives up until the next round
    TRUNCATE_WAIT_MS = 1000

    #: seconds between two retention passes of the background thread
    PRUNE_EVERY_S = 60.0

    def __init__(self, path: str | Path, checkpoint_interval_s: float = 0.0, wal_limit_bytes: int = 64 * 1024 * 1024,
                 retention_days: float | None = None, retention_rows: int | None = None) -> None:
        self.path = Path(path)
        self.wal_limit_bytes = wal_limit_bytes
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._checkpoint_interval_s = checkpoint_interval_s
        self._stop = threading.Event()
        self.checkpointing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self.migrate()

    def _start_checkpointer(self) -> None:
        """Started with the first connection (and again if the storage is used after close())."""
        with self._lock:
            if self._checkpointer is None or not self._checkpointer.is_alive():
                self._stop.clear()
                self._checkpointer = threading.Thread(target=self._checkpoint_every, args=(self._checkpoint_interval_s,),
                                                      name="tinydancer-wal-checkpoint", daemon=True)
                self._checkpointer.start()

    def _checkpoint_every(self, interval_s: float) -> None:
        last_prune = time.monotonic()
        while not self._stop.wait(interval_s):
            try:
                self.checkpoint()
                if (self.retention_days or self.retention_rows) and time.monotonic() - last_prune >= self.PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    removed = self.prune()
                    if removed:
                        log.info("retention: %d old decisions removed", removed)
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint or retention failed (retried in %.1f s): %s", interval_s, exc)

    def problem(self) -> str | None:
        """A local file has no connection to lose: its write failures reach the writer (see
        :meth:`DecisionWriter.error`), so there is nothing more to report here."""
        return None

    def prune(self, now: float | None = None) -> int:
        """Apply the retention settings: remove decisions older than ``retention_days`` and all but
        the newest ``retention_rows``, with their outcomes and corrections.  Returns how many went."""
        now = time.time() if now is None else now
        removed = 0
        with self._tx() as conn:
            cut = []
            if self.retention_days is not None:
                cut.append(("created_at < ?", (now - self.retention_days * 86400.0,)))
            if self.retention_rows is not None:
                row = conn.execute("SELECT created_at FROM decisions ORDER BY created_at DESC LIMIT 1 OFFSET ?",
                                   (self.retention_rows,)).fetchone()
                if row is not None:
                    cut.append(("created_at <= ?", (row[0],)))
            for where, args in cut:
                old = f"SELECT request_id FROM decisions WHERE {where}"
                conn.execute(f"DELETE FROM outcomes WHERE request_id IN ({old})", args)
                conn.execute(f"DELETE FROM outcome_corrections WHERE request_id IN ({old})", args)
                conn.execute(f"DELETE FROM calls WHERE request_id IN ({old})", args)
                conn.execute(f"DELETE FROM prompts WHERE request_id IN ({old})", args)
                removed += conn.execute(f"DELETE FROM decisions WHERE {where}", args).rowcount
        return removed

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL frames into the database file, without blocking writers.

        Returns (frames in the WAL, frames copied); when they are equal, the next commit starts
        the WAL over.  Under steady writes that restart may never happen (a passive checkpoint
        loses the race, and even a finished one leaves the file to writers that never pause), so
        when the WAL file has grown past ``wal_limit_bytes``, writers are held
        (:attr:`checkpointing`; the service's writers wait on it) while a TRUNCATE checkpoint
        copies everything and empties the file.  It waits at most ``TRUNCATE_WAIT_MS`` for
        readers (a long ``retrain`` reading the log, say) and otherwise tries again next time.
        """
        self.checkpointing.set()
        try:
            conn = self._conn()
            _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if self.wal_bytes() > self.wal_limit_bytes:  # (a finished passive one need not have restarted it)
                conn.execute(f"PRAGMA busy_timeout={self.TRUNCATE_WAIT_MS}")
                try:
                    _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    conn.execute("PRAGMA busy_timeout=30000")
        finally:
            self.checkpointing.clear()
        return int(frames), int(copied)

    def wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    #: how long a connection of an event loop's thread waits for another process's write lock: the
    #: loop must not (a sqlite3 shell holding a transaction froze the gateway, /health included, for
    #: as long as it held it).  The group commit keeps its rows and retries; feedback answers 503.
    LOOP_BUSY_MS = 200

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process dying; only a power cut can lose the last ones
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={self.LOOP_BUSY_MS if _on_event_loop() else 30000}")
            if self._checkpoint_interval_s > 0:
                conn.execute("PRAGMA wal_autocheckpoint=0")
                conn.execute("PRAGMA journal_size_limit=16777216")  # a reset WAL file is cut back to 16 MB
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
            if self._checkpoint_interval_s > 0 and threading.current_thread() is not self._checkpointer:
                self._start_checkpointer()
        return conn

    def _tx(self) -> "_Transaction":
        return _Transaction(self._conn())

    @property
    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply the migrations this database has not seen; return the schema version."""
        conn = self._conn()
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise TinyDancerError(f"{self.path} has schema version {version}, newer than this release ({len(MIGRATIONS)})")
        for number in range(version, len(MIGRATIONS)):
            # each migration and its version bump in one transaction (executescript would commit early)
            with self._tx():
                for statement in _statements(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
        if version < len(MIGRATIONS):  # the migrations' pages into the file: the WAL starts empty, not at their size
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self.schema_version

    # ------------------------------------------------------------------ writes
    def upsert_candidates(self, candidates: Iterable[Any]) -> int:
        rows = candidate_rows(candidates, time.time())
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO candidates VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET embedding=excluded.embedding,"
                " metadata=excluded.metadata, created_at=excluded.created_at, access_count=excluded.access_count,"
                " success_rate=excluded.success_rate, updated_at=excluded.updated_at", rows)
        return len(rows)

    def record_decisions(self, request_id: str, kind: str, model_version: str, rows: Sequence[DecisionRow],
                         latency_us: float) -> None:
        self.insert_decision_rows(decision_tuples(request_id, kind, model_version, rows, latency_us))

    def insert_decision_rows(self, data: list[tuple[Any, ...]]) -> None:
        """Insert rows made by :func:`decision_tuples` in one transaction."""
        with self._tx() as conn:
            conn.executemany(_INSERT["decisions"], data)

    def insert_log(self, decisions: list[tuple[Any, ...]], calls: list[tuple[Any, ...]],
                   outcomes: list[tuple[Any, ...]], prompts: Sequence[tuple[Any, ...]] = ()) -> None:
        """Decisions, gateway calls (:meth:`CallRecord.row`), automatic outcomes (failed attempts)
        and, when kept, prompts, in one transaction; an outcome already recorded is kept."""
        with self._tx() as conn:
            if prompts:
                conn.executemany("INSERT OR IGNORE INTO prompts VALUES (?,?,?)", prompts)
            if decisions:
                conn.executemany(_INSERT["decisions"], decisions)
            if calls:
                conn.executemany(_INSERT["calls"], calls)
            if outcomes:
                conn.executemany(f"INSERT OR IGNORE INTO {OUTCOME_INSERT} VALUES (?,?,?,?,?,?,?,?)", with_source(outcomes))

    def logged_inputs(self, kind: str = "query", since: float | None = None) -> np.ndarray:
        """The inputs each logged decision was routed on (for query routing: the query embedding),
        oldest first; see :func:`inputs_from_rows`."""
        sql = "SELECT inputs, n FROM decisions WHERE kind = ?" + (" AND created_at >= ?" if since is not None else "")
        return inputs_from_rows(self._conn().execute(sql + " ORDER BY created_at", (kind,) if since is None else (kind, since)).fetchall())

    def prompt_texts(self, since: float | None = None) -> list[str]:
        """The distinct prompts the gateway kept (log_prompts), oldest first."""
        sql = "SELECT text, MIN(created_at) AS t FROM prompts" + (" WHERE created_at >= ?" if since is not None else "")
        rows = self._conn().execute(sql + " GROUP BY text ORDER BY t", (since,) if since is not None else ()).fetchall()
        return [r[0] for r in rows]

    def calls(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """Gateway call rows (all, or one request's), oldest first."""
        sql = "SELECT * FROM calls" + (" WHERE request_id=?" if request_id else "") + " ORDER BY created_at, attempt"
        cur = self._conn().execute(sql, (request_id,) if request_id else ())
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def record_outcome(self, request_id: str, target: str | None, success: bool, quality: float | None,
                       cost: float | None, *, correction: bool = False, by: str | None = None,
                       source: str = "feedback") -> str:
        """Attach feedback to a logged decision (the top-ranked target when ``target`` is None).

        One outcome per decision and target: a second one raises :class:`OutcomeExistsError`
        unless ``correction`` is set, and then the replaced value is kept in
        ``outcome_corrections`` with the time and ``by`` (who sent it).
        """
        with self._tx() as conn:
            row = conn.execute("SELECT targets FROM decisions WHERE request_id=?", (request_id,)).fetchone()
            chosen, rank = outcome_target(request_id, target, None if row is None else row[0])
            now = time.time()
            old = conn.execute("SELECT success, quality, cost, created_at, source FROM outcomes "
                               "WHERE request_id=? AND target=?", (request_id, chosen)).fetchone()
            refuse_duplicate(request_id, chosen, old, correction, source, None if old is None else old[4])
            if old is not None:
                conn.execute("INSERT INTO outcome_corrections VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             (request_id, chosen, *old[:3], int(bool(success)), quality, cost, now, by, old[3]))
            conn.execute(f"INSERT OR REPLACE INTO {OUTCOME_INSERT} VALUES (?,?,?,?,?,?,?,?)",
                         (request_id, chosen, rank, int(bool(success)), quality, cost, now, source))
            return str(chosen)

    # ------------------------------------------------------------------ reads
    def labelled(self, kind: str = "candidate", since: float | None = None) -> LabelledLogs:
        sql = f"SELECT {LABELLED_COLUMNS} FROM decisions d JOIN outcomes o ON o.request_id = d.request_id WHERE d.kind = ?"
        args: list[Any] = [kind]
        if since is not None:
            sql += " AND d.created_at >= ?"
            args.append(since)
        return labelled_from_rows(self._conn().execute(sql + " ORDER BY d.created_at, o.rank", args).fetchall())

    def corrections(self, after: float) -> list[tuple[Any, ...]]:
        return self._conn().execute(CORRECTIONS_SQL.replace("%s", "?"), (after,)).fetchall()

    def spend_by_key(self, since: float) -> dict[str, float]:
        return {str(k): float(v) for k, v in self._conn().execute(SPEND_BY_KEY_SQL.replace("%s", "?"), (since,))}

    def table_rows(self, table: str, batch: int = 5000) -> Iterable[list[tuple[Any, ...]]]:
        """Every row of a log table, in batches (what ``tinydancer storage copy`` reads)."""
        if table not in LOG_TABLES:
            raise ValueError(table)
        cur = self._conn().execute(f"SELECT * FROM {table}")
        while rows := cur.fetchmany(batch):
            yield [tuple(r) for r in rows]

    def insert_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Rows of a log table, as :meth:`table_rows` gives them; rows already here are kept."""
        if table not in LOG_TABLES:
            raise ValueError(table)
        if rows:
            with self._tx() as conn:
                conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)

    def count(self, table: str) -> int:
        if table not in LOG_TABLES:
            raise ValueError(table)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def query(self, sql: str, args: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """A read-only query of the reports (tinydancer.server.report), ``?`` placeholders: the column
        names and the rows."""
        cur = self._conn().execute(sql, tuple(args))
        return [d[0] for d in cur.description or ()], cur.fetchall()

    def statistics(self) -> dict[str, Any]:
        """The seed's totals and averages, plus latency percentiles from the stored requests."""
        conn = self._conn()
        totals = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(n_lightweight), 0), SUM(confidence_sum), "
            "SUM(uncertainty_sum), SUM(CASE WHEN uncertainty_sum IS NULL THEN 0 ELSE n END) FROM decisions").fetchone()
        latencies = np.array([r[0] for r in conn.execute("SELECT latency_us FROM decisions")], dtype=np.float64)
        outcomes = conn.execute("SELECT COUNT(*), AVG(success), AVG(quality) FROM outcomes").fetchone()
        return statistics_from(totals, latencies, outcomes)

    def close(self) -> None:
        self._stop.set()
        thread = self._checkpointer
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:  # closed from another thread already
                    pass
            self._all.clear()
        self._local = threading.local()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (or ``ROLLBACK`` on error) on one connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _statements(script: str) -> Iterable[str]:
    """The statements of a migration: split at semicolons, except those inside a trigger's body."""
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        yield pending


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def open_storage(path: str | Path, checkpoint_interval_s: float = 0.0, *, retention_days: float | None = None,
                 retention_rows: int | None = None, timeout_s: float = 3.0, statement_timeout_s: float | None = None) -> Any:
    """The storage for a path (SQLite) or a ``postgresql://`` URL (PostgreSQL, the ``postgres`` extra);
    ``timeout_s`` and ``statement_timeout_s``: how soon PostgreSQL's silence is noticed (see
    :class:`~.postgres.PostgresStorage`; the service sets both, batch jobs only the first)."""
    text = str(path)
    if text.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStorage

        return PostgresStorage(text, retention_days=retention_days, retention_rows=retention_rows,
                               maintenance_interval_s=checkpoint_interval_s, timeout_s=timeout_s,
                               statement_timeout_s=statement_timeout_s)
    if text.startswith("sqlite:///"):
        path = text[len("sqlite:///"):]
    try:
        return SQLiteStorage(path, checkpoint_interval_s, retention_days=retention_days, retention_rows=retention_rows)
    except (OSError, sqlite3.Error) as exc:  # an unwritable folder, a directory, a file that is not a database
        reason = getattr(exc, "strerror", None) or exc
        raise TinyDancerError(f"cannot open the decision log at {text}: {reason}; "
                              "choose a writable --database-path") from None
