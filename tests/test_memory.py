"""Outcome memory: verbatim repeats of a training query get its own observed outcomes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from tinydancer.llm.embeddings import HashingEmbedder
from tinydancer.errors import ModelFileError, ValidationError
from tinydancer.llm.memory import OutcomeMemory, query_key, query_keys
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.tables import RoutingTable

EMBEDDER = HashingEmbedder(64)


def test_keys_ignore_spacing_and_unicode_form_but_not_case_or_words() -> None:
    assert query_key("what is  2+2?\n") == query_key(" what is 2+2?")
    assert query_key("caf\u00e9") == query_key("cafe\u0301")  # NFC: é precomposed vs e + combining accent
    assert query_key("What is 2+2?") != query_key("what is 2+2?")
    assert query_key("what is 2+2?") != query_key("what is 2+3?")
    assert query_keys(["a", "b"]).dtype == np.uint64


def test_repeats_add_up_and_blend_is_the_posterior_mean() -> None:
    mem = OutcomeMemory.build(["q1", "q2", "q1 "], np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), prior_weight=1.0)
    assert len(mem) == 2 and mem.width == 2
    net = np.array([[0.5, 0.5], [0.2, 0.4], [0.3, 0.3]], dtype=np.float32)
    before = net.copy()
    out, hit = mem.blend(["q1", "unknown", "q2"], net)
    assert hit.tolist() == [True, False, True]
    # q1: (1·[.5,.5] + [2,1]) / 3;  q2: (1·[.3,.3] + [0,0]) / 2;  unknown untouched
    np.testing.assert_allclose(out, [[2.5 / 3, 1.5 / 3], [0.2, 0.4], [0.15, 0.15]], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(net, before)  # the input is not modified
    more = mem.merged(["q2"], np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(more.blend(["q2"], net[2:])[0], [[(0.3 + 1) / 3, (0.3 + 1) / 3]], rtol=1e-6)
    assert len(more) == 2 and len(mem) == 2  # merged() returns a new memory


def test_rows_without_text_are_neither_remembered_nor_looked_up() -> None:
    mem = OutcomeMemory.build(["", "  ", "q"], np.array([[1.0], [1.0], [0.0]]))
    assert len(mem) == 1
    out, hit = mem.blend(["", "q"], np.array([[0.5], [0.5]], dtype=np.float32))
    assert hit.tolist() == [False, True] and out[0, 0] == 0.5


def test_feedback_observes_one_output_at_a_time() -> None:
    """Feedback says how the model that answered did; the other outputs keep the network's value."""
    mem = OutcomeMemory.build(["q"], np.array([[1.0, 1.0, 0.5]]))
    # two pieces of feedback on model 0 (failed twice), one row that observed nothing (ignored, NaN and all)
    more = mem.merged(["q", "q", "new"], np.array([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0], [np.nan, np.nan, np.nan]]),
                      observed=np.array([[True, False, False], [True, False, False], [False, False, False]]))
    assert len(more) == 1
    np.testing.assert_array_equal(more.counts, [[3.0, 1.0, 1.0]])
    net = np.array([[0.6, 0.6, 0.6]], dtype=np.float32)
    np.testing.assert_allclose(more.blend(["q"], net)[0], [[(0.6 + 1) / 4, (0.6 + 1) / 2, (0.6 + 0.5) / 2]], rtol=1e-6)
    only = OutcomeMemory.empty(3).merged(["fresh"], np.array([[0.0, 0.0, 0.0]]), observed=np.array([[False, True, False]]))
    np.testing.assert_allclose(only.blend(["fresh"], net)[0], [[0.6, 0.3, 0.6]], rtol=1e-6)
    with pytest.raises(ValidationError, match="mask"):
        mem.merged(["q"], np.zeros((1, 3)), observed=np.ones((1, 2), bool))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20), st.floats(0, 1), st.floats(0.05, 20))
def test_blend_lies_between_the_network_and_the_observed_mean(observed: list[float], net: float, prior: float) -> None:
    mem = OutcomeMemory.build(["same"] * len(observed), np.array(observed)[:, None], prior_weight=prior)
    value = float(mem.blend(["same"], np.array([[net]]))[0][0, 0])
    mean = float(np.mean(observed))
    assert min(net, mean) - 1e-9 <= value <= max(net, mean) + 1e-9
    # the more observations, the closer to what was observed
    assert abs(value - mean) <= abs(net - mean) * prior / (prior + len(observed)) + 1e-9


def test_bad_inputs_are_refused() -> None:
    mem = OutcomeMemory.build(["a"], np.array([[1.0, 0.0]]))
    with pytest.raises(ValidationError, match="2 outputs"):
        mem.merged(["b"], np.array([[1.0, 0.0, 1.0]]))
    with pytest.raises(ValidationError, match="2 outputs"):
        mem.blend(["a"], np.zeros((1, 3), np.float32))
    with pytest.raises(ValidationError, match="non-finite"):
        OutcomeMemory.build(["a"], np.array([[np.nan]]))
    with pytest.raises(ValidationError, match="2 queries"):
        OutcomeMemory.build(["a", "b"], np.array([[1.0]]))
    with pytest.raises(ValidationError, match="prior_weight"):
        OutcomeMemory.build(["a"], np.array([[1.0]]), prior_weight=0.0)
    with pytest.raises(ValidationError, match="sorted"):
        OutcomeMemory(np.array([5, 3], np.uint64), np.zeros((2, 1)), np.ones((2, 1)))
    with pytest.raises(ValidationError, match="at least one observation"):
        OutcomeMemory(np.array([3, 5], np.uint64), np.zeros((2, 1)), np.array([[1.0], [0.0]]))
    with pytest.raises(ValidationError, match="incomplete"):
        OutcomeMemory.from_tensors({"memory.keys": mem.keys}, 1.0)
    assert OutcomeMemory.from_tensors({}, 1.0) is None


def contradicting_table(n: int = 400) -> RoutingTable:
    """'cheap' answers every query right except three the memory must remember it fails."""
    queries = [f"tell me about fruit number {i}" for i in range(n)]
    scores = np.tile([1.0, 1.0], (n, 1))
    scores[:3, 0] = 0.0  # these three: only 'dear' was right
    return RoutingTable(queries, ["cheap", "dear"], scores, np.tile([1.0, 5.0], (n, 1)))


@pytest.fixture(scope="module")
def routers() -> tuple[QueryRouter, QueryRouter]:
    table = contradicting_table()
    cfg = dict(hidden_dims=(8,), epochs=10)
    return (QueryRouter.fit(table, QueryRouterConfig(**cfg), embedder=EMBEDDER),
            QueryRouter.fit(table, QueryRouterConfig(**cfg, memory=False), embedder=EMBEDDER))


def test_a_router_remembers_what_happened_to_a_query_it_has_seen(routers, tmp_path) -> None:
    with_memory, without = routers
    assert with_memory.info["memory_entries"] == 400 and without.memory is None
    seen, other = "tell me about fruit number 1", "tell me about fruit number 1000"
    # the network alone predicts 'cheap' does fine on both; the memory knows 'cheap' failed on 'seen'
    net_seen = with_memory.estimate(EMBEDDER.embed([seen]))[0]
    assert with_memory.predict(seen)[0][0] < net_seen[0]
    np.testing.assert_allclose(with_memory.predict(seen)[0][0], net_seen[0] / 2, rtol=1e-5)  # (1·net + 0) / 2
    np.testing.assert_array_equal(with_memory.predict(other), with_memory.estimate(EMBEDDER.embed([other])))
    np.testing.assert_array_equal(without.predict(seen), without.estimate(EMBEDDER.embed([seen])))
    # an embedding carries no text, so it gets the network's output alone
    np.testing.assert_array_equal(with_memory.predict(EMBEDDER.embed([seen])), net_seen[None, :])
    # the memory changes the strong-call ranking: the three failures rank above every other query
    table = contradicting_table()
    scores = with_memory.predict(table.queries)[:, 2]
    assert scores[:3].min() > scores[3:].max()
    result = with_memory.evaluate(table)
    assert result["remembered"] == 400 and without.evaluate(table)["remembered"] == 0
    assert result["apgr"] > without.evaluate(table)["apgr"]
    # saved and loaded, the memory and its decisions survive
    with_memory.save(tmp_path / "r")
    loaded = QueryRouter.load(tmp_path / "r")
    assert len(loaded.memory) == 400 and loaded.memory.prior_weight == 1.0
    np.testing.assert_array_equal(loaded.predict(table.queries), with_memory.predict(table.queries))
    assert not any(k.startswith("memory.") for k in loaded.model.aux_tensors)
    without.save(tmp_path / "plain")
    assert QueryRouter.load(tmp_path / "plain").memory is None


def test_a_damaged_memory_in_a_router_file_is_reported(routers, tmp_path) -> None:
    routers[0].save(tmp_path / "r")
    file = tmp_path / "r" / "router.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), framework="np") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(file))
    tensors["aux.memory.keys"] = tensors["aux.memory.keys"][::-1].copy()  # unsorted
    save_file(tensors, str(file), metadata=metadata)
    with pytest.raises(ModelFileError, match="sorted"):
        QueryRouter.load(tmp_path / "r")
    tensors["aux.memory.keys"] = tensors["aux.memory.keys"].astype(np.int64)  # a signed type is not a key
    save_file(tensors, str(file), metadata=metadata)
    with pytest.raises(ModelFileError, match="unsigned|uint64"):
        QueryRouter.load(tmp_path / "r")


def test_the_service_applies_the_memory_to_text_queries(routers, tmp_path) -> None:
    from fastapi.testclient import TestClient
    from test_service import MODEL

    from tinydancer.server import ServiceSettings, create_app

    with_memory = routers[0]
    with_memory.save(tmp_path / "qr")
    seen = "tell me about fruit number 2"
    app = create_app(ServiceSettings(model_path=MODEL, database_path=tmp_path / "t.db", query_router_path=tmp_path / "qr",
                                     watch_interval_s=0))
    with TestClient(app) as c:
        by_text = c.post("/v1/route/query", json={"query": seen}).json()
        by_embedding = c.post("/v1/route/query", json={"embedding": EMBEDDER.embed([seen])[0].tolist()}).json()
    expected = with_memory.route(seen)
    assert by_text["strong_score"] == pytest.approx(expected.strong_score, rel=1e-6)
    assert by_text["predicted_quality"] == pytest.approx(expected.predicted_quality, rel=1e-6)
    # the embedding alone carries no text: the network's output, which the memory raised
    assert by_embedding["strong_score"] < by_text["strong_score"]
    assert with_memory.route(EMBEDDER.embed([seen])[0], text=seen) == expected


def test_a_correction_moves_an_observation_without_counting_it_again() -> None:
    memory = OutcomeMemory.empty(2).merged(["q1", "q2"], np.array([[0.0, 1.0], [1.0, 0.0]]),
                                           observed=np.array([[True, False], [True, True]]))
    keys = query_keys(["q1", "q2", "never seen"])
    changes = np.array([[1.0, 5.0], [-1.0, 0.0], [1.0, 1.0]])
    corrected, applied = memory.corrected_keys(keys, changes, np.ones((3, 2), dtype=bool))
    assert applied.tolist() == [True, True, False]  # an unseen query has nothing to correct
    np.testing.assert_array_equal(corrected.counts, memory.counts)
    rows = corrected.find(keys[:2])
    # q1's second output was never observed: its sum stays 0 whatever the change says
    np.testing.assert_allclose(corrected.sums[rows], [[1.0, 0.0], [0.0, 0.0]])
    empty, none = OutcomeMemory.empty(2).corrected_keys(keys, changes, np.ones((3, 2), dtype=bool))
    assert len(empty) == 0 and not none.any()
