"""Pruning, the paper's sparse training, int8 quantization and size accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinydancer import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, TrainingDataset, ValidationError
from tinydancer.nn.compression import dequantize_tensor, model_size_bytes, quantize_tensor, top_k_mask
from tinydancer.nn.sparse import IterativeHardThresholding
from tinydancer.synthetic import seed_example_data


def _data(n: int = 600, seed: int = 0) -> TrainingDataset:
    x, y = seed_example_data(n, seed=seed)
    ds = TrainingDataset(x, y)
    ds.normalize()
    return ds


def _accuracy(model: FastGRNN, n: int = 10000) -> float:
    x, y = seed_example_data(n, seed=777)
    return float(((model.predict(x)[:, 0] >= 0.5) == (y >= 0.5)).mean())


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("rank", [None, 4])
def test_pruning_keeps_exactly_the_requested_fraction(sparsity: float, rank: int | None) -> None:
    model = FastGRNN(FastGRNNConfig(input_dim=5, hidden_dim=16, rank=rank), seed=0)
    before = {k: np.array(v) for k, v in model.params.items()}
    model.prune(sparsity)
    for name in ("W", "U", "W1", "W2", "U1", "U2"):
        if name not in model.params:
            continue
        w = model.params[name]
        kept = int(np.count_nonzero(w))
        assert kept == round(w.size * (1 - sparsity)), name
        # the kept entries are the largest in magnitude, unchanged
        threshold = np.sort(np.abs(before[name]).ravel())[::-1][kept - 1] if kept else np.inf
        assert np.all(np.abs(w[w != 0]) >= threshold)
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])
    for name in ("b_z", "b_h", "fc_w", "fc_b", "zeta", "nu"):
        np.testing.assert_array_equal(model.params[name], before[name])


def test_pruning_rejects_impossible_sparsity() -> None:
    for bad in (-0.1, 1.0, 2, "half"):
        with pytest.raises(ValidationError):
            FastGRNN().prune(bad)


def test_masks_hold_after_fine_tuning() -> None:
    model = FastGRNN(FastGRNNConfig(rank=4), seed=0)
    ds = _data()
    Trainer(None, TrainingConfig(epochs=5, learning_rate=0.01)).train(model, ds)
    masks = {k: v.copy() for k, v in model.prune(0.6).masks.items()}
    Trainer(None, TrainingConfig(epochs=10, learning_rate=0.01)).train(model, ds)
    for name, mask in masks.items():
        w = model.params[name]
        assert np.all(w[~mask] == 0), f"{name}: pruned weights came back"
        assert np.count_nonzero(w[mask]) == mask.sum(), f"{name}: kept weights should still train"


@settings(max_examples=80, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 20)), elements=st.floats(-100, 100, width=32)))
def test_quantization_error_is_at_most_half_a_step(values: np.ndarray) -> None:
    q, scale = quantize_tensor(values)
    assert q.dtype == np.int8 and scale > 0
    err = np.abs(dequantize_tensor(q, scale) - values)
    assert np.all(err <= scale / 2 * (1 + 1e-5) + 1e-7)


def test_quantized_model_stays_close_to_float_and_round_trips(tmp_path) -> None:
    model = FastGRNN(FastGRNNConfig(rank=8), seed=0)
    Trainer(None, TrainingConfig(epochs=20, learning_rate=0.01)).train(model, _data())
    x = np.random.default_rng(0).normal(size=(2000, 5)).astype(np.float32)
    fp = model.forward(x)
    float_acc = _accuracy(model)
    q = model.copy().quantize()
    # stated tolerance: int8 weights move a probability by at most 0.02 on normalized inputs
    assert np.max(np.abs(q.forward(x) - fp)) < 0.02
    assert abs(_accuracy(q) - float_acc) <= 0.01
    path = q.save(tmp_path / "q.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        assert fh.get_tensor("int8.W1").dtype == np.int8
        assert "W1" not in list(fh.keys())
    loaded = FastGRNN.load(path)
    assert loaded.quantized is not None
    np.testing.assert_array_equal(loaded.forward(x), q.forward(x))
    assert loaded.size_bytes() == q.size_bytes() <= 1024


def test_edgeml_size_accounting() -> None:
    config = FastGRNNConfig(input_dim=5, hidden_dim=16, rank=8)
    model = FastGRNN(config, seed=0)
    # W1 16x8, W2 8x5, U1 16x8, U2 8x16 dense at 4 bytes; biases 2x16, zeta, nu, FC 16, fc_b 1
    dense = (128 + 40 + 128 + 128) * 4 + (32 + 2 + 1) * 4 + 16 * 4
    assert model_size_bytes(model) == dense
    model.prune(0.8)  # kept fraction 0.2 < 0.5: sparse, value + index each
    sparse = sum(math.ceil(round(n * 0.2)) * 8 for n in (128, 40, 128, 128)) + (32 + 2 + 1) * 4 + 16 * 4
    assert model_size_bytes(model) == sparse
    model.quantize()
    assert model_size_bytes(model) == sum(round(n * 0.2) * 2 for n in (128, 40, 128, 128)) + 35 * 4 + 16 + 4 * 5


def test_prune_keeps_a_quantized_model_quantized() -> None:
    model = FastGRNN(FastGRNNConfig(), seed=0).quantize()
    model.prune(0.5)
    assert model.quantized is not None
    q, scale = model.quantized["W"]
    np.testing.assert_allclose(model.params["W"], q * scale, rtol=1e-6)
    assert np.count_nonzero(q) == 40


def test_three_stage_sparse_training_reaches_the_targets_and_stays_accurate() -> None:
    ds = _data(1000, seed=1)
    config = FastGRNNConfig(rank=8)
    model = FastGRNN(config, seed=0)
    trainer = Trainer(config, TrainingConfig(epochs=30, learning_rate=0.01, w_sparsity=0.5, u_sparsity=0.75, iht_every=15))
    metrics = trainer.train(model, ds)
    assert [m.epoch for m in metrics] == list(range(len(metrics)))
    for name, target in (("W1", 0.5), ("W2", 0.5), ("U1", 0.75), ("U2", 0.75)):
        w = model.params[name]
        assert np.count_nonzero(w) == round(w.size * (1 - target)), name
        assert model.masks is not None and np.array_equal(model.masks[name], w != 0)
    assert model.training_summary["sparse_training"]["stage_epochs"] == [10, 10, 10]
    assert _accuracy(model) > 0.88


def test_iht_support_can_change_and_regrow() -> None:
    """With the dense shadow, a weight pruned at one threshold can return at a later one."""
    model = FastGRNN(FastGRNNConfig(input_dim=3, hidden_dim=4), seed=0)
    iht = IterativeHardThresholding({"W": 0.5}, every=1)
    iht.start(model)
    pruned = ~iht.support["W"]
    # pretend the optimizer pushed the pruned entries hard and shrank the kept ones
    w = model.unflatten(model.flat)["W"]
    w[pruned] -= 5.0
    w[~pruned] *= 0.01
    iht(model, step=1, epoch=0)
    assert np.array_equal(iht.support["W"], pruned)  # the support flipped to the grown entries
    assert iht.support_changes == model.params["W"].size


def test_top_k_mask_ties_are_deterministic() -> None:
    m = top_k_mask(np.ones((2, 3)), 2)
    assert m.tolist() == [[True, True, False], [False, False, False]]


@pytest.mark.parametrize("quantize", [False, True])
def test_sparse_models_round_trip_and_their_files_shrink(tmp_path, quantize: bool) -> None:
    config = FastGRNNConfig(input_dim=64, hidden_dim=32)
    dense = FastGRNN(config, seed=0)
    sparse = dense.copy().prune(0.8)
    if quantize:
        dense.quantize()
        sparse.quantize()
    dense_bytes = dense.save(tmp_path / "d.safetensors").stat().st_size
    path = sparse.save(tmp_path / "s.safetensors")
    # fp32: 4-byte value + 2-byte index for 20 % of entries; int8: 1 + 2 bytes, so ~0.6 of the payload
    assert path.stat().st_size < dense_bytes * (0.8 if quantize else 0.6)
    loaded = FastGRNN.load(path)
    assert loaded.masks is not None and set(loaded.masks) == set(sparse.masks)
    for name, mask in sparse.masks.items():
        np.testing.assert_array_equal(loaded.masks[name], mask)
    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), sparse.forward(x))
    assert (loaded.quantized is not None) == quantize


def test_a_corrupt_sparse_index_is_refused(tmp_path) -> None:
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    from tinydancer import ModelFileError

    path = FastGRNN(FastGRNNConfig(), seed=0).prune(0.5).save(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="np") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    tensors["index.W"] = tensors["index.W"][::-1].copy()  # positions out of order
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ModelFileError, match="sparse index"):
        FastGRNN.load(path)
