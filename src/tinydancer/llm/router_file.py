"""A :class:`~tinydancer.llm.query_router.QueryRouter`'s file: one safetensors FastGRNN file whose
metadata holds the routing part (models, costs, embedder, operating point, training info) and
whose auxiliary tensors hold the outcome memory and the linear head.

The format lives apart from training and inference so that a change to either cannot change what
is on disk by accident; ``ROUTER_FORMAT_VERSION`` moves when the format does.  This module does
not import :mod:`~tinydancer.llm.query_router` (that module imports this one): the router class
comes in as ``cls``, and a router is typed :data:`Router` here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelFileError, ValidationError
from ..nn import FastGRNN
from .linear_head import LinearHead
from .memory import OutcomeMemory

__all__ = ["ROUTER_FORMAT", "ROUTER_FORMAT_VERSION", "ROUTER_FILE", "pack", "save", "load", "from_bytes", "from_network"]

ROUTER_FORMAT = "tinydancer.query_router"
ROUTER_FORMAT_VERSION = 1
#: what ``cost_weight`` multiplies: each model's cost as a share of the dearest one's
COST_WEIGHT_SCALE = "share-of-dearest"
ROUTER_FILE = "router.safetensors"

#: a QueryRouter (not imported: query_router imports this module)
Router = Any


def save(router: Router, folder: str | Path) -> Path:
    """Write ``folder/router.safetensors``: the network plus models, costs, embedder, knobs."""
    return pack(router).save(Path(folder) / ROUTER_FILE)


def pack(router: Router) -> FastGRNN:
    """A copy of the network carrying the router's metadata: saved, it is a router file."""
    net = router.model.copy()
    for key in [k for k in net.aux_tensors if k.startswith(("memory.", "head."))]:
        del net.aux_tensors[key]
    if router.memory is not None:
        net.aux_tensors.update(router.memory.to_tensors())
    if router.head is not None:
        net.aux_tensors.update(router.head.to_tensors())
    net.extra_metadata["query_router"] = json.dumps({
        "format": ROUTER_FORMAT,
        "format_version": ROUTER_FORMAT_VERSION,
        "models": router.models,
        "costs": router.costs.tolist(),
        "embedder_id": router.embedder_id,
        "threshold": router.threshold,
        "cost_weight": router.cost_weight,
        "cost_weight_scale": COST_WEIGHT_SCALE,
        "quality_bar": router.quality_bar,
        "score_quantiles": None if router.score_quantiles is None else router.score_quantiles.tolist(),
        "memory_prior": None if router.memory is None else router.memory.prior_weight,
        "info": router.info,
        "strong": router.strong if router.is_pair else None,
        "head": None if router.head is None else {"alpha": router.head.alpha, "network_weight": router.network_weight},
    })
    return net


def stored_cost_weight(meta: dict[str, Any]) -> float:
    """The file's cost weight on today's scale: a file written before the knob weighed each cost as
    a share of the dearest model's (no ``cost_weight_scale``) weighed dollars, the same choices as
    that weight times the dearest cost."""
    weight = float(meta["cost_weight"])
    if meta.get("cost_weight_scale") == COST_WEIGHT_SCALE:
        return weight
    return weight * max((float(c) for c in meta["costs"]), default=0.0)


def load(cls: Callable[..., Router], path: str | Path) -> Router:
    """Load from a folder written by :func:`save` (or the ``router.safetensors`` in it)."""
    path = Path(path)
    file = path / ROUTER_FILE if path.is_dir() else path
    if not file.exists():  # FastGRNN's own message would advise the candidate model's `tinydancer train`
        raise ModelFileError(f"no query router at {path}: train one with `tinydancer router train TABLE --out DIR`, "
                             "or name the folder such a run wrote")
    return from_network(cls, FastGRNN.load(file), str(file))


def from_bytes(cls: Callable[..., Router], data: bytes, source: str = "router bytes") -> Router:
    """A router from the bytes of its file (a version kept in a database registry)."""
    return from_network(cls, FastGRNN.from_bytes(data, source), source)


def from_network(cls: Callable[..., Router], net: FastGRNN, file: str) -> Router:
    """The router a network with routing metadata describes (``file`` names it in errors)."""
    raw = net.extra_metadata.get("query_router")
    if raw is None:
        raise ModelFileError(f"{file} is a FastGRNN model but not a query router (no routing metadata)")
    try:
        meta = json.loads(raw)
        if meta.get("format") != ROUTER_FORMAT or meta.get("format_version") != ROUTER_FORMAT_VERSION:
            raise ModelFileError(f"{file}: unsupported router format {meta.get('format')!r} v{meta.get('format_version')!r}")
        memory = OutcomeMemory.from_tensors(net.aux_tensors, meta.get("memory_prior") or 1.0)
        head_meta = meta.get("head")
        outputs = len(meta["models"]) + (1 if len(meta["models"]) == 2 else 0)
        head = None if head_meta is None else LinearHead.from_tensors(net.aux_tensors, head_meta["alpha"],
                                                                       net.config.input_dim, outputs)
        for key in [k for k in net.aux_tensors if k.startswith(("memory.", "head."))]:
            del net.aux_tensors[key]  # the router holds them; pack() puts them back
        return cls(net, meta["models"], meta["costs"], meta["embedder_id"], threshold=meta["threshold"],
                   cost_weight=stored_cost_weight(meta), quality_bar=meta["quality_bar"],
                   score_quantiles=meta["score_quantiles"], info=meta.get("info"), memory=memory,
                   strong=meta.get("strong"), head=head,
                   network_weight=1.0 if head_meta is None else float(head_meta["network_weight"]))
    except (KeyError, TypeError, json.JSONDecodeError, ValidationError) as exc:
        raise ModelFileError(f"{file} has an unreadable router part ({exc})") from None
