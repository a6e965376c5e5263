"""Model versions on disk: every retrained model is kept with its metrics; one is current.

``folder/versions/<version>/model.safetensors`` and ``version.json`` per version, and
``folder/current.json`` naming the promoted one.  Promotion copies the version over the served
file atomically, so a watching service hot-reloads a complete file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes, atomic_write_json
from ..nn import FastGRNN


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


class ModelRegistry:
    """``folder/versions/<version>/model.safetensors`` + ``version.json``, and ``current.json``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        (self.folder / "versions").mkdir(parents=True, exist_ok=True)

    def add(self, model: FastGRNN, metrics: dict[str, Any], parent: str | None = None) -> ModelVersion:
        stamp = time.time()
        version = time.strftime("v%Y%m%dT%H%M%S", time.gmtime(stamp)) + f"{int((stamp % 1) * 1000):03d}"
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

    def promote(self, entry: ModelVersion, serve_path: str | Path) -> None:
        """Copy the version over the served file atomically and record it as current."""
        atomic_write_bytes(serve_path, Path(entry.model_path).read_bytes())
        entry.promoted = True
        atomic_write_json(Path(entry.model_path).parent / "version.json", asdict(entry))
        atomic_write_json(self.folder / "current.json", {"version": entry.version, "promoted_at": time.time(),
                                                         "serve_path": str(serve_path)})
