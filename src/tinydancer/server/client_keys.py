"""Client keys and their names: ``name:key`` entries, so that the log and the metrics can say who
spent what without ever holding a key.

An entry of ``TINY_DANCER_API_KEYS`` (comma-separated) or a line of ``TINY_DANCER_API_KEYS_FILE``
is either ``name:key`` or a bare ``key``.  A bare key is named ``key-<first 6 hex digits of its
SHA-256>``: stable across restarts, and no help to anyone guessing the key.  A name is letters,
digits and ``. _ -`` (at most 64); ``admin`` is taken (the admin token, when it calls ``/v1/*``).
A key containing ``:`` must therefore be written with a name in front of it.  Two entries with
the same name, or the same key, are refused with the place of the second one: a duplicate would
merge two clients' spend, or leave one of two names unused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable

from ..errors import ValidationError

__all__ = ["ADMIN_NAME", "ClientKey", "client_keys", "default_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: the name calls made with the admin token are logged under
ADMIN_NAME = "admin"


@dataclass(frozen=True)
class ClientKey:
    """One client key and the name the log knows it by (``repr`` hides the key)."""

    name: str
    key: str

    def __repr__(self) -> str:
        return f"ClientKey(name={self.name!r}, key=<hidden>)"


def default_name(key: str) -> str:
    """The name of a key given without one."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:6]


def parse_entry(entry: str, where: str) -> ClientKey:
    """``name:key`` or ``key`` (already stripped, not empty, not a comment)."""
    if ":" not in entry:
        return ClientKey(default_name(entry), entry)
    name, _, key = entry.partition(":")
    name, key = name.strip(), key.strip()
    if not _NAME.match(name):
        raise ValidationError(f"{where}: {name[:40]!r} is not a key name (letters, digits and . _ -, at most 64). Write "
                              "entries as name:key; a key that contains ':' needs a name in front of it")
    if not key:
        raise ValidationError(f"{where}: the key named {name!r} is empty; write name:key")
    if name == ADMIN_NAME:
        raise ValidationError(f"{where}: the name {ADMIN_NAME!r} is kept for the admin token; choose another")
    return ClientKey(name, key)


def client_keys(entries: Iterable[str | tuple[str, str]]) -> tuple[ClientKey, ...]:
    """Parse entries (a text, or ``(text, where it came from)``); blank ones and ``#`` comments are
    skipped.  Duplicate names or keys raise :class:`ValidationError` naming the entry."""
    out: list[ClientKey] = []
    names: dict[str, str] = {}
    keys: dict[str, str] = {}
    for i, item in enumerate(entries):
        text, where = item if isinstance(item, tuple) else (item, f"client key {i + 1}")
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        ck = parse_entry(text, where)
        if ck.name in names:
            raise ValidationError(f"{where}: the name {ck.name!r} is already used by {names[ck.name]}; give each key its "
                                  "own name")
        if ck.key in keys:
            raise ValidationError(f"{where}: this key is already listed at {keys[ck.key]}; list each key once")
        names[ck.name] = where
        keys[ck.key] = where
        out.append(ck)
    return tuple(out)
