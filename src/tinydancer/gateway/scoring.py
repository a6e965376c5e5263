"""Prompts to router outputs, batched across concurrent requests.

MiniLM costs ~3 ms for one sentence on these cores but much less per sentence in a batch, so
prompts that arrive while a batch is being embedded wait for the next batch together instead
of queuing one by one: under load the batch grows by itself, with no added delay when idle.
Embedding runs on one worker thread (ONNX Runtime releases the GIL), so the event loop keeps
serving while it runs.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import numpy as np

from ..llm import QueryRouter

__all__ = ["Scorer"]


class Scorer:
    """``await scorer.score(text)`` → (embedding, the router's outputs for it)."""

    def __init__(self, router: QueryRouter, embedder: Any, max_batch: int = 32,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.router = router
        self.on_batch = on_batch
        self.embedder = embedder
        self.max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[tuple[np.ndarray, np.ndarray]]]] = []
        self._busy = False

    async def score(self, text: str) -> tuple[np.ndarray, np.ndarray]:
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
