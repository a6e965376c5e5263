"""Prompts to router outputs, batched across concurrent requests, with a bounded queue.

Prompts that arrive while a batch is being embedded wait for the next batch together instead
of queuing one by one: under load the batch grows by itself, with no added delay when idle.
Embedding and the router's forward pass run on a worker thread (ONNX Runtime and NumPy release
the GIL), so the event loop keeps serving named calls, health checks and streams while it runs.
A batch of prompts of mixed lengths is split by token length inside the embedder
(:func:`tinydancer.llm.embeddings.length_groups`), so a short prompt is not padded to a long one.

An embedder that is cheap for short texts says so with ``inline_chars`` (the static embedder:
~0.1-0.2 ms for a chat-length prompt, against MiniLM's 10+ ms): a prompt up to that many
characters that arrives while no batch is running is embedded on the event loop itself.  The
hop to a worker thread and back cost more than the embedding: the worker has to win the GIL
back from a busy loop (which may hold it for the interpreter's 5 ms switch interval), and the
loop then wakes for its result.  A longer prompt, or one that arrives during a batch, goes the
threaded, batched way: the loop is never held for more than a short prompt's embedding.

The queue is bounded (``max_queue``, the gateway's ``max_embed_queue``): when more prompts wait
than that, a new one is turned away at once (:class:`EmbedQueueFull`, a 503 with Retry-After)
rather than waiting behind a backlog it would time out in anyway.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import numpy as np

from ..llm import QueryRouter

__all__ = ["EmbedQueueFull", "Scorer"]


class EmbedQueueFull(Exception):
    """More prompts wait to be embedded than the queue holds: the caller should retry shortly."""


class Scorer:
    """``await scorer.score(text)`` → (embedding, the router's outputs for it)."""

    def __init__(self, router: QueryRouter, embedder: Any, max_batch: int = 32,
                 on_batch: Callable[[int], None] | None = None, max_queue: int = 256) -> None:
        self.router = router
        self.on_batch = on_batch
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: list[tuple[str, asyncio.Future[tuple[np.ndarray, np.ndarray]]]] = []
        self._busy = False
        #: prompts up to this many characters are embedded inline when nothing is queued (0: never)
        self.inline_chars = int(getattr(embedder, "inline_chars", 0) or 0)

    @property
    def waiting(self) -> int:
        """Prompts waiting for a batch (not counting the batch being embedded)."""
        return len(self._waiting)

    async def score(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The prompt's embedding and the router's outputs; :class:`EmbedQueueFull` when the queue is full."""
        if len(self._waiting) >= self.max_queue:
            raise EmbedQueueFull(f"{len(self._waiting)} prompts are already waiting to be routed (max_embed_queue "
                                 f"{self.max_queue}); retry shortly, or name a model to skip routing")
        if not self._busy and len(text) <= self.inline_chars:
            emb, out = self._run([text])  # cheap: on the loop (see the module's docstring)
            if self.on_batch is not None:
                self.on_batch(1)
            return emb[0], out[0]
        future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._waiting.append((text, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch:]
                batch = [(t, f) for t, f in batch if not f.done()]  # a waiter whose client left is not embedded
                if not batch:
                    continue
                texts = [t for t, _ in batch]
                try:
                    emb, out = await asyncio.to_thread(self._run, texts)
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0][1], exc)
                    else:  # one text may have failed them all: each one alone, so only it hears of it
                        await self._one_by_one(batch)
                    continue
                if self.on_batch is not None:  # where the time goes: texts / batches is the mean batch
                    self.on_batch(len(texts))
                for i, (_, f) in enumerate(batch):
                    _settle(f, (emb[i], out[i]))
        finally:
            self._busy = False

    async def _one_by_one(self, batch: list[tuple[str, asyncio.Future[tuple[np.ndarray, np.ndarray]]]]) -> None:
        for text, future in batch:
            if future.done():
                continue
            try:
                emb, out = await asyncio.to_thread(self._run, [text])
            except Exception as exc:
                _settle(future, exc)
                continue
            if self.on_batch is not None:
                self.on_batch(1)
            _settle(future, (emb[0], out[0]))

    def _run(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embedder.embed(texts)
        out = self.router.remember(texts, self.router.estimate(emb))[0]
        return emb, out


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Hand a waiter its result or exception, unless its client went away (it was cancelled)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
