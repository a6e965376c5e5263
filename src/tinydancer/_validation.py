"""Checks applied where data enters the package, so NaN or a wrong shape never travels inward."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any, TypeVar

import numpy as np

from .errors import ValidationError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float_array(
    value: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: type = np.float32,
    allow_empty: bool = False,
) -> np.ndarray:
    """Convert ``value`` to a finite float array, with messages that name the culprit.

    Ragged nested lists, non-numeric entries, NaN and Inf, the wrong number of dimensions and
    empty input each raise :class:`ValidationError`.
    """
    target = np.dtype(dtype)
    narrow = target == np.float32 and not (isinstance(value, np.ndarray) and value.dtype == np.float32)
    try:
        # go through float64 so a value beyond float32's range is reported, not silently made inf
        arr = np.asarray(value, dtype=np.float64 if narrow else target)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValidationError(_describe_bad_array(value, name, exc)) from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValidationError(f"{name} must be {want}, got an array of shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValidationError(f"{name} is empty: provide at least one value")
    check_finite(arr, name)
    if narrow:
        if arr.size and np.abs(arr).max() > FLOAT32_MAX:
            raise ValidationError(f"{name} has a value beyond float32's range (±{FLOAT32_MAX:.3g}); rescale the data")
        arr = arr.astype(np.float32)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` holds NaN or ±Inf, naming the first bad position."""
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        where = ", ".join(str(int(i)) for i in bad)
        raise ValidationError(
            f"{name} contains a non-finite value ({arr[tuple(bad)]!r} at index [{where}]); "
            "remove or impute NaN/Inf before routing or training"
        )


def _describe_bad_array(value: Any, name: str, exc: Exception) -> str:
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(row, (list, tuple, np.ndarray)) for row in value
    ):
        lengths = [len(row) for row in value]
        first = lengths[0]
        for i, n in enumerate(lengths):
            if n != first:
                return (
                    f"{name} is ragged: row 0 has {first} values but row {i} has {n}; "
                    "every row must have the same number of features"
                )
    return f"{name} could not be read as numbers ({exc})"


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise unless ``value`` is a finite number (an integer with ``integer``) within the bounds.

    The one check behind every config dataclass, so each field's message has the same shape:
    ``TrainingConfig.learning_rate must be a number > 0, got -1``.  Booleans are not numbers
    here, and ``optional`` lets None through.
    """
    if value is None and optional:
        return
    kinds: tuple[type, ...] = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    kind = "an integer" if integer else "a number"
    if low is not None and high is not None:
        where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        where = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        where = f" {'<' if high_open else '<='} {high:g}"
    else:
        where = ""
    raise ValidationError(f"{owner}.{name} must be {'None or ' if optional else ''}{kind}{where}, got {value!r}")


_C = TypeVar("_C", bound="DictConfig")


class DictConfig:
    """``to_dict``/``from_dict`` for config dataclasses; unknown keys are an error, not ignored."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValidationError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**data)
