"""Prompt features beside the embedding (issue 30, item 2): what they read, that cross-validation
keeps them where they carry the signal, and that a router refuses inputs it was not trained with."""

from __future__ import annotations

from pathlib import Path

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinydancer.errors import ValidationError
from tinydancer.llm import QueryRouter, QueryRouterConfig, RoutingTable
from tinydancer.llm.embeddings import HashingEmbedder, embedder_for_id
from tinydancer.llm import prompt_features as pf
from tinydancer.llm.prompt_features import FEATURE_NAMES, FEATURES_ID, FeaturedEmbedder, prompt_features
from tinydancer.llm.public_tables import held_out_units
from tinydancer.llm.tables import shared_data_dir

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


def plain_features(text: str) -> list[float]:
    """The features as first written (issue 30): every pattern's findall, no shortcut.  The shipped
    ``_one`` skips a pattern when a cheaper test shows it cannot match; its values must equal these."""
    scaled = lambda count, cap: min(1.0, math.log1p(count) / math.log1p(cap))  # noqa: E731
    head = text[:pf.SCAN_CHARS]
    words = len(text.split()) if len(text) <= 4 * pf.SCAN_CHARS else len(text) // 6
    non_latin = 0.0 if head.isascii() else len(pf._NON_LATIN.findall(head)) / (len(pf._LETTER.findall(head)) or 1)
    low = head.lower()
    return [scaled(words, 1000), scaled(len(pf._CODE.findall(head)), 10), scaled(len(pf._MATH.findall(head)), 10),
            scaled(len(pf._NUMBER.findall(head)), 20),
            1.0 if head.rstrip().endswith("?") or pf._QUESTION_START.match(low) else 0.0,
            1.0 if pf._TASK_START.match(low) else 0.0, scaled(len(pf._STEPS.findall(low)), 20),
            1.0 if len(pf._CHOICES.findall(head)) >= 2 else 0.0, scaled(len(pf._REASONING.findall(low)), 5), non_latin,
            scaled(head.count("\n"), 50)]


#: pieces that sit on the patterns' edges: keywords at and off line starts, notation, list markers,
#: options, word boundaries, non-Latin letters and white space the patterns' \s matches
_PIECES = ["def", "class", "import", "from", "#include", "fn", "let", "var", "function", "define", "undefined", "()",
           "f()", "{", "}", ";", "=>", "::", "```", "$x$", "$", "\\frac", "\\le", "x^2", " ^ 3", "3 + 4", "2*5", "1<2",
           "π", "∑", "must", "At least", "at most", "no more than", "steps", "step-by-step", "Step by step", "first",
           "then", "also", "each", "everything", "include", "proof", "Prove", "why", "optimise", "optimize",
           "algorithms", "lemma", "reasoning", "A.", "B)", "(C)", "D:", "- ", "* ", "• ", "1.", "2)", "a.", "b)",
           "\n", "\n\n", " ", "  ", "\t", "\r", "\u2003", "\x0b", "x", "é", "Жизнь", "中文", "?", "What", "write",
           "1,5", "3.14", "_", "9"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.text(alphabet="ab1 .;:()^$\\{}\n\t-*=<>?A", max_size=4), max_size=60))
# each shortcut's edge, alone: a power, a keyword line with no symbol, a list marker with no step word
@example(["x^2"])
@example(["Solve a ^ 3"])
@example(["\n", "  ", "def", " f(x):\n    return x"])
@example(["- ", "apples\n", "2) ", "pears"])
@example(["Step by step, why?"])
def test_the_shortcuts_leave_every_value_as_the_patterns_give_it(pieces: list[str]) -> None:
    text = "".join(pieces) or "x"
    assert prompt_features([text])[0].tolist() == np.asarray(plain_features(text), dtype=np.float32).tolist()


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data is not present")
def test_the_shortcuts_leave_every_public_prompts_values_as_they_were() -> None:
    units, other = held_out_units(shared_data_dir())
    texts = [q for t in [*units.values(), other] for q in t.queries]
    texts.append(texts[0] * 20)  # past SCAN_CHARS and its word-count shortcut
    want = np.asarray([plain_features(t) for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(prompt_features(texts), want)


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
