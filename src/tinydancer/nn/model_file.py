"""The FastGRNN file: safetensors tensors plus JSON metadata, written atomically, read strictly.

Layout
    ``W1``, ``b_z``, …         float32 parameters (``int8.<name>`` when quantized, scales in metadata)
    ``index.<name>``           flat positions of a pruned matrix's kept values (uint16/uint32)
    ``normalization.means|stds``  float64 z-score, exact
    ``aux.<name>``             finite arrays owned by higher layers (conformal scores, outcome memory)
    metadata                   format, version, config, training summary, quantization scales, extra

Reading checks everything before anything is returned — format, version, dtypes, shapes,
finiteness, sparse indices, scales — so a corrupt, truncated or foreign file is a
:class:`~tinydancer.errors.ModelFileError` with the reason, never a half-built model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._io import atomic_write_bytes
from ..errors import ModelFileError, ValidationError
from .compression import dequantize_tensor
from .config import FastGRNNConfig
from .normalization import Normalizer

FORMAT_NAME = "tinydancer.fastgrnn"
FORMAT_VERSION = 1


@dataclass
class ModelFileContents:
    """Everything a model file holds; ``params`` are dense float32 (dequantized when quantized)."""

    config: FastGRNNConfig
    params: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] | None = None
    quantized: dict[str, tuple[np.ndarray, float]] | None = None
    normalizer: Normalizer | None = None
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)


def write_model_file(path: str | Path, contents: ModelFileContents) -> Path:
    """Write ``contents`` as safetensors with metadata, atomically."""
    return atomic_write_bytes(path, encode_model_file(contents))


def encode_model_file(contents: ModelFileContents) -> bytes:
    """The bytes of a model file (safetensors with metadata): what a file or a database row holds."""
    from safetensors.numpy import save

    tensors: dict[str, np.ndarray] = {}
    masks = contents.masks or {}
    quantized = contents.quantized or {}
    for name, view in contents.params.items():
        if name in quantized:
            key, values = f"int8.{name}", quantized[name][0]
        else:
            key, values = name, np.ascontiguousarray(view, dtype=np.float32)
        if name in masks:
            # a pruned matrix is stored as its kept values and their flat positions
            index = np.flatnonzero(masks[name])
            tensors[f"index.{name}"] = index.astype(np.uint16 if masks[name].size <= 65536 else np.uint32)
            values = values.ravel()[index]
        tensors[key] = values
    for name, value in contents.aux.items():
        tensors[f"aux.{name}"] = np.ascontiguousarray(value)
    if contents.normalizer is not None:  # binary float64: exact, and 8 bytes a value instead of ~20 in JSON
        tensors["normalization.means"] = contents.normalizer.means
        tensors["normalization.stds"] = contents.normalizer.stds
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(contents.config.to_dict()),
        "training": json.dumps(contents.training, default=_json_default),
        "quantization": json.dumps({name: scale for name, (_q, scale) in quantized.items()}),
        "extra": json.dumps(contents.extra),
    }
    return save(tensors, metadata=metadata)


def read_model_file(path: str | Path) -> ModelFileContents:
    """Read and check a file written by :func:`write_model_file`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        exists = path.is_file()
    except (OSError, ValueError) as exc:  # e.g. a name too long for the file system, a NUL byte
        reason = getattr(exc, "strerror", None) or exc
        raise ModelFileError(f"cannot read a model file at {str(path)[:200]!r}: {reason}") from None
    if not exists:
        raise ModelFileError(
            f"no model file at {path}: train one with `tinydancer candidates train` or run `make demo` "
            "to create the default model"
        )
    try:
        with safe_open(str(path), framework="np") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelFileError(f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
    return decode_model(tensors, metadata, str(path))


def decode_model_bytes(data: bytes, source: str) -> ModelFileContents:
    """Check and decode a model file already read into memory (one read: nothing can change between
    checking the file and loading it)."""
    from safetensors.numpy import load

    try:
        if len(data) < 8:
            raise ValueError("shorter than a safetensors header")
        header_len = int.from_bytes(data[:8], "little")
        if header_len > len(data) - 8:
            raise ValueError("the header is longer than the file")
        header = json.loads(data[8 : 8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("the metadata is not a map of strings")
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelFileError(f"{source} is not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
    return decode_model(tensors, metadata, source)


def decode_model(tensors: dict[str, np.ndarray], metadata: Mapping[str, str], source: str) -> ModelFileContents:
    """Check and decode a model file's tensors and metadata; ``source`` names it in errors."""
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{source} is not a Tiny Dancer FastGRNN file (format={metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(f"{source} has format version {version!r}; this release reads version {FORMAT_VERSION}")
    try:
        config = FastGRNNConfig.from_dict(json.loads(metadata["config"]))
        quant_scales: dict[str, float] = json.loads(metadata.get("quantization") or "{}")
        training = json.loads(metadata.get("training") or "{}")
        extra = json.loads(metadata.get("extra") or "{}")
    except (KeyError, json.JSONDecodeError, ValidationError, TypeError) as exc:
        raise ModelFileError(f"{source} has unreadable metadata ({exc})") from None
    aux = {k[4:]: tensors.pop(k) for k in [k for k in tensors if k.startswith("aux.")]}
    for name, value in aux.items():
        if value.dtype.kind not in "fu" or (value.dtype.kind == "f" and not np.isfinite(value).all()):
            raise ModelFileError(f"{source}: auxiliary tensor {name!r} must be finite floats or unsigned integers")
    normalizer = _normalizer(tensors, config, source)
    expected = config.param_shapes()
    masks = _densify_sparse(tensors, expected, source)
    params: dict[str, np.ndarray] = {}
    quantized: dict[str, tuple[np.ndarray, float]] = {}
    for key, value in tensors.items():
        if key.startswith("int8."):
            name = key[5:]
            if value.dtype != np.int8:
                raise ModelFileError(f"{source}: {key} must be int8, found {value.dtype}")
            scale = quant_scales.get(name)
            if scale is None or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
                raise ModelFileError(f"{source}: {key} has no valid quantization scale")
        else:
            name = key
            if value.dtype != np.float32:
                raise ModelFileError(f"{source}: tensor {key} must be float32, found {value.dtype}")
            if not np.isfinite(value).all():
                raise ModelFileError(f"{source}: tensor {key} contains NaN or Inf")
        if name not in expected:
            raise ModelFileError(f"{source}: unexpected tensor {key!r} for this configuration")
        if value.shape != expected[name]:
            raise ModelFileError(f"{source}: tensor {key} has shape {value.shape}, expected {expected[name]}")
        if name in params:
            raise ModelFileError(f"{source}: tensor {name} is stored twice")
        if key.startswith("int8."):
            quantized[name] = (value, float(scale))
            params[name] = dequantize_tensor(value, float(scale))
        else:
            params[name] = value
    missing = set(expected) - set(params)
    if missing:
        raise ModelFileError(f"{source} is missing tensors {sorted(missing)}")
    return ModelFileContents(config, params, masks or None, quantized or None, normalizer, training,
                             {str(k): str(v) for k, v in extra.items()}, aux)


def _normalizer(tensors: dict[str, np.ndarray], config: FastGRNNConfig, source: str) -> Normalizer | None:
    norm = {k: tensors.pop(f"normalization.{k}") for k in ("means", "stds") if f"normalization.{k}" in tensors}
    if not norm:
        return None
    if len(norm) != 2 or any(v.dtype != np.float64 or v.shape != (config.input_dim,) for v in norm.values()):
        raise ModelFileError(f"{source}: normalization tensors must be two float64 vectors of {config.input_dim} values")
    try:
        return Normalizer(norm["means"], norm["stds"])
    except ValidationError as exc:
        raise ModelFileError(f"{source}: invalid normalization ({exc})") from None


def _densify_sparse(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str) -> dict[str, np.ndarray]:
    """Replace each pruned matrix's (values, index) by its dense form in ``tensors``; return the masks."""
    masks: dict[str, np.ndarray] = {}
    for key in [k for k in tensors if k.startswith("index.")]:
        name, index = key[6:], tensors.pop(key)
        size = int(np.prod(expected[name])) if name in expected else 0
        if (
            name not in expected or index.ndim != 1 or index.dtype not in (np.uint16, np.uint32)
            or (index.size and (index[-1] >= size or np.any(np.diff(index.astype(np.int64)) <= 0)))
        ):
            raise ModelFileError(f"{source}: sparse index {key} is invalid (name, dtype, order or range)")
        stored = tensors.get(name, tensors.get(f"int8.{name}"))
        if stored is None or stored.shape != index.shape:
            raise ModelFileError(f"{source}: sparse matrix {name} has {index.size} positions but no matching values")
        dense = np.zeros(size, dtype=stored.dtype)
        dense[index] = stored
        mask = np.zeros(size, dtype=bool)
        mask[index] = True
        masks[name] = mask.reshape(expected[name])
        tensors[name if name in tensors else f"int8.{name}"] = dense.reshape(expected[name])
    return masks


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
