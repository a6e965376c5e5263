"""Where decisions and outcomes are kept: the :class:`Storage` interface and its SQLite backend."""

from .sqlite import (
    MIGRATIONS,
    DecisionRow,
    DecisionWriter,
    LabelledLogs,
    SQLiteStorage,
    Storage,
    UnknownRequestError,
    decision_record,
    decision_tuples,
    new_request_id,
    open_storage,
)

__all__ = [
    "MIGRATIONS",
    "DecisionRow",
    "DecisionWriter",
    "LabelledLogs",
    "SQLiteStorage",
    "Storage",
    "UnknownRequestError",
    "decision_record",
    "decision_tuples",
    "new_request_id",
    "open_storage",
]
