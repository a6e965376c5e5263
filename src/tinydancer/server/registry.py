"""Model versions: every retrained model is kept with its metrics; one is current.

Two homes, one interface (``add``, ``versions``, ``current``, ``current_data``, ``promote``):

- :class:`ModelRegistry`, a folder beside a SQLite log: ``folder/versions/<version>/model.safetensors``
  and ``version.json`` per version, and ``folder/current.json`` naming the promoted one.
  Promotion copies the version over the served file atomically, so a watching service
  hot-reloads a complete file.
- :class:`DatabaseRegistry`, in the PostgreSQL that several replicas share: versions are rows,
  promotion is one transaction that moves the current pointer and announces it (``NOTIFY``).
  Each replica's :class:`RegistryFollower` writes the promoted file over its own served path
  (no shared file system) and the service's file watcher reloads it, as for a local promotion.

Promotion is a compare-and-set in both: a retrain names the version it started from, and when
another promotion got there first the new version is kept but not promoted
(:class:`PromotionRefused`), so two retrains started at once cannot both promote.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .._io import atomic_write_bytes, atomic_write_json
from ..errors import TinyDancerError
from ..nn import FastGRNN
from .storage.base import SharedRegistryStorage

log = logging.getLogger("tinydancer.registry")

#: the kinds of model a registry keeps: candidate scoring, and the query router
KINDS = ("model", "query_router")


class PromotionRefused(TinyDancerError):
    """Another promotion moved the current version since this retrain started from it."""


class _Unchecked:
    """``promote(expected=UNCHECKED)``: move the pointer whatever it names (an operator's rollback)."""


UNCHECKED: Any = _Unchecked()


@dataclass
class ModelVersion:
    """One trained model in the registry."""

    version: str
    timestamp: float
    sha256: str
    model_path: str
    metrics: dict[str, Any]
    size_bytes: int
    file_bytes: int
    parent: str | None = None
    promoted: bool = False
    promoted_by: str | None = None
    promoted_at: float | None = None


def new_version_name(stamp: float) -> str:
    """``vYYYYmmddTHHMMSSmmm``: sortable by time (a clash within a millisecond gets a suffix)."""
    return time.strftime("v%Y%m%dT%H%M%S", time.gmtime(stamp)) + f"{int((stamp % 1) * 1000):03d}"


def who() -> str:
    """Who promotes: ``user@host``, recorded with each promotion."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class ModelRegistry:
    """``folder/versions/<version>/model.safetensors`` + ``version.json``, and ``current.json``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        (self.folder / "versions").mkdir(parents=True, exist_ok=True)

    def add(self, model: FastGRNN, metrics: dict[str, Any], parent: str | None = None) -> ModelVersion:
        stamp = time.time()
        version = new_version_name(stamp)
        if (self.folder / "versions" / version).exists():
            version += "-" + secrets.token_hex(2)
        model.extra_metadata["version"] = version
        folder = self.folder / "versions" / version
        path = model.save(folder / "model.safetensors")
        data = path.read_bytes()
        entry = ModelVersion(version, stamp, hashlib.sha256(data).hexdigest(), str(path), metrics, model.size_bytes(),
                             len(data), parent)
        atomic_write_json(folder / "version.json", asdict(entry))
        return entry

    def versions(self) -> list[ModelVersion]:
        out = []
        for meta in sorted((self.folder / "versions").glob("*/version.json")):
            out.append(ModelVersion(**json.loads(meta.read_text())))
        return out

    def current(self) -> str | None:
        path = self.folder / "current.json"
        return json.loads(path.read_text())["version"] if path.is_file() else None

    def current_data(self) -> bytes | None:
        """None: beside a folder registry the served file itself is what a retrain starts from."""
        return None

    def promote(self, entry: ModelVersion, serve_path: str | Path, expected: str | None = UNCHECKED,
                by: str | None = None) -> None:
        """Copy the version over the served file atomically and record it as current.

        With ``expected``, only if the current version is still that one (else
        :class:`PromotionRefused`); an exclusive lock on the folder makes check and move one step
        for processes on this host.
        """
        with open(self.folder / ".promote.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self.current()
            if expected is not UNCHECKED and found != expected:
                raise PromotionRefused(f"{found} was promoted after this retrain started from {expected or 'the served file'}; "
                                       f"{entry.version} is kept in the registry, not served")
            atomic_write_bytes(serve_path, Path(entry.model_path).read_bytes())
            entry.promoted, entry.promoted_by, entry.promoted_at = True, by, time.time()
            atomic_write_json(Path(entry.model_path).parent / "version.json", asdict(entry))
            atomic_write_json(self.folder / "current.json", {"version": entry.version, "promoted_at": entry.promoted_at,
                                                             "promoted_by": by, "serve_path": str(serve_path)})


class DatabaseRegistry:
    """The registry as rows of the shared PostgreSQL: one ``kind`` of model (see :data:`KINDS`)."""

    def __init__(self, storage: SharedRegistryStorage, kind: str = "model") -> None:
        if kind not in KINDS:
            raise TinyDancerError(f"registry kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.storage = storage
        self.kind = kind

    def _where(self, version: str) -> str:
        return f"postgresql:{self.storage.namespace}/{version}"

    def add(self, model: FastGRNN, metrics: dict[str, Any], parent: str | None = None) -> ModelVersion:
        stamp = time.time()
        version = new_version_name(stamp)
        for _ in range(5):
            model.extra_metadata["version"] = version
            data = model.to_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if self.storage.registry_add(self.kind, version, data, sha, json.dumps(metrics, default=float), parent,
                                         model.size_bytes(), stamp):
                return ModelVersion(version, stamp, sha, self._where(version), metrics, model.size_bytes(), len(data),
                                    parent)
            version = new_version_name(stamp) + "-" + secrets.token_hex(2)  # another replica took the name
        raise TinyDancerError("could not name a new registry version (five names were taken)")

    def versions(self) -> list[ModelVersion]:
        current = self.current()
        return [ModelVersion(r["version"], r["created_at"], r["sha256"], self._where(r["version"]), json.loads(r["metrics"]),
                             r["size_bytes"], r["file_bytes"], r["parent"], r["version"] == current, r["promoted_by"],
                             r["promoted_at"])
                for r in self.storage.registry_versions(self.kind)]

    def current(self) -> str | None:
        found = self.storage.registry_current(self.kind)
        return None if found is None else found[0]

    def current_data(self) -> bytes | None:
        """The promoted version's file, which a retrain starts from (None before the first promotion)."""
        version = self.current()
        return None if version is None else self.storage.registry_data(version)

    def promote(self, entry: ModelVersion | str, serve_path: str | Path | None = None, expected: str | None = UNCHECKED,
                by: str | None = None) -> None:
        """Move the current pointer in one transaction; every replica follows (``serve_path`` is not
        written here: each replica writes its own)."""
        version = entry if isinstance(entry, str) else entry.version
        found = self.storage.registry_promote(self.kind, version, by, None if expected is UNCHECKED else expected,
                                              check=expected is not UNCHECKED)
        if found is not None:
            raise PromotionRefused(f"{found} was promoted after this retrain started from {expected or 'no version'}; "
                                   f"{version} is kept in the registry, not served")
        if not isinstance(entry, str):
            entry.promoted, entry.promoted_by, entry.promoted_at = True, by, time.time()


def registry_for(storage: Any, folder: str | Path, kind: str = "model") -> ModelRegistry | DatabaseRegistry:
    """The registry that goes with a log: its own rows for PostgreSQL, the folder beside SQLite."""
    from .storage.base import keeps_registry

    return DatabaseRegistry(storage, kind) if keeps_registry(storage) else ModelRegistry(folder)


def import_folder(registry: ModelRegistry, target: DatabaseRegistry) -> int:
    """Copy a folder registry's versions into a database one (its current version becomes current
    there when nothing is yet); returns how many versions were new."""
    have = {v.version for v in target.versions()}
    added = 0
    for entry in registry.versions():
        if entry.version in have:
            continue
        data = Path(entry.model_path).read_bytes()
        if target.storage.registry_add(target.kind, entry.version, data, hashlib.sha256(data).hexdigest(),
                                       json.dumps(entry.metrics, default=float), entry.parent, entry.size_bytes,
                                       entry.timestamp):
            added += 1
    current = registry.current()
    if current is not None and target.current() is None:
        target.promote(current, expected=None, by=f"{who()} (storage copy)")
    return added


class RegistryFollower:
    """Keeps this replica's served files at the registry's current versions.

    ``paths`` maps a kind (:data:`KINDS`) to the file this replica serves it from.  :meth:`sync`
    writes a promoted version over that file (atomically; only when its sha256 differs), so the
    service's file watcher hot-reloads it.  :meth:`start` runs a thread that listens for
    promotions and syncs within a second of one, and also every ``poll_s`` and after a lost
    connection (a notification sent while this replica was not listening is not replayed).
    """

    def __init__(self, storage: SharedRegistryStorage, paths: Mapping[str, Path],
                 on_change: Callable[[str, str], None] | None = None, poll_s: float = 30.0) -> None:
        self.storage = storage
        self.paths = dict(paths)
        self.on_change = on_change
        self.poll_s = poll_s
        self.synced: dict[str, str] = {}  # kind -> the version written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> list[str]:
        """Bring every followed file to its current version; the kinds that changed."""
        changed = []
        for kind, path in self.paths.items():
            found = self.storage.registry_current(kind, stop=self._stop)
            if found is None:
                continue
            version, sha = found
            if self.synced.get(kind) == version:
                continue
            try:
                local = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                local = None
            if local != sha:
                data = self.storage.registry_data(version, stop=self._stop)
                if hashlib.sha256(data).hexdigest() != sha:
                    log.error("registry version %s does not match its sha256; not served", version)
                    continue
                atomic_write_bytes(path, data)
                log.info("%s: now serving registry version %s (%s)", kind, version, path)
                changed.append(kind)
                if self.on_change is not None:
                    self.on_change(kind, version)
            self.synced[kind] = version
        return changed

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="tinydancer-registry-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                listening = False
                last = time.monotonic()
                for event in self.storage.registry_notifications(self._stop, timeout_s=1.0):
                    # the first event says the connection listens: only then is what was promoted
                    # before it read (syncing first, a promotion in between would wait for the poll)
                    if (not listening or (event is not None and event[0] in self.paths)
                            or time.monotonic() - last >= self.poll_s):
                        listening = True
                        last = time.monotonic()
                        self.sync()
            except Exception as exc:  # a lost connection, an unwritable file: logged, retried
                log.warning("registry follower: %s (retrying in 2 s)", str(exc).strip()[:300])
                self._stop.wait(2.0)
