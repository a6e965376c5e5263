"""An OpenAI-compatible stand-in LLM on loopback, and a way to run any ASGI app in a thread.

No provider is reachable from the machines this project runs on, so the demo, the tests and
``benchmarks/gateway.py`` put these in front of the gateway as its upstreams.  A stand-in answers
``POST /v1/chat/completions`` (plain and streamed, with ``usage``) in OpenAI's shapes, and can fail
on purpose: ``POST /_standin/mode {"mode": ...}`` switches it to answer 400, 401, 429 or 500, to hang until
the caller goes away, or to break a stream after its first chunk, and mode ``raw`` answers whatever
``"raw"`` describes (a status, a body repeated ``repeat`` times, a gzip body of ``gzip_zeros`` zero
bytes, a redirect), as a broken or hostile provider might.  ``GET /_standin/stats`` says
how many calls it saw and how many callers hung up on it.  Asked to grade an answer in the forms
``tinydancer label`` asks for, it answers with a well-formed but arbitrary verdict.  With a
``skill`` (``weak`` or ``strong``) it is kind-aware (see :mod:`tinydancer.gateway.prompt_kinds`):
its answers are right or wrong by the prompt's kind (``weak`` answers small talk, look-ups and
arithmetic right and proofs, code reviews and multi-step problems wrong; ``strong`` answers all
right), a right answer carrying the question's ``answer_key``; and as a judge it grades by that
key, 9 for a right answer and 2 for a wrong one (pairwise: the right one wins), as a grader holding
the reference answers would.  Its ``usage``
counts a token per word by default; ``tokens="chars"`` counts one per character (as CJK text is
often counted), and ``usage_json`` (a field, or sent to ``/_standin/mode``) replaces the whole
``usage``, plain and streamed, with any JSON text, bogus included (``1e999``, negative or string
counts): what a hostile or broken provider may send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .prompt_kinds import answer_key, classify, needs_strong

__all__ = ["StandIn", "free_port", "running"]

MODES = ("ok", "400", "401", "429", "500", "hang", "break", "garbage", "raw")
SKILLS = (None, "weak", "strong")


@dataclass
class StandIn:
    """One stand-in model: its name, how it answers, and what it has seen."""

    name: str = "stand-in"
    mode: str = "ok"
    #: seconds before answering (or between stream chunks)
    delay_s: float = 0.0
    #: a fixed answer (None: the model's name and the start of the last user message)
    answer: str | None = None
    #: how ``usage`` counts tokens: "words" or "chars" (one per character of every message and the answer)
    tokens: str = "words"
    #: JSON text that replaces the ``usage`` the stand-in reports, verbatim (None: the counted one),
    #: e.g. '{"prompt_tokens": 1e999}'
    usage_json: str | None = None
    #: what mode ``raw`` answers: status, body, content_type, repeat, gzip_zeros, location
    raw: dict[str, Any] = field(default_factory=dict)
    #: None: answers echo the prompt, grades are arbitrary; ``weak`` or ``strong``: kind-aware (see above)
    skill: str | None = None
    calls: int = 0
    cancelled: int = 0
    last_body: dict[str, Any] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.skill not in SKILLS:
            raise ValueError(f"skill must be one of {SKILLS}, not {self.skill!r}")

    def reply(self, body: dict[str, Any]) -> str:
        if self.mode == "garbage":
            return "I would rather not grade this."
        if self.answer is not None:
            return self.answer
        text = _last_user_text(body)
        if self.skill is not None:
            return kind_aware_reply(self.name, self.skill, text)
        # asked to grade (tinydancer label's rubrics): a verdict in the asked-for form, the same for
        # the same text every time, and meaningless: a stand-in cannot judge
        digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        if "Rating: [[n]]" in text:
            return f"A stand-in's grade, not a judgement. Rating: [[{1 + digest % 10}]]"
        if "[[C]] for a tie" in text:
            return f"A stand-in's verdict, not a judgement. [[{'ABC'[digest % 3]}]]"
        return f"[{self.name}] " + " ".join(text.split()[:12])

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/embeddings", self._other, methods=["POST"]),
            Route("/v1/completions", self._other, methods=["POST"]),
            Route("/v1/responses", self._other, methods=["POST"]),
            Route("/_standin/mode", self._set_mode, methods=["POST"]),
            Route("/_standin/stats", self._stats, methods=["GET"]),
        ])

    async def _models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "stand-in"}]})

    async def _other(self, request: Request) -> Response:
        """The endpoints a gateway passes through: embeddings, (legacy) completions, responses; minimal
        answers in OpenAI's shapes, streamed for completions when asked."""
        body = json.loads(await request.body())
        self.calls += 1
        self.last_body = body
        if self.mode in ("400", "429", "500"):
            return JSONResponse({"error": {"message": f"stand-in {self.name} answers {self.mode} on purpose"}},
                                status_code=int(self.mode))
        kind = request.url.path.rsplit("/", 1)[1]
        usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        if kind == "embeddings":
            return JSONResponse({"object": "list", "model": self.name, "usage": usage,
                                 "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}]})
        if kind == "completions" and body.get("stream"):
            events = [_event({"id": "cmpl-1", "object": "text_completion", "model": self.name,
                              "choices": [{"index": 0, "text": w, "finish_reason": None}]}) for w in ("[", self.name, "]")]
            return StreamingResponse(iter([*events, b"data: [DONE]\n\n"]), media_type="text/event-stream")
        if kind == "completions":
            return JSONResponse({"id": "cmpl-1", "object": "text_completion", "model": self.name, "usage": usage,
                                 "choices": [{"index": 0, "text": f"[{self.name}]", "finish_reason": "stop"}]})
        return JSONResponse({"id": "resp-1", "object": "response", "created_at": int(time.time()), "model": self.name,
                             "status": "completed", "output": [{"type": "message", "id": "msg-1", "role": "assistant",
                                                                "status": "completed", "content": [
                                                                    {"type": "output_text", "text": f"[{self.name}]",
                                                                     "annotations": []}]}]})

    async def _set_mode(self, request: Request) -> Response:
        body = await request.json()
        if body.get("mode") not in MODES:
            return JSONResponse({"error": f"mode must be one of {MODES}"}, status_code=422)
        self.mode = body["mode"]
        self.delay_s = float(body.get("delay_s", self.delay_s))
        if "usage_json" in body:
            self.usage_json = body["usage_json"]
        if "raw" in body:
            self.raw = dict(body["raw"] or {})
        return JSONResponse({"mode": self.mode})

    async def _stats(self, _request: Request) -> Response:
        return JSONResponse({"calls": self.calls, "cancelled": self.cancelled, "mode": self.mode})

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.calls += 1
        self.last_body = body
        self.last_headers = dict(request.headers)
        if self.mode == "401":  # as providers do, the message echoes the key it was given
            given = request.headers.get("authorization", "").partition(" ")[2]
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {given}", "type": "invalid_request_error"}},
                                status_code=401)
        if self.mode in ("400", "429", "500"):
            code = int(self.mode)
            return JSONResponse({"error": {"message": f"stand-in {self.name} answers {code} on purpose",
                                           "type": {400: "invalid_request_error", 429: "rate_limit_error"}.get(code, "server_error")}},
                                status_code=code)
        if self.mode == "raw":
            return _raw_answer(self.raw)
        if self.mode == "hang":
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.cancelled += 1
            return Response(status_code=499)
        if self.delay_s and not body.get("stream"):
            await asyncio.sleep(self.delay_s)
        text = self.reply(body)
        count = len if self.tokens == "chars" else (lambda t: len(t.split()))
        prompt_tokens = sum(count(_content_text(m.get("content"))) for m in body.get("messages", []))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count(text),
                 "total_tokens": prompt_tokens + count(text)}
        if self.usage_json is not None:
            usage = _VERBATIM
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._chunks(text, usage if include_usage else None, created),
                                     media_type="text/event-stream")
        # json.dumps escapes what UTF-8 cannot carry (a lone surrogate in ``answer`` goes out as the escape \ud800)
        return Response(self._json({
            "id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": created, "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }), media_type="application/json")

    def _json(self, obj: dict[str, Any]) -> bytes:
        """``obj`` as JSON, with ``usage_json`` spliced in where the usage goes."""
        out = json.dumps(obj, separators=(",", ":"))
        if self.usage_json is not None:
            out = out.replace(json.dumps(_VERBATIM), self.usage_json)
        return out.encode()

    async def _chunks(self, text: str, usage: Any, created: int) -> AsyncIterator[bytes]:
        base = {"id": f"chatcmpl-{self.calls}", "object": "chat.completion.chunk", "created": created, "model": self.name}
        words = text.split(" ")
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            yield _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if self.mode == "break" and i == 1:
                raise ConnectionError("stand-in breaks the stream on purpose")
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage is not None:
            yield b"data: " + self._json({**base, "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"


_VERBATIM = "\x00usage\x00"

_GRADED = re.compile(r"\[Question\]\n(?P<q>.*?)\n\n\[Answer(?: A)?\]\n(?P<a>.*?)\n\[End of answer(?: A)?\]"
                     r"(?:\n\n\[Answer B\]\n(?P<b>.*?)\n\[End of answer B\])?", re.S)


def kind_aware_reply(name: str, skill: str, text: str) -> str:
    """A kind-aware stand-in's reply: an answer right or wrong by the prompt's kind, or, asked to
    grade, a grade by whether the answer carries the question's key (see the module's docstring)."""
    graded = _GRADED.search(text) if ("Rating: [[n]]" in text or "[[C]] for a tie" in text) else None
    if graded is not None:
        key = answer_key(graded["q"])
        kind = classify(graded["q"])
        right_a = key in graded["a"]
        if "Rating: [[n]]" in text:
            return f"A {kind.replace('_', ' ')} question; the answer is {'right' if right_a else 'wrong'}. " \
                   f"Rating: [[{9 if right_a else 2}]]"
        right_b = key in (graded["b"] or "")
        verdict = "C" if right_a == right_b else "A" if right_a else "B"
        return f"A {kind.replace('_', ' ')} question. [[{verdict}]]"
    kind = classify(text)
    if skill == "strong" or not needs_strong(kind):
        return f"[{name}] Here is a careful answer to your {kind.replace('_', ' ')} request: {answer_key(text)}."
    return f"[{name}] Here is a confident answer to your {kind.replace('_', ' ')} request: " \
           f"{answer_key('wrong: ' + text)}."


def _raw_answer(raw: dict[str, Any]) -> Response:
    """Mode ``raw``: an answer no well-behaved provider would give (see the module's docstring)."""
    status = int(raw.get("status", 200))
    headers = {}
    if "location" in raw:
        headers["location"] = str(raw["location"])
    if "gzip_zeros" in raw:  # a small body that inflates to gzip_zeros bytes
        import gzip

        body = gzip.compress(b"\0" * int(raw["gzip_zeros"]), compresslevel=9)
        headers["content-encoding"] = "gzip"
    else:
        body = str(raw.get("body", "")).encode() * int(raw.get("repeat", 1))
    return Response(body, status_code=status, headers=headers, media_type=raw.get("content_type", "application/json"))


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages", [])):
        if isinstance(m, dict) and m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app: Any, port: int | None = None, log_level: str = "warning") -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 in a background thread; yields its base URL, stops on exit."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """``python -m tinydancer.gateway.standin --port 9100 --name weak``: one stand-in, in the foreground."""
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser(description="An OpenAI-compatible stand-in LLM on loopback (for demos and benchmarks).")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="stand-in")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before answering (streams: between chunks)")
    ap.add_argument("--skill", choices=["weak", "strong"], default=None,
                    help="kind-aware answers and grades (weak: right on easy kinds only; strong: right on all)")
    args = ap.parse_args(argv)
    uvicorn.run(StandIn(args.name, delay_s=args.delay, skill=args.skill).app(), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
