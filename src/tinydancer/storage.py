"""Where decisions and their outcomes are kept, so routing logs become training data.

:class:`Storage` is the interface the service and the learning loop use; :class:`SQLiteStorage`
implements it (WAL mode, one file).  A PostgreSQL implementation can follow without touching
callers.  The schema is versioned with ``PRAGMA user_version`` and upgraded by the ordered
``MIGRATIONS`` when a database is opened.

Tables
    candidates  the candidate catalogue (embedding, metadata, counters)
    decisions   one row per (request, candidate or model): model version, the features or query
                embedding retraining needs, the decision, confidence, uncertainty, latency, time
    outcomes    feedback joined to decisions by request id: success, quality, cost
Statistics (totals, averages, p50/p95/p99 latency) are computed from the stored rows.

Every write commits before the call returns; in WAL mode a committed transaction survives the
process being killed (SIGKILL) — it is in the database file or its WAL, not in a buffer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from .errors import TinyDancerError

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
        request_id TEXT NOT NULL,
        target TEXT NOT NULL,            -- candidate id, or chosen model for query routing
        kind TEXT NOT NULL,              -- 'candidate' or 'query'
        rank INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        inputs BLOB NOT NULL,            -- float32 features (candidate) or query embedding (query)
        confidence REAL,
        uncertainty REAL,
        use_lightweight INTEGER NOT NULL,
        latency_us REAL NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (request_id, target)
    );
    CREATE INDEX decisions_created ON decisions (created_at);
    CREATE TABLE outcomes (
        request_id TEXT NOT NULL,
        target TEXT NOT NULL,
        success INTEGER NOT NULL,
        quality REAL,
        cost REAL,
        created_at REAL NOT NULL,
        PRIMARY KEY (request_id, target)
    );
    """,
]


class UnknownRequestError(TinyDancerError, KeyError):
    """Feedback named a request id (or candidate) that was never routed."""


@dataclass(frozen=True)
class DecisionRow:
    target: str
    rank: int
    inputs: np.ndarray
    confidence: float | None
    uncertainty: float | None
    use_lightweight: bool


@dataclass
class LabelledLogs:
    """Decisions with outcomes: what retraining reads."""

    inputs: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) 0/1 success
    quality: np.ndarray  # (N,) quality, NaN where not given
    created_at: np.ndarray  # (N,)
    model_versions: list[str]


class Storage(Protocol):
    def record_decisions(self, request_id: str, kind: str, model_version: str, rows: Sequence[DecisionRow],
                         latency_us: float) -> None: ...

    def record_outcome(self, request_id: str, target: str | None, success: bool, quality: float | None,
                       cost: float | None) -> str: ...

    def labelled(self, kind: str = "candidate", since: float | None = None) -> LabelledLogs: ...

    def statistics(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class SQLiteStorage:
    """SQLite in WAL mode; safe to share between threads (one connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.migrate()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process dying; only a power cut can lose the last ones
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

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
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.schema_version

    # ------------------------------------------------------------------ writes
    def upsert_candidates(self, candidates: Iterable[Any]) -> int:
        now = time.time()
        rows = [(c.id, np.asarray(c.embedding, dtype=np.float32).tobytes(), json.dumps(c.metadata), c.created_at,
                 int(c.access_count), float(c.success_rate), now) for c in candidates]
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO candidates VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET embedding=excluded.embedding,"
                " metadata=excluded.metadata, created_at=excluded.created_at, access_count=excluded.access_count,"
                " success_rate=excluded.success_rate, updated_at=excluded.updated_at", rows)
        return len(rows)

    def record_decisions(self, request_id: str, kind: str, model_version: str, rows: Sequence[DecisionRow],
                         latency_us: float) -> None:
        now = time.time()
        data = [(request_id, r.target, kind, r.rank, model_version, np.ascontiguousarray(r.inputs, dtype=np.float32).tobytes(),
                 r.confidence, r.uncertainty, int(r.use_lightweight), latency_us, now) for r in rows]
        with self._tx() as conn:
            conn.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?)", data)

    def record_outcome(self, request_id: str, target: str | None, success: bool, quality: float | None,
                       cost: float | None) -> str:
        """Attach feedback to a logged decision (the top-ranked one when ``target`` is None)."""
        with self._tx() as conn:
            if target is None:
                row = conn.execute("SELECT target FROM decisions WHERE request_id=? ORDER BY rank LIMIT 1", (request_id,)).fetchone()
            else:
                row = conn.execute("SELECT target FROM decisions WHERE request_id=? AND target=?", (request_id, target)).fetchone()
            if row is None:
                what = f"request {request_id!r}" + ("" if target is None else f" / {target!r}")
                raise UnknownRequestError(f"no routing decision for {what}")
            conn.execute("INSERT OR REPLACE INTO outcomes VALUES (?,?,?,?,?,?)",
                         (request_id, row[0], int(bool(success)), quality, cost, time.time()))
            return str(row[0])

    def _tx(self) -> "_Transaction":
        return _Transaction(self._conn())

    # ------------------------------------------------------------------ reads
    def labelled(self, kind: str = "candidate", since: float | None = None) -> LabelledLogs:
        sql = ("SELECT d.inputs, o.success, o.quality, d.created_at, d.model_version FROM decisions d "
               "JOIN outcomes o ON o.request_id = d.request_id AND o.target = d.target WHERE d.kind = ?")
        args: list[Any] = [kind]
        if since is not None:
            sql += " AND d.created_at >= ?"
            args.append(since)
        rows = self._conn().execute(sql + " ORDER BY d.created_at", args).fetchall()
        if not rows:
            return LabelledLogs(np.zeros((0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0), np.zeros(0), [])
        return LabelledLogs(
            inputs=np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows]),
            labels=np.array([r[1] for r in rows], dtype=np.float32),
            quality=np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64),
            created_at=np.array([r[3] for r in rows], dtype=np.float64),
            model_versions=[r[4] for r in rows],
        )

    def count(self, table: str) -> int:
        if table not in ("candidates", "decisions", "outcomes"):
            raise ValueError(table)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def statistics(self) -> dict[str, Any]:
        """The seed's totals and averages, plus latency percentiles from the stored requests."""
        conn = self._conn()
        totals = conn.execute(
            "SELECT COUNT(DISTINCT request_id), COUNT(*), COALESCE(SUM(use_lightweight), 0), AVG(confidence), AVG(uncertainty) "
            "FROM decisions").fetchone()
        latencies = np.array([r[0] for r in conn.execute("SELECT latency_us FROM decisions WHERE rank = 0")], dtype=np.float64)
        outcomes = conn.execute("SELECT COUNT(*), AVG(success), AVG(quality) FROM outcomes").fetchone()
        pct = np.percentile(latencies, [50, 95, 99]).tolist() if latencies.size else [None, None, None]
        return {
            "total_requests": int(totals[0]),
            "total_decisions": int(totals[1]),
            "lightweight_decisions": int(totals[2]),
            "lightweight_share": (totals[2] / totals[1]) if totals[1] else None,
            "avg_confidence": totals[3],
            "avg_uncertainty": totals[4],
            "avg_latency_us": float(latencies.mean()) if latencies.size else None,
            "p50_latency_us": pct[0],
            "p95_latency_us": pct[1],
            "p99_latency_us": pct[2],
            "outcomes": int(outcomes[0]),
            "success_rate": outcomes[1],
            "avg_quality": outcomes[2],
        }

    def close(self) -> None:
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


def open_storage(path: str | Path) -> SQLiteStorage:
    """The storage for a path (SQLite; a ``postgresql://`` URL would select the PostgreSQL one)."""
    text = str(path)
    if text.startswith(("postgres://", "postgresql://")):
        raise TinyDancerError("PostgreSQL storage is not implemented yet; use a SQLite file path")
    return SQLiteStorage(path)
