"""The static embedder's recipe on a tiny vocabulary and a stand-in transformer (the real build runs
MiniLM over 30,522 pieces: ~40 s here, too slow for a unit test; benchmarks/embedders.py times it).

Checked: the table is PCA of the pieces' ``[CLS] piece [SEP]`` vectors times their SIF weights;
a prompt is the normalized sum of its pieces' rows; builds are identical and cached atomically;
the id carries the version through a router file, and a router refuses any other embedder.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinydancer.errors import ValidationError
from tinydancer.llm.embeddings import HashingEmbedder, embedder_for_id, make_embedder
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.static_embedder import StaticEmbedder, StaticSource, content_ranks, pca, sif_weights, static_id
from tinydancer.llm.tables import RoutingTable

SPECIAL = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = ["the", "about", "question", "please", "explain", "tell", "me", "?", ".", "apples", "bananas", "cherries",
         "topology", "sheaves", "homotopy", "galois", "theory", "co", "##homology", "##s"]
VOCAB = SPECIAL + WORDS
DIM, WIDTH = 6, 12


def tiny_tokenizer():  # type: ignore[no-untyped-def]
    """A BERT-style WordPiece tokenizer (lower-casing, punctuation split) over VOCAB."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def stand_in(ids: np.ndarray) -> np.ndarray:
    """A deterministic 'transformer': each position's fixed random vector, mean pooled, normalized."""
    rows = np.random.default_rng(7).normal(size=(len(VOCAB), WIDTH))
    out = rows[ids].mean(axis=1)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def tiny(cache_dir, dim: int = DIM) -> StaticEmbedder:  # type: ignore[no-untyped-def]
    return StaticEmbedder(dim, StaticSource(key=lambda: "tiny-test", tokenizer=tiny_tokenizer, encoder=lambda: stand_in),
                          cache_dir)


def test_table_is_pca_of_the_pieces_times_their_sif_weights(tmp_path) -> None:
    emb = tiny(tmp_path)
    emb.embed(["the apples"])
    table = np.load(emb.table_path())
    ids = np.arange(len(VOCAB))
    raw = stand_in(np.stack([np.full_like(ids, VOCAB.index("[CLS]")), ids, np.full_like(ids, VOCAB.index("[SEP]"))], 1))
    weights = sif_weights(content_ranks(VOCAB))
    expected = pca(raw, DIM) * weights[:, None]
    expected[VOCAB.index("[UNK]")] = 0.0
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)
    # PCA, checked independently: uncorrelated columns, variances in decreasing order, and the
    # variance kept equals the top eigenvalues of the covariance
    reduced = pca(raw, DIM)
    cov = np.cov(reduced, rowvar=False)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-10)
    assert np.all(np.diff(np.diag(cov)) <= 1e-12)
    np.testing.assert_allclose(np.diag(cov), np.linalg.eigvalsh(np.cov(raw, rowvar=False))[::-1][:DIM], rtol=1e-8)
    # frequent pieces (early in the vocabulary) weigh less; special tokens do not take ranks
    assert weights[VOCAB.index("the")] < weights[VOCAB.index("topology")] < 1.0
    assert content_ranks(VOCAB)[VOCAB.index("the")] == 0


def test_a_prompt_is_the_normalized_sum_of_its_pieces(tmp_path) -> None:
    emb = tiny(tmp_path)
    texts = ["Tell me about cohomology?", "", "apples apples", "日本", "the sheaves"]
    got = emb.embed(texts)
    table = np.load(emb.table_path())
    tok = tiny_tokenizer()
    for text, row in zip(texts, got):
        ids = tok.encode(text, add_special_tokens=False).ids
        vec = table[ids].sum(axis=0) if ids else np.zeros(DIM)
        if np.linalg.norm(vec) < 1e-12:  # nothing known: the fixed unit vector
            vec = np.eye(DIM)[0]
        np.testing.assert_allclose(row, vec / np.linalg.norm(vec), rtol=1e-5, atol=1e-6)
    assert tok.encode("Tell me about cohomology?", add_special_tokens=False).tokens[-2:] == ["##homology", "?"]
    assert got.dtype == np.float32 and got.shape == (5, DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(emb.embed(texts[::-1]), got[::-1])  # batching does not mix rows
    for text, row in zip(texts, got):  # one text alone (the gateway's path) gets its batch row, bit for bit
        np.testing.assert_array_equal(emb.embed([text])[0], row)
    emb.chunk_size = 2  # chunked (long tables): the same rows, progress per chunk
    ticks: list[int] = []
    np.testing.assert_array_equal(emb.embed(texts, progress=ticks.append), got)
    assert ticks == [2, 2, 1]
    assert emb.embed([]).shape == (0, DIM)
    with pytest.raises(ValidationError):
        emb.embed("one string")  # type: ignore[arg-type]


def test_builds_are_identical_and_cached_atomically(tmp_path, capsys) -> None:
    a, b = tiny(tmp_path / "a"), tiny(tmp_path / "b")
    texts = ["explain galois theory please", "the cherries"]
    first = a.embed(texts)
    assert a.build_seconds is not None
    # the first use says on stderr that it builds the table (tens of seconds for MiniLM's 30,522 pieces)
    said = capsys.readouterr().err
    assert "building the static embedder's token table" in said and f"{len(VOCAB)}/{len(VOCAB)}" in said
    np.testing.assert_array_equal(first, b.embed(texts))
    np.testing.assert_array_equal(np.load(a.table_path()), np.load(b.table_path()))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [a.table_path().name]  # no temporary file left
    capsys.readouterr()
    again = tiny(tmp_path / "a")
    np.testing.assert_array_equal(again.embed(texts), first)
    assert again.build_seconds is None  # read from the cache, not rebuilt
    assert "building" not in capsys.readouterr().err  # and silently
    a.table_path().write_bytes(b"not a table")  # a damaged cache file is rebuilt, not trusted
    rebuilt = tiny(tmp_path / "a")
    np.testing.assert_array_equal(rebuilt.embed(texts), first)
    assert rebuilt.build_seconds is not None
    assert a.table_path() != tiny(tmp_path / "a", dim=4).table_path()  # the dim is in the file's name


def test_id_carries_the_version_through_a_router_file(tmp_path) -> None:
    emb = tiny(tmp_path / "cache")
    assert emb.id == static_id(DIM) == f"static-minilm-v1-{DIM}"
    rng = np.random.default_rng(0)
    easy, hard = ["apples", "bananas", "cherries"], ["topology", "sheaves", "homotopy", "galois theory"]
    queries, scores = [], []
    for _ in range(300):
        is_hard = rng.random() < 0.4
        queries.append(f"please explain {rng.choice(hard if is_hard else easy)}")
        scores.append([rng.random() < 0.9, rng.random() < (0.2 if is_hard else 0.9)])
    table = RoutingTable(queries, ["big", "small"], np.array(scores, float), np.tile([10.0, 1.0], (300, 1)))
    router = QueryRouter.fit(table, QueryRouterConfig(hidden_dims=(8,), epochs=5, folds=1), embedder=emb)
    router.save(tmp_path / "r")
    loaded = QueryRouter.load(tmp_path / "r")
    assert loaded.embedder_id == f"static-minilm-v1-{DIM}"
    with pytest.raises(ValidationError, match=rf"static-minilm-v1-{DIM}.*hashing-v1-8"):
        loaded.embedder = HashingEmbedder(8)
    loaded.embedder = tiny(tmp_path / "cache")
    assert loaded.route("please explain sheaves").model == router.route("please explain sheaves").model
    # the id maps back to the embedder (lazily: nothing is built until the first text)
    again = embedder_for_id(f"static-minilm-v1-{DIM}")
    assert isinstance(again, StaticEmbedder) and again.id == loaded.embedder_id
    with pytest.raises(ValidationError, match="v2"):
        embedder_for_id("static-minilm-v2-256")  # another recipe's table: refused, not silently rebuilt
    assert make_embedder("static").id == "static-minilm-v1-256"
    with pytest.raises(ValidationError, match="static-DIM"):
        make_embedder("static-wide")
