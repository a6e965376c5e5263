"""Which upstreams a chat call may go to, in which order: the ``model`` field, the ``tinydancer``
options, sessions, and the text the router reads.

``model`` is one of
- an upstream's name: passed through to it (no routing, no fallback; still logged);
- ``tinydancer``: routed at the gateway's operating point;
- ``router-<name>-<threshold>``, RouteLLM's form: routed, with ``<threshold>`` as this router's
  threshold on the strong score (two models) or as the quality bar (more models).  RouteLLM's
  calibrated numbers belong to its own routers' score scales; get ours for a strong-call share
  with ``tinydancer router route --strong-share``, or send ``"tinydancer": {"strong_share": ...}``.

What the router reads: the last user turn.  The packaged router, like RouteLLM's, was trained
on single prompts, so the last user message is the input it knows; the system prompt is the
same for every call of an application, and earlier turns would dilute the question being asked
now.  (A conversation kept on one model is what ``x-session-id`` is for.)
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError as PydanticError

from .config import GatewayConfig, describe

__all__ = ["CallOptions", "ModelSpec", "RequestError", "SessionStore", "estimate_cost", "message_chars", "parse_model",
           "prompt_text"]

ROUTED_ALIAS = "tinydancer"
_ROUTELLM = re.compile(r"^router-([A-Za-z0-9_.]+)-([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")

#: completion tokens assumed for a cost estimate when the call sets no max_tokens
ASSUMED_COMPLETION_TOKENS = 512


class RequestError(Exception):
    """A bad chat request: answered in OpenAI's error shape with ``status``."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


class CallOptions(BaseModel):
    """The body's ``tinydancer`` field (the OpenAI SDK's ``extra_body``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: the upstreams (or router models) this call may go to
    models: list[str] | None = Field(None, min_length=1, max_length=64)
    #: dollars this call may cost at most, estimated before the call (see estimate_cost)
    max_cost: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    strong_share: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    cost_weight: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    quality_bar: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)

    @classmethod
    def parse(cls, value: Any) -> "CallOptions":
        if value is None:
            return cls()
        try:
            return cls.model_validate(value)
        except PydanticError as exc:
            lines = describe(exc).replace("\n", "; ")
            raise RequestError(400, f"tinydancer options: {lines}", "invalid_tinydancer_options", "tinydancer") from None


@dataclass(frozen=True)
class ModelSpec:
    """What the ``model`` field asks for."""

    routed: bool
    upstream: str | None = None  # the named upstream when not routed
    threshold: float | None = None  # from router-<name>-<threshold>


def parse_model(model: Any, config: GatewayConfig) -> ModelSpec:
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' is required: an upstream's name, 'tinydancer', or router-<name>-<threshold>",
                           "invalid_model", "model")
    if model == ROUTED_ALIAS:
        return ModelSpec(routed=True)
    match = _ROUTELLM.match(model)
    if match:
        return ModelSpec(routed=True, threshold=float(match.group(2)))
    if config.upstream(model) is not None:
        return ModelSpec(routed=False, upstream=model)
    names = ", ".join([ROUTED_ALIAS, *(u.name for u in config.upstreams)])
    raise RequestError(404, f"the model {model!r} does not exist here; use one of {names} or router-<name>-<threshold>",
                       "model_not_found", "model")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones (images are not routed on)
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "invalid_messages", "messages")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            text = _text(m.get("content"))
            if text.strip():
                return text
    # no user text (a tool result last, say): the last message with text stands in
    for m in reversed(messages):
        if isinstance(m, dict):
            text = _text(m.get("content"))
            if text.strip():
                return text
    raise RequestError(400, "no message has text to route on", "invalid_messages", "messages")


def message_chars(body: dict[str, Any]) -> int:
    """Characters of text in all of a call's messages (what its prompt tokens are estimated from)."""
    messages = body.get("messages")
    return sum(len(_text(m.get("content"))) for m in messages if isinstance(m, dict)) if isinstance(messages, list) else 0


def estimate_cost(body: dict[str, Any], text_chars: int, input_per_million: float, output_per_million: float) -> float:
    """Dollars a call may cost: prompt tokens guessed as characters / 4, completion tokens from
    ``max_completion_tokens`` / ``max_tokens`` (else ``ASSUMED_COMPLETION_TOKENS``)."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    completion = limit if isinstance(limit, int) and limit > 0 else ASSUMED_COMPLETION_TOKENS
    return (text_chars / 4 * input_per_million + completion * output_per_million) / 1e6


class SessionStore:
    """``x-session-id`` → the upstream that answered it, for ``ttl_s``; the oldest go first past ``capacity``."""

    def __init__(self, ttl_s: float, capacity: int) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, session: str | None) -> str | None:
        if not session:
            return None
        item = self._items.get(session)
        if item is None:
            return None
        if item[1] < time.monotonic():
            del self._items[session]
            return None
        return item[0]

    def put(self, session: str | None, upstream: str) -> None:
        if not session:
            return
        self._items[session] = (upstream, time.monotonic() + self.ttl_s)
        self._items.move_to_end(session)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
