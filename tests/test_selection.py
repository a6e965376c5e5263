"""Cross-validated settings: the neighbour index, the linear head, the folds, and what a router ships."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinydancer.errors import ModelFileError, ValidationError
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.llm.linear_head import LinearHead
from tinydancer.llm.neighbours import NeighbourIndex, neighbour_means_by_k
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.prompt_features import FEATURES_ID
from tinydancer.llm.selection import _best, group_kfold, kfold
from tinydancer.llm.tables import RoutingTable

from test_query_router import multi_table, pair_table

EMBEDDER = HashingEmbedder(128)


def test_neighbour_index_equals_the_direct_computation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 16)).astype(np.float32)
    y = rng.random((900, 3)).astype(np.float32)
    y[rng.random((900, 3)) < 0.3] = np.nan  # missing outcomes, as in a partial table
    index = NeighbourIndex(x, depth=120)
    rows = np.sort(rng.choice(900, 300, replace=False))
    for ref in (np.sort(rng.choice(900, 600, replace=False)), rows, np.sort(rng.choice(900, 40, replace=False))):
        position = np.full(900, -1)
        position[ref] = np.arange(len(ref))
        ks = [1, 7, 30, 200]  # 200 is deeper than the index: computed directly
        got = index.means_by_k(rows, ref, y, ks)
        want = neighbour_means_by_k(x[rows], x[ref], y[ref], ks, exclude=position[rows])
        for k in ks:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6)


def test_linear_head_is_ridge_and_shrinks_towards_its_prior() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    y = np.column_stack([x @ [1.0, -2.0, 0.0, 0.5, 0.0] + 0.3, x[:, 0] * 0.1]) + rng.normal(0, 0.05, (200, 2))
    for head, alpha in zip(LinearHead.fit_path(x, y, [0.5, 50.0]), [0.5, 50.0]):
        xc = x - x.mean(axis=0)
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(5), xc.T @ (y - y.mean(axis=0)))
        np.testing.assert_allclose(head.weight, w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(head.bias, y.mean(axis=0) - x.mean(axis=0) @ w, rtol=1e-4, atol=1e-5)
    old = LinearHead(np.full((5, 2), 0.7, np.float32), np.zeros(2, np.float32), 1.0)
    stiff = LinearHead.fit(x, y, 1e6, prior=old)
    np.testing.assert_allclose(stiff.weight, old.weight, atol=1e-3)  # a huge penalty keeps the old weights
    loose = LinearHead.fit(x, y, 1e-6, prior=old)
    np.testing.assert_allclose(loose.weight, LinearHead.fit(x, y, 1e-6).weight, atol=1e-3)
    with pytest.raises(ValidationError, match="finite"):
        LinearHead.fit(x, np.where(y > 1, np.nan, y), 1.0)
    with pytest.raises(ModelFileError, match="needs"):
        LinearHead.from_tensors(old.to_tensors(), 1.0, input_dim=6, outputs=2)


def test_folds_partition_the_rows() -> None:
    folds = kfold(100, 3, seed=4)
    held = np.concatenate([h for _f, h in folds])
    assert sorted(held.tolist()) == list(range(100))
    for f, h in folds:
        assert not set(f) & set(h) and len(f) + len(h) == 100 and abs(len(h) - 33) <= 1


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=2, max_size=12), folds=st.integers(2, 6), seed=st.integers(0, 9))
def test_grouped_folds_partition_the_rows_and_never_split_a_group(sizes: list[int], folds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.repeat([f"table {i}" for i in range(len(sizes))], sizes))  # rows of a group interleaved
    if len(sizes) < folds:
        with pytest.raises(ValidationError, match="groups"):
            group_kfold(groups, folds, seed)
        return
    cut = group_kfold(groups, folds, seed)
    assert len(cut) == folds
    held = np.concatenate([h for _f, h in cut])
    assert sorted(held.tolist()) == list(range(len(groups)))  # every row held out exactly once
    for f, h in cut:
        assert len(h) > 0 and not set(f) & set(h) and len(f) + len(h) == len(groups)
        assert not set(groups[f]) & set(groups[h])  # a group is wholly held out or wholly trained on
    # the largest group never shares its fold while a fold is still empty (greedy, largest first)
    big = int(np.argmax(sizes))
    big_fold = next(h for _f, h in cut if f"table {big}" in set(groups[h]))
    if len(sizes) <= folds:
        assert set(groups[big_fold]) == {f"table {big}"}


def _source_table(sources: int = 6, per: int = 80, seed: int = 0) -> tuple[RoutingTable, np.ndarray]:
    """A pooled table whose embedding tells the sources apart and predicts the outcome only
    within a source it has seen (each source's own two directions carry the strong model's gain
    u), while the prompt's length carries u noisily in every source: what transfers."""
    rng = np.random.default_rng(seed)
    n = sources * per
    source = np.repeat(np.arange(sources), per)
    u = rng.random(n)
    x = np.zeros((n, 2 * sources), np.float32)
    x[np.arange(n), 2 * source] = u
    x[np.arange(n), 2 * source + 1] = np.sqrt(1 - u ** 2)
    words = np.clip(np.round(3 + 60 * u + rng.normal(0, 12, n)), 1, None).astype(int)
    queries = [" ".join(["word"] * int(w)) + f" q{i}" for i, w in enumerate(words)]
    scores = np.column_stack([0.5 + 0.45 * u, 0.5 + 0.225 * (1 - u)]).astype(np.float32)
    return RoutingTable(queries, ["strong", "weak"], scores, np.tile([10.0, 1.0], (n, 1)), embeddings=x), source


def test_grouped_folds_choose_the_input_that_carries_to_a_new_source() -> None:
    table, source = _source_table()
    cfg = QueryRouterConfig(memory=False, feature_sets=("none", FEATURES_ID), network_weights=(0.0,), hidden_dims=(4,),
                            epochs=3, neighbours=0, ridge_alphas=(1.0,), workers=1)
    by_rows = QueryRouter.fit(table, cfg)
    by_source = QueryRouter.fit(table, cfg, groups=[f"source {s}" for s in source])
    # random folds share every source with their training rows: the embedding alone routes them
    # (near) perfectly, and the features' noisy length adds nothing the folds agree on
    assert by_rows.info["features"]["chosen"] == "none"
    assert by_rows.info["selection"]["folds_by"] == "random rows"
    # folds that hold out whole sources see the embedding fail on a source it never trained on,
    # and the length (in the prompt features) carry: the features win
    picked = by_source.info["features"]
    assert picked["chosen"] == FEATURES_ID
    assert np.mean(picked["fold_aiq"][FEATURES_ID]) > np.mean(picked["fold_aiq"]["none"]) + 0.02
    assert by_source.info["selection"]["folds_by"] == "group (6 groups held out whole)"
    with pytest.raises(ValidationError, match="one label per query"):
        QueryRouter.fit(table, cfg, groups=source[:-1])
    with pytest.raises(ValidationError, match="at least as many"):
        QueryRouter.fit(table, cfg, groups=source % 2)


def test_the_default_wins_unless_the_folds_agree_on_another() -> None:
    noisy = {"default": [0.50, 0.60, 0.55], "other": [0.52, 0.58, 0.56]}  # +0.003 on average, folds disagree
    assert _best(noisy) == "other" and _best(noisy, prefer_first=True) == "default"
    clear = {"default": [0.50, 0.60, 0.55], "other": [0.52, 0.62, 0.57]}  # +0.02 on every fold
    assert _best(clear, prefer_first=True) == "other"


def test_a_blended_router_routes_by_the_blend_and_keeps_it_in_its_file(tmp_path) -> None:
    config = QueryRouterConfig(hidden_dims=(8,), epochs=10, network_weights=(0.5,))
    router = QueryRouter.fit(multi_table(400, 0), config, embedder=EMBEDDER)
    assert router.head is not None and router.network_weight == 0.5
    assert router.info["selection"]["chosen"]["network_weight"] == 0.5
    emb = EMBEDDER.embed(multi_table(30, 1).queries)
    blend = 0.5 * router.model.predict(emb) + 0.5 * router.head.predict(emb)
    np.testing.assert_allclose(router.estimate(emb), blend, rtol=1e-6)
    np.testing.assert_allclose(router.outputs_for(emb[0]), blend[0], rtol=1e-6)
    router.save(tmp_path / "r")
    loaded = QueryRouter.load(tmp_path / "r")
    assert loaded.network_weight == 0.5 and loaded.head is not None
    np.testing.assert_array_equal(loaded.estimate(emb), router.estimate(emb))
    # fine-tuning keeps the blend; the head moves with the new outcomes but stays near the old one
    tuned = QueryRouter.fit(multi_table(200, 2), QueryRouterConfig(epochs=3), embedder=EMBEDDER, init=router)
    assert tuned.network_weight == 0.5 and tuned.head is not None
    assert not np.array_equal(tuned.head.weight, router.head.weight)
    assert np.abs(tuned.head.weight - router.head.weight).max() < np.abs(router.head.weight).max()


def test_the_network_alone_ships_no_head() -> None:
    config = QueryRouterConfig(hidden_dims=(8,), epochs=5, network_weights=(1.0,), folds=2)
    router = QueryRouter.fit(pair_table(300, 0), config, embedder=EMBEDDER)
    assert router.head is None and router.network_weight == 1.0
    assert "ridge_alpha" not in router.info["selection"]["candidates"]  # no head to choose for


def test_a_router_trained_on_one_slice_fine_tunes_twice() -> None:
    once = QueryRouter.fit(pair_table(300, 0), QueryRouterConfig(hidden_dims=(8, 4), epochs=4, folds=1), embedder=EMBEDDER)
    assert "selection" not in once.info and once.info["validation_metric"] == "aiq (early-stopping slice)"
    twice = QueryRouter.fit(pair_table(100, 1), QueryRouterConfig(epochs=2), embedder=EMBEDDER, init=once)
    thrice = QueryRouter.fit(pair_table(100, 2), QueryRouterConfig(epochs=2), embedder=EMBEDDER, init=twice)
    assert thrice.model.config.hidden_dim == once.model.config.hidden_dim and thrice.head is None


FORKED_VS_SERIAL = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_query_router import pair_table
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
emb = HashingEmbedder(128)
base = dict(hidden_dims=(4, 8), epochs=4, network_weights=(1.0, 0.5))
serial = QueryRouter.fit(pair_table(400, 3), QueryRouterConfig(**base, workers=1), embedder=emb)
forked = QueryRouter.fit(pair_table(400, 3), QueryRouterConfig(**base, workers=2), embedder=emb)
probe = emb.embed(pair_table(50, 4).queries)
print(json.dumps({"workers": [serial.info["selection"]["workers"], forked.info["selection"]["workers"]],
                  "same_scores": serial.info["selection"]["candidates"] == forked.info["selection"]["candidates"],
                  "same_router": bool(np.array_equal(serial.estimate(probe), forked.estimate(probe)))}))
"""


def test_fold_networks_in_worker_processes_equal_the_serial_ones() -> None:
    """Run in a fresh interpreter: folds fork only from a process with no other thread, and a
    test process may hold a server's threads."""
    out = subprocess.run([sys.executable, "-c", FORKED_VS_SERIAL, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"workers": [1, 2], "same_scores": True, "same_router": True}


KILLED_WORKER = """
import multiprocessing, os, signal, sys
sys.path.insert(0, sys.argv[1])
from test_query_router import pair_table
from tinydancer.errors import TinyDancerError
from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig

def say(message):
    if "trained" in message:  # the first network is back; at least four have not run: kill the pool's processes
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

try:
    QueryRouter.fit(pair_table(400, 3), QueryRouterConfig(hidden_dims=(4, 8), epochs=4, workers=2),
                    embedder=HashingEmbedder(128), progress=say)
except TinyDancerError as exc:
    print(exc)
"""


def test_a_killed_fold_worker_says_how_to_train_serially() -> None:
    """A worker killed mid-search (as the kernel's out-of-memory killer would) ends the fit with a
    message that names the way out, not concurrent.futures' BrokenProcessPool."""
    out = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "died" in out.stdout and "workers=1" in out.stdout and "--workers 1" in out.stdout


def test_bad_search_settings_and_small_tables_are_refused() -> None:
    for bad, field in (({"network_weights": (1.5,)}, "network_weights"), ({"folds": 0}, "folds"),
                       ({"neighbour_candidates": ()}, "neighbour_candidates"), ({"ridge_alphas": (0.0,)}, "ridge_alphas"),
                       ({"workers": 0}, "workers")):
        with pytest.raises(ValidationError, match=field):
            QueryRouterConfig(**bad)
    with pytest.raises(ValidationError, match="fewer folds"):
        QueryRouter.fit(pair_table(50, 0), QueryRouterConfig(folds=3), embedder=EMBEDDER)
