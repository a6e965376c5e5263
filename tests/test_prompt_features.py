"""Prompt features beside the embedding (issue 30, item 2): what they read, that cross-validation
keeps them where they carry the signal, and that a router refuses inputs it was not trained with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinydancer.errors import ValidationError
from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.llm.embeddings import HashingEmbedder, embedder_for_id
from tinydancer.llm.prompt_features import FEATURE_NAMES, FEATURES_ID, FeaturedEmbedder, prompt_features

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def test_each_feature_reads_what_it_names() -> None:
    texts = ["Thanks!", "What is 2+2?", "Prove that there are infinitely many primes.",
             "```python\ndef f(x):\n    return {x: 1};\n```", "Which is right?\nA. one\nB. two\nC. three",
             "Что такое жизнь?", "Write a sorter. It must be stable, use at most O(n) memory, and handle empty input."]
    f = prompt_features(texts)
    assert f.shape == (len(texts), len(FEATURE_NAMES)) and f.dtype == np.float32
    assert (f >= 0).all() and (f <= 1).all()
    assert f[1, COL["math notation"]] > 0 and f[0, COL["math notation"]] == 0
    assert f[3, COL["code notation"]] > 0 and f[2, COL["code notation"]] == 0
    assert f[1, COL["question form"]] == 1 and f[2, COL["question form"]] == 0
    assert f[2, COL["task form"]] == 1 and f[2, COL["reasoning words"]] > 0
    assert f[4, COL["multiple choice"]] == 1 and f[1, COL["multiple choice"]] == 0
    assert f[5, COL["non-Latin script share"]] == 1 and f[1, COL["non-Latin script share"]] == 0
    assert f[6, COL["steps and constraints (log count)"]] > f[0, COL["steps and constraints (log count)"]]
    assert f[6, COL["length (log words)"]] > f[0, COL["length (log words)"]]


def notation_table(n: int, seed: int) -> RoutingTable:
    """The weak model fails on arithmetic written as notation ("3 + 4 * 5"), not on the same
    numbers in a list ("3, 4, 5"): a word-hashing embedder cannot see the difference (it drops
    punctuation), the math-notation feature can."""
    rng = np.random.default_rng(seed)
    queries, scores = [], []
    for i in range(n):
        a, b, c = rng.integers(1, 99, 3)
        hard = rng.random() < 0.5
        queries.append(f"item {i}: {a} + {b} * {c}" if hard else f"item {i}: {a}, {b}, {c}")
        scores.append([rng.random() < 0.9, rng.random() < (0.1 if hard else 0.9)])
    return RoutingTable(queries, ["big", "small"], np.array(scores, float), np.tile([10.0, 1.0], (n, 1)))


def test_cross_validation_keeps_the_features_where_they_carry_the_signal_and_the_file_records_them(tmp_path: Path) -> None:
    emb = HashingEmbedder(64)
    config = QueryRouterConfig(hidden_dims=(8,), epochs=15, memory=False, network_weights=(1.0, 0.0),
                               neighbour_candidates=(10, 50), feature_sets=("none", FEATURES_ID))
    router = QueryRouter.fit(notation_table(600, 0), config, embedder=emb)
    assert router.info["features"]["chosen"] == FEATURES_ID
    folds = router.info["features"]["fold_aiq"]
    assert np.mean(folds[FEATURES_ID]) > np.mean(folds["none"])  # same folds, the features win
    assert router.embedder_id == f"{emb.id}+{FEATURES_ID}"
    test = notation_table(200, 1)
    hard = np.array(["+" in q for q in test.queries])
    scores = router.strong_scores(test.queries)
    assert scores[hard].mean() > scores[~hard].mean() + 0.1  # it routes on the notation

    loaded = QueryRouter.load(router.save(tmp_path))
    assert loaded.embedder_id == router.embedder_id and isinstance(loaded.embedder, FeaturedEmbedder)
    np.testing.assert_allclose(loaded.strong_scores(test.queries), scores, atol=1e-5)
    with pytest.raises(ValidationError) as plain:
        loaded.embedder = emb  # the embedder alone, without the features it was trained with
    assert "hashing-v1-64" in str(plain.value) and FEATURES_ID in str(plain.value) and "without prompt features" in str(plain.value)
    with pytest.raises(ValidationError, match=f"75 values .'hashing-v1-64' embeddings with prompt features '{FEATURES_ID}'.*got 64"):
        loaded.route(emb.embed(["item 1: 2 + 3 * 4"])[0])  # a bare embedding has the wrong width


def test_a_router_without_features_refuses_featured_vectors_and_unknown_feature_versions_are_refused() -> None:
    emb = HashingEmbedder(64)
    router = QueryRouter.fit(notation_table(300, 2), QueryRouterConfig(hidden_dims=(8,), epochs=5, memory=False,
                                                                      network_weights=(1.0,)), embedder=emb)
    assert router.embedder_id == emb.id and "features" not in router.info  # one candidate: nothing chosen
    with pytest.raises(ValidationError) as featured:
        router.embedder = FeaturedEmbedder(emb)
    assert "without prompt features" in str(featured.value) and FEATURES_ID in str(featured.value)
    assert isinstance(embedder_for_id(f"{emb.id}+{FEATURES_ID}"), FeaturedEmbedder)
    with pytest.raises(ValidationError, match="prompt-features-v0.*retrain"):
        embedder_for_id(f"{emb.id}+prompt-features-v0")
    with pytest.raises(ValidationError, match="feature_sets"):
        QueryRouterConfig(feature_sets=("length",))


def test_the_packaged_router_is_small_names_its_inputs_and_its_data() -> None:
    """The file the gateway ships: ≤ 200 KB, models strong/weak, its embedder and feature set in
    its id, the features' cross-validation on file, and every public table in its training note."""
    from tinydancer.gateway import default_router_path
    from tinydancer.llm.router_file import ROUTER_FILE

    path = default_router_path() / ROUTER_FILE
    assert path.stat().st_size <= 200_000
    router = QueryRouter.load(path)
    assert router.models == ["strong", "weak"] and router.memory is None
    assert router.embedder_id == f"static-minilm-v1-256+{FEATURES_ID}"
    chosen = router.info["features"]
    assert chosen["chosen"] == FEATURES_ID and set(chosen["fold_aiq"]) == {"none", FEATURES_ID}
    for table in ("MMLU", "GSM8K", "MT-bench", "LLMRouter", "AlpacaEval"):
        assert table in router.info["trained_on"]
