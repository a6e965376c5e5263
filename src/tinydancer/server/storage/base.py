"""The storage interface the service and the learning loop use, and the records they exchange.

:class:`Storage` is implemented by :class:`~tinydancer.server.storage.sqlite.SQLiteStorage`
(a PostgreSQL implementation can follow without touching callers).  A decision is logged as one
row per request — the ranked targets with the inputs the model saw — and an outcome is joined to
it by request id and target.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from ...errors import TinyDancerError


class UnknownRequestError(TinyDancerError, KeyError):
    """Feedback named a request id (or target) that was never routed."""


class StorageUnavailable(TinyDancerError):
    """The log cannot be written now (a full disk, a lost database); nothing was recorded."""


class OutcomeExistsError(TinyDancerError):
    """An outcome is already recorded for this decision and target; replacing it must be asked for."""


@dataclass(frozen=True)
class DecisionRow:
    """One target of a routed request, in rank order."""

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
    #: what each outcome is about: the candidate id or, for query routing, the model name
    targets: list[str] = field(default_factory=list)
    #: query routing: the key of the query's text (tinydancer.llm.memory.query_key), None if it came as an embedding
    query_keys: list[int | None] = field(default_factory=list)
    #: when each outcome was recorded
    feedback_at: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: the decision each outcome belongs to
    request_ids: list[str] = field(default_factory=list)
    #: the probability, under the logging policy, of the model this outcome is about when that is
    #: the model the decision planned (see server/exploration.py); NaN for a deterministic decision
    #: and for any other model's outcome (the model a call fell back to was not drawn: its outcome
    #: is no evidence about the policy's choice)
    propensity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: whether that model was an exploration (False where the propensity is NaN)
    explored: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: who said it (see ``OUTCOME_SOURCES``); None for outcomes recorded before sources were kept
    sources: list[str | None] = field(default_factory=list)
    #: whether this outcome, one with a propensity, is of a planned model that failed while another
    #: model answered the call (its outcome is the failure; the fallback's answer is not the policy's)
    fell_back: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass(frozen=True)
class CallRecord:
    """One upstream attempt of a gateway call (a call that fell back has one per upstream tried)."""

    request_id: str
    attempt: int
    upstream: str
    target: str
    status: str
    http_status: int | None
    stream: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None
    ttft_ms: float | None
    total_ms: float
    created_at: float
    #: the name of the client key the call came with (never the key); None without client keys
    key_name: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.request_id, self.attempt, self.upstream, self.target, self.status, self.http_status, int(self.stream),
                self.prompt_tokens, self.completion_tokens, self.cost, self.ttft_ms, self.total_ms, self.created_at,
                self.key_name)

    def failure_outcome(self, rank: int) -> tuple[Any, ...]:
        """The outcome row saying this attempt's model failed the call (success 0, no quality)."""
        return (self.request_id, self.target, rank, 0, None, self.cost, self.created_at, "failure")


class Storage(Protocol):
    def record_decisions(self, request_id: str, kind: str, model_version: str, rows: Sequence[DecisionRow],
                         latency_us: float) -> None: ...

    def insert_decision_rows(self, data: list[tuple[Any, ...]]) -> None: ...

    def insert_log(self, decisions: list[tuple[Any, ...]], calls: list[tuple[Any, ...]],
                   outcomes: list[tuple[Any, ...]], prompts: Sequence[tuple[Any, ...]] = ()) -> None: ...

    def record_outcome(self, request_id: str, target: str | None, success: bool, quality: float | None,
                       cost: float | None, *, correction: bool = False, by: str | None = None,
                       source: str = "feedback") -> str: ...

    def labelled(self, kind: str = "candidate", since: float | None = None) -> LabelledLogs: ...

    def corrections(self, after: float) -> list[tuple[Any, ...]]:
        """Corrections made after ``after`` (see ``CORRECTIONS_SQL``): what retraining needs to
        replace, rather than add, an outcome its memory counted already."""
        ...

    def statistics(self) -> dict[str, Any]: ...

    def spend_by_key(self, since: float) -> dict[str, float]:
        """Dollars spent per client key name (``SPEND_BY_KEY_SQL``) by calls made since ``since``."""
        ...

    def problem(self) -> str | None:
        """Why the backend cannot be reached now (readiness reports it), or None."""
        ...

    def close(self) -> None: ...


class SharedRegistryStorage(Storage, Protocol):
    """A backend that also keeps the model registry (PostgreSQL): versions as rows, a current
    pointer per kind, promotions announced to every replica.  See ``registry.DatabaseRegistry``."""

    namespace: str

    def registry_add(self, kind: str, version: str, data: bytes, sha256: str, metrics: str, parent: str | None,
                     size_bytes: int, created_at: float) -> bool: ...

    def registry_versions(self, kind: str) -> list[dict[str, Any]]: ...

    def registry_current(self, kind: str, stop: Any = None) -> tuple[str, str] | None: ...

    def registry_data(self, version: str, stop: Any = None) -> bytes: ...

    def registry_promote(self, kind: str, version: str, by: str | None, expected: str | None,
                         check: bool = True) -> str | None: ...

    def registry_notifications(self, stop: Any, timeout_s: float = 5.0) -> Iterable[tuple[str, str] | None]: ...


class BadRow(TinyDancerError, ValueError):
    """A log row that no database could store (a required value missing or impossible); it is
    refused alone, before it joins a group commit, so it cannot fail the rows committed with it."""


#: the columns of each table the service writes, in order: (name, kind, nullable).  Kinds: i32 and
#: i64 (PostgreSQL INTEGER and BIGINT; SQLite's INTEGER holds 64 bits), real, text, blob.
LOG_COLUMNS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "decisions": (("request_id", "text", False), ("kind", "text", False), ("model_version", "text", False),
                  ("targets", "text", False), ("n", "i32", False), ("inputs", "blob", False),
                  ("confidence", "blob", False), ("uncertainty", "blob", True), ("lightweight", "blob", False),
                  ("n_lightweight", "i32", False), ("confidence_sum", "real", True), ("uncertainty_sum", "real", True),
                  ("latency_us", "real", False), ("created_at", "real", False), ("query_key", "text", True),
                  ("propensity", "real", True), ("explored", "i32", True), ("propensity_rank", "i32", True)),
    "calls": (("request_id", "text", False), ("attempt", "i32", False), ("upstream", "text", False),
              ("target", "text", False), ("status", "text", False), ("http_status", "i32", True), ("stream", "i32", False),
              ("prompt_tokens", "i64", True), ("completion_tokens", "i64", True), ("cost", "real", True),
              ("ttft_ms", "real", True), ("total_ms", "real", False), ("created_at", "real", False),
              ("key_name", "text", True)),
    "outcomes": (("request_id", "text", False), ("target", "text", False), ("rank", "i32", False),
                 ("success", "i32", False), ("quality", "real", True), ("cost", "real", True),
                 ("created_at", "real", False), ("source", "text", True)),
    "prompts": (("request_id", "text", False), ("text", "text", False), ("created_at", "real", False)),
}
_INT_RANGE = {"i32": (-(2**31), 2**31 - 1), "i64": (-(2**63), 2**63 - 1)}
_MISSING = object()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_value(value: Any, kind: str) -> Any:
    """The value as its column's kind can store it, or ``_MISSING`` when it cannot be stored."""
    if kind == "text":
        if not isinstance(value, str):
            return _MISSING
        if not value.isascii():  # a lone surrogate cannot be encoded; every database refuses it
            value = _SURROGATE.sub("\ufffd", value)
        return value.replace("\x00", "\ufffd") if "\x00" in value else value  # PostgreSQL text holds no NUL
    if kind == "blob":
        return value if isinstance(value, (bytes, bytearray, memoryview)) else _MISSING
    if isinstance(value, bool):
        value = int(value)
    if kind == "real":
        if not isinstance(value, (int, float, np.integer, np.floating)):
            return _MISSING
        try:
            value = float(value)
        except OverflowError:  # an int past 1e308
            return _MISSING
        return value if math.isfinite(value) else _MISSING  # SQLite stores NaN as NULL: a NOT NULL column fails
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        return _MISSING
    low, high = _INT_RANGE[kind]
    return int(value) if low <= value <= high else _MISSING


def clean_row(table: str, row: Sequence[Any]) -> tuple[Any, ...]:
    """``row`` of ``table`` (see :data:`LOG_COLUMNS`) with every value one the database can store.

    An impossible value in a column that may be NULL becomes NULL (unknown): an upstream's
    ``usage`` of 10^30 tokens is logged as an unknown count, not as a SQLite "Python int too
    large" that fails the whole group commit.  In a required column it raises :class:`BadRow`,
    and the caller drops that row alone.  Text is made encodable (a lone surrogate becomes U+FFFD).
    """
    columns = LOG_COLUMNS[table]
    if len(row) != len(columns):
        raise BadRow(f"a {table} row has {len(row)} values, not {len(columns)}")
    if _fits(row, _BY_KIND[table], _REQUIRED[table]):  # the usual case (~1 µs a row): the row is used as it is
        return tuple(row)
    out = list(row)
    for i, (name, kind, nullable) in enumerate(columns):
        value = out[i]
        if value is None:
            if not nullable:
                raise BadRow(f"{table}.{name} is required (request {str(row[0])[:64]!r})")
            continue
        cleaned = _clean_value(value, kind)
        if cleaned is _MISSING:
            if not nullable:
                raise BadRow(f"{table}.{name} cannot be stored: {str(value)[:64]!r} (request {str(row[0])[:64]!r})")
            cleaned = None
        out[i] = cleaned
    return tuple(out)


#: per table, the positions of its columns of each kind, for :func:`_fits`
_BY_KIND = {table: {kind: tuple(i for i, c in enumerate(cols) if c[1] == kind) for kind in ("text", "blob", "real", "i32", "i64")}
            for table, cols in LOG_COLUMNS.items()}
_REQUIRED = {table: tuple(i for i, c in enumerate(cols) if not c[2]) for table, cols in LOG_COLUMNS.items()}


def _fits(row: Sequence[Any], at: dict[str, tuple[int, ...]], required: tuple[int, ...]) -> bool:
    """Whether every value is of a plain type that fits its column as it is, and no required one is
    None: the fast path of :func:`clean_row`, without a function call a value."""
    if None in row:
        for i in required:
            if row[i] is None:
                return False
    for i in at["real"]:
        v = row[i]
        if v is not None and not (type(v) is float and v - v == 0.0):  # finite: inf - inf and NaN - NaN are NaN
            return False
    for i in at["text"]:
        v = row[i]
        if v is not None and not (type(v) is str and v.isascii() and "\x00" not in v):
            return False
    for i in at["blob"]:
        v = row[i]
        if v is not None and type(v) is not bytes:
            return False
    for i in at["i32"]:
        v = row[i]
        if v is not None and not (type(v) is int and -2147483648 <= v <= 2147483647):
            return False
    for i in at["i64"]:
        v = row[i]
        if v is not None and not (type(v) is int and -9223372036854775808 <= v <= 9223372036854775807):
            return False
    return True


def clean_log(decisions: Sequence[Sequence[Any]], calls: Sequence[Sequence[Any]] = (),
              outcomes: Sequence[Sequence[Any]] = (), prompts: Sequence[Sequence[Any]] = ()
              ) -> tuple[tuple[list[tuple[Any, ...]], ...], list[str]]:
    """:func:`clean_row` over a log write: the rows to write (decisions, calls, outcomes, prompts)
    and why each refused row was refused."""
    parts: tuple[list[tuple[Any, ...]], ...] = ([], [], [], [])
    refused = []
    outcomes = with_source(outcomes)  # a row from before the source column: NULL there
    for table, rows, keep in zip(("decisions", "calls", "outcomes", "prompts"), (decisions, calls, outcomes, prompts), parts):
        for row in rows:
            try:
                keep.append(clean_row(table, row))
            except BadRow as exc:
                refused.append(str(exc))
    return parts, refused


def safe_url(url: str) -> str:
    """A database URL without its password (for messages, and /info, which needs no credentials)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def keeps_registry(storage: Any) -> bool:
    """Whether this backend keeps the model registry itself (else the registry is a folder)."""
    return callable(getattr(storage, "registry_promote", None))


def decision_record(request_id: str, kind: str, model_version: str, targets: Sequence[str], inputs: np.ndarray,
                    confidence: np.ndarray, uncertainty: np.ndarray | None, lightweight: np.ndarray,
                    latency_us: float, query_key: int | None = None, *, propensity: float | None = None,
                    explored: bool | None = None, propensity_rank: int = 0) -> tuple[Any, ...]:
    """The decisions row of one request from its ranked columns (what the service logs); a
    ``propensity`` (and ``explored``) only where the gateway explored (server/exploration.py), for
    the model at ``propensity_rank`` in ``targets``: 0 when the planned model answered, the rank of
    its failed attempt when the call fell back from it."""
    if propensity is not None and not 0 <= propensity_rank < len(targets):
        raise ValueError(f"propensity_rank {propensity_rank} is not a rank of the {len(targets)} targets")
    conf = np.ascontiguousarray(confidence, dtype=np.float32)
    light = np.ascontiguousarray(lightweight, dtype=np.uint8)
    unc = None if uncertainty is None else np.ascontiguousarray(uncertainty, dtype=np.float32)
    finite = conf[np.isfinite(conf)]
    return (
        request_id, kind, model_version, json.dumps(list(targets)), len(targets),
        np.ascontiguousarray(inputs, dtype=np.float32).tobytes(), conf.tobytes(),
        None if unc is None else unc.tobytes(), light.tobytes(), int(light.sum()),
        float(finite.sum()) if finite.size else None, None if unc is None else float(unc.sum()), latency_us, time.time(),
        None if query_key is None else f"{query_key:016x}",
        None if propensity is None else float(propensity), None if explored is None else int(explored),
        None if propensity is None or propensity_rank == 0 else int(propensity_rank),
    )


def decision_tuples(request_id: str, kind: str, model_version: str, rows: Sequence[DecisionRow],
                    latency_us: float, query_key: int | None = None) -> list[tuple[Any, ...]]:
    """:func:`decision_record` for rows given one target at a time (as a one-element list)."""
    n = len(rows)
    inputs = np.stack([np.asarray(r.inputs, dtype=np.float32).ravel() for r in rows]) if n else np.zeros((0, 0), np.float32)
    conf = np.array([np.nan if r.confidence is None else r.confidence for r in rows], dtype=np.float32)
    unc = np.array([r.uncertainty for r in rows], dtype=np.float32) if n and all(r.uncertainty is not None for r in rows) else None
    light = np.array([r.use_lightweight for r in rows], dtype=np.uint8)
    return [decision_record(request_id, kind, model_version, [r.target for r in rows], inputs, conf, unc, light, latency_us,
                            query_key)]


#: every table of the log, in an order that copying can follow (decisions before what refers to them)
LOG_TABLES = ("candidates", "decisions", "outcomes", "outcome_corrections", "calls", "prompts")


def copy_log(source: Any, target: Any, batch: int = 5000, progress: Any = None) -> dict[str, int]:
    """Copy every row of ``source``'s log into ``target`` (another backend), table by table, in
    batches; rows the target already has are kept (a rerun after an interruption is safe)."""
    copied = {}
    for table in LOG_TABLES:
        n = 0
        for rows in source.table_rows(table, batch):
            target.insert_rows(table, rows)
            n += len(rows)
            if progress is not None:
                progress(len(rows))
        copied[table] = n
    return copied


def candidate_rows(candidates: Iterable[Any], now: float) -> list[tuple[Any, ...]]:
    """The candidates table's rows for an upsert."""
    return [(c.id, np.asarray(c.embedding, dtype=np.float32).tobytes(), json.dumps(c.metadata), c.created_at,
             int(c.access_count), float(c.success_rate), now) for c in candidates]


def outcome_target(request_id: str, target: str | None, targets_json: str | None) -> tuple[str, int]:
    """The target an outcome is for (the top-ranked one when ``target`` is None) and its rank, from the
    decision's stored targets; :class:`UnknownRequestError` when there is no such decision or target."""
    targets = json.loads(targets_json) if targets_json is not None else []
    if targets_json is None or (target is not None and target not in targets):
        what = f"request {request_id!r}" + ("" if target is None else f" / {target!r}")
        raise UnknownRequestError(f"no routing decision for {what}")
    chosen = targets[0] if target is None else target
    return str(chosen), targets.index(chosen)


def refuse_duplicate(request_id: str, target: str, existing: Any, correction: bool, source: str = "feedback",
                     existing_source: str | None = None) -> None:
    """One outcome per decision and target: a second one must say it is a correction, except that
    a person's feedback replaces the judge's grade without asking (the replaced grade is audited)."""
    if existing is not None and existing_source == "judge" and source != "judge":
        return
    if existing is not None and not correction:
        raise OutcomeExistsError(f"an outcome for request {request_id!r} / {target!r} is already recorded; "
                                 'send "correction": true to replace it (corrections are kept and audited)')


#: what :func:`labelled_from_rows` reads, in this order, from decisions d joined with outcomes o
LABELLED_COLUMNS = ("d.inputs, d.n, o.rank, o.success, o.quality, d.created_at, d.model_version, o.target, d.query_key, "
                    "o.created_at, o.request_id, d.propensity, d.explored, o.source, d.propensity_rank")

#: who recorded an outcome (the ``outcomes.source`` column): ``feedback`` (POST /v1/feedback or
#: :meth:`Storage.record_outcome`), ``failure`` (the gateway: an attempt that failed), ``judge`` (the
#: gateway's judge grading a sampled answer); NULL in outcomes recorded before the column existed
OUTCOME_SOURCES = ("feedback", "failure", "judge")

#: the outcomes table's columns, named in every insert (so a column added later cannot shift them)
OUTCOME_INSERT = "outcomes (request_id, target, rank, success, quality, cost, created_at, source)"


def with_source(outcomes: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Outcome rows as the table takes them: a row of the 7 columns before ``source`` gets NULL there."""
    return [tuple(o) if len(o) == 8 else (*o, None) for o in outcomes]

#: :meth:`Storage.corrections`: (request id, target, old success, old quality, old outcome's time,
#: corrected at) of every correction made after a time, oldest first (``%s``: that time)
CORRECTIONS_SQL = ("SELECT request_id, target, old_success, old_quality, old_at, corrected_at FROM outcome_corrections "
                   "WHERE corrected_at > %s ORDER BY corrected_at")


#: :meth:`Storage.spend_by_key`: the known cost of calls since a time (``%s``), per key name
#: (the calls_created index bounds the scan to that window)
SPEND_BY_KEY_SQL = ("SELECT key_name, SUM(cost) FROM calls WHERE created_at >= %s AND key_name IS NOT NULL "
                    "AND cost IS NOT NULL GROUP BY key_name")


def labelled_from_rows(rows: Sequence[Sequence[Any]]) -> LabelledLogs:
    """Rows of ``LABELLED_COLUMNS`` as :class:`LabelledLogs` (every backend's reads end here)."""
    rows = [r for r in rows if r[0]]  # a gateway call to a named model is logged without inputs: nothing to learn from
    if not rows:
        return LabelledLogs(np.zeros((0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0), np.zeros(0), [])
    inputs = [np.frombuffer(bytes(blob), dtype=np.float32).reshape(n, -1)[rank] for blob, n, rank, *_ in rows]
    # a decision's propensity is its planned model's: the outcome at its rank (NULL rank: 0) carries it
    planned = [r[11] is not None and r[2] == (r[14] or 0) for r in rows]
    return LabelledLogs(
        inputs=np.stack(inputs),
        labels=np.array([r[3] for r in rows], dtype=np.float32),
        quality=np.array([np.nan if r[4] is None else r[4] for r in rows], dtype=np.float64),
        created_at=np.array([r[5] for r in rows], dtype=np.float64),
        model_versions=[r[6] for r in rows],
        targets=[r[7] for r in rows],
        query_keys=[None if r[8] is None else int(r[8], 16) for r in rows],
        feedback_at=np.array([r[9] for r in rows], dtype=np.float64),
        request_ids=[str(r[10]) for r in rows],
        propensity=np.array([r[11] if planned[i] else np.nan for i, r in enumerate(rows)], dtype=np.float64),
        explored=np.array([bool(r[12]) and planned[i] for i, r in enumerate(rows)], dtype=bool),
        sources=[r[13] for r in rows],
        fell_back=np.array([planned[i] and (r[14] or 0) > 0 for i, r in enumerate(rows)], dtype=bool),
    )


def inputs_from_rows(rows: Sequence[Sequence[Any]]) -> np.ndarray:
    """(inputs blob, n) rows as the first target's inputs, stacked; rows without inputs left out, and
    when routers of different widths logged here, the most common width kept."""
    vecs = [np.frombuffer(bytes(blob), dtype=np.float32).reshape(n, -1)[0] for blob, n in rows if blob]
    if not vecs:
        return np.zeros((0, 0), np.float32)
    widths = [v.shape[0] for v in vecs]
    common = max(set(widths), key=widths.count)
    return np.stack([v for v in vecs if v.shape[0] == common])


def statistics_from(totals: Sequence[Any], latencies: np.ndarray, outcomes: Sequence[Any]) -> dict[str, Any]:
    """The seed's totals and averages from (requests, decisions, lightweight, confidence sum,
    uncertainty sum, uncertainty count), the latencies, and (outcomes, success rate, quality)."""
    requests, decisions, light, conf_sum, unc_sum, unc_n = totals
    n_out, success, quality = outcomes
    pct = np.percentile(latencies, [50, 95, 99]).tolist() if latencies.size else [None, None, None]
    return {
        "total_requests": int(requests),
        "total_decisions": int(decisions),
        "lightweight_decisions": int(light),
        "lightweight_share": light / decisions if decisions else None,
        "avg_confidence": conf_sum / decisions if decisions and conf_sum is not None else None,
        "avg_uncertainty": unc_sum / unc_n if unc_n else None,
        "avg_latency_us": float(latencies.mean()) if latencies.size else None,
        "p50_latency_us": pct[0],
        "p95_latency_us": pct[1],
        "p99_latency_us": pct[2],
        "outcomes": int(n_out),
        "success_rate": None if success is None else float(success),
        "avg_quality": None if quality is None else float(quality),
    }


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: unique, and ordered by time.

    Ordered ids make each insert land at the right edge of the decisions table's key index, so a
    group commit writes one or two pages instead of one per request: with random (v4) ids, an
    insert cost 29 µs a row in a 50k-row table, with these 12 µs.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits, 74 of them used
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"
