"""Which files the service reads as models, and how: ``POST /admin/reload`` takes a path over HTTP.

A reload path is accepted only if it names

* a regular file (checked with ``lstat``, before anything is opened: a FIFO, a device, a
  directory or a symbolic link is refused, so a FIFO cannot hang the request and ``/dev/zero``
  cannot fill memory);
* in one of the model folders (by default the served model's folder, which also holds the
  default registry ``models/registry``), with the folder's own links resolved;
* that is not the decision database or its ``-wal``/``-shm`` file: closing *any* descriptor of a
  SQLite file drops the process's POSIX locks on it, after which another process may delete the
  WAL under the running service and lose acknowledged outcomes;
* of at most ``max_bytes``.

It is then opened with ``O_NOFOLLOW | O_NONBLOCK``, checked again to be the same regular file,
and read once; the model is decoded from those bytes.  Every refusal of the first three kinds
gives the same answer, so the service does not tell a client what exists elsewhere on the host.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileError

#: the largest model file the service will read (a FastGRNN router with its memory is < 1 MB)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ModelFiles:
    """The rules above, for one service."""

    folders: tuple[Path, ...]
    protected: tuple[Path, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES

    def read(self, path: str | os.PathLike[str]) -> tuple[Path, bytes]:
        """``(path, its bytes)``, or :class:`ModelFileError` saying what is allowed."""
        target = Path(path)
        refused = ModelFileError(
            f"a model path must name a regular model file in {self._where()} (no links, devices or other files)"
        )
        try:
            info = os.lstat(target)
            folder = os.path.realpath(target.parent)
        except (OSError, ValueError):  # missing, a NUL byte, a name too long: the same answer
            raise refused from None
        if not stat.S_ISREG(info.st_mode) or not self._inside(folder) or self._is_protected(info):
            raise refused
        if info.st_size > self.max_bytes:
            raise ModelFileError(f"{target.name} has {info.st_size:,} bytes; model files are at most {self.max_bytes:,}")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            raise refused from None
        with os.fdopen(fd, "rb") as fh:
            opened = os.fstat(fh.fileno())
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise refused  # replaced between the check and the open
            data = fh.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise ModelFileError(f"{target.name} grew past {self.max_bytes:,} bytes while it was read")
        return target, data

    def _where(self) -> str:
        return " or ".join(str(f) for f in self.folders) or "no folder (reloading another file is disabled)"

    def _inside(self, folder: str) -> bool:
        for allowed in self.folders:
            root = os.path.realpath(allowed)
            if folder == root or folder.startswith(root.rstrip(os.sep) + os.sep):
                return True
        return False

    def _is_protected(self, info: os.stat_result) -> bool:
        for path in self.protected:
            try:
                other = os.lstat(path)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return True
        return False


def database_files(database: Path) -> tuple[Path, ...]:
    """The SQLite file and the two files that live beside it in WAL mode."""
    return (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm"))
