"""What every embedder checks and keys on, shared by the transformer and the static embedders
(``embeddings`` imports ``static_embedder`` lazily, so neither can hold these for the other)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from ..errors import ValidationError

__all__ = ["check_texts", "weights_digest"]


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of strings (the Embedder contract): a lone string would be embedded character by character."""
    if isinstance(texts, str):
        raise ValidationError("embed() takes a list of texts, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValidationError(f"text {i} is {type(t).__name__}, not a string")
    return out


def weights_digest(path: Path) -> str:
    """A short digest of a weights file: its size, first and last MiB (hashing 90 MB each start
    would cost more than loading what is cached from it).  Keyed by content, not path: each
    virtual environment once built a 90 MB copy of its own."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(-min(1 << 20, size), os.SEEK_END)
        digest.update(fh.read())
    return digest.hexdigest()[:16]
