"""Where decisions and outcomes are kept.

``base`` is the interface (:class:`Storage`) and the records; ``sqlite`` the SQLite backend;
``postgres`` the PostgreSQL one (imported on its own: it needs the ``postgres`` extra);
``writer`` the group commit of decision rows from the event loop.
"""

from .base import (
    CallRecord,
    DecisionRow,
    LabelledLogs,
    OutcomeExistsError,
    Storage,
    StorageUnavailable,
    UnknownRequestError,
    copy_log,
    decision_record,
    decision_tuples,
    new_request_id,
)
from .sqlite import MIGRATIONS, SQLiteStorage, open_storage
from .writer import DecisionWriter

__all__ = [
    "CallRecord",
    "MIGRATIONS",
    "DecisionRow",
    "DecisionWriter",
    "LabelledLogs",
    "OutcomeExistsError",
    "SQLiteStorage",
    "Storage",
    "StorageUnavailable",
    "UnknownRequestError",
    "copy_log",
    "decision_record",
    "decision_tuples",
    "new_request_id",
    "open_storage",
]
