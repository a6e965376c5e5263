"""Reading training data from CSV, JSONL and NPZ files.

CSV     header row; ``label`` (or ``label_0, label_1, ...``) columns are targets, optional
        ``soft_target``/``soft_target_*`` columns a teacher's soft targets, an optional ``weight``
        column sample weights; every other column is a numeric feature.
JSONL   one object per line: ``{"features": [...], "label": 0/1 or [...], "soft_target"?: ...,
        "weight"?: w}``.
NPZ     arrays ``features`` (N, D) or (N, T, D), ``labels``, optional ``soft_targets``, ``weights``.

For prediction the label columns may be absent.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import TrainingDataset
from ..errors import ValidationError


@dataclass
class TableData:
    features: np.ndarray
    labels: np.ndarray | None
    soft_targets: np.ndarray | None
    weights: np.ndarray | None
    feature_names: list[str] | None = None

    def to_dataset(self) -> TrainingDataset:
        if self.labels is None:
            raise ValidationError("the data file has no label column; training and evaluation need labels")
        return TrainingDataset(self.features, self.labels, self.soft_targets, self.weights)


def read_table(path: str | Path) -> TableData:
    """Read a CSV, JSONL or NPZ file (chosen by extension)."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"no data file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".npz":
        return _read_npz(path)
    raise ValidationError(f"{path}: unknown data format {suffix!r}; use .csv, .jsonl or .npz")


def _squeeze(cols: list[list[float]] | None) -> np.ndarray | None:
    if not cols:
        return None
    arr = np.asarray(cols, dtype=np.float64).T
    return arr[:, 0] if arr.shape[1] == 1 else arr


def _read_csv(path: Path) -> TableData:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValidationError(f"{path} is empty") from None
        label_idx = [i for i, h in enumerate(header) if h == "label" or h.startswith("label_")]
        soft_idx = [i for i, h in enumerate(header) if h == "soft_target" or h.startswith("soft_target_")]
        weight_idx = [i for i, h in enumerate(header) if h == "weight"]
        special = set(label_idx) | set(soft_idx) | set(weight_idx)
        feat_idx = [i for i in range(len(header)) if i not in special]
        if not feat_idx:
            raise ValidationError(f"{path} has no feature columns")
        rows: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValidationError(f"{path}:{line_no} has {len(row)} fields, the header has {len(header)}")
            try:
                rows.append([float(cell) for cell in row])
            except ValueError:
                bad = next(c for c in row if not _is_float(c))
                raise ValidationError(f"{path}:{line_no}: {bad!r} is not a number") from None
    if not rows:
        raise ValidationError(f"{path} has a header but no data rows")
    table = np.asarray(rows, dtype=np.float64)
    return TableData(
        features=table[:, feat_idx],
        labels=_squeeze([table[:, i].tolist() for i in label_idx]),
        soft_targets=_squeeze([table[:, i].tolist() for i in soft_idx]),
        weights=table[:, weight_idx[0]] if weight_idx else None,
        feature_names=[header[i] for i in feat_idx],
    )


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_jsonl(path: Path) -> TableData:
    feats: list[Any] = []
    labels: list[Any] = []
    soft: list[Any] = []
    weights: list[Any] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValidationError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "features" not in obj:
                raise ValidationError(f"{path}:{line_no}: each line must be an object with a 'features' list")
            feats.append(obj["features"])
            for key, store in (("label", labels), ("soft_target", soft), ("weight", weights)):
                if key in obj:
                    store.append(obj[key])
    if not feats:
        raise ValidationError(f"{path} has no rows")
    for key, store in (("label", labels), ("soft_target", soft), ("weight", weights)):
        if store and len(store) != len(feats):
            raise ValidationError(f"{path}: '{key}' is present on {len(store)} of {len(feats)} lines; give it on all or none")
    return TableData(
        features=feats,  # type: ignore[arg-type]  # validated (ragged rows too) by TrainingDataset
        labels=np.asarray(labels, dtype=np.float64) if labels else None,
        soft_targets=np.asarray(soft, dtype=np.float64) if soft else None,
        weights=np.asarray(weights, dtype=np.float64) if weights else None,
    )


def _read_npz(path: Path) -> TableData:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "features" not in data:
                raise ValidationError(f"{path} has no 'features' array (found {sorted(data.files)})")
            return TableData(
                features=data["features"],
                labels=data["labels"] if "labels" in data else None,
                soft_targets=data["soft_targets"] if "soft_targets" in data else None,
                weights=data["weights"] if "weights" in data else None,
            )
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError(f"{path} is not a readable .npz file ({exc})") from None
