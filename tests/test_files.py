"""Model files: exact round trips, atomic writes, clear errors for corrupt or foreign files."""

from __future__ import annotations

import json
import os
import threading
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from tinydancer import FastGRNN, FastGRNNConfig, ModelFileError, Normalizer, Trainer, TrainingConfig, TrainingDataset
from tinydancer.synthetic import seed_example_data


@pytest.fixture()
def trained(tmp_path) -> FastGRNN:
    x, y = seed_example_data(300, seed=0)
    ds = TrainingDataset(x, y)
    ds.normalize()
    model = FastGRNN(FastGRNNConfig(rank=4), seed=0)
    Trainer(None, TrainingConfig(epochs=3)).train(model, ds)
    model.extra_metadata["owner"] = "tests"
    return model


def test_save_load_gives_bit_identical_outputs(trained: FastGRNN, tmp_path) -> None:
    path = trained.save(tmp_path / "deep" / "model.safetensors")
    loaded = FastGRNN.load(path)
    x = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), trained.forward(x))
    np.testing.assert_array_equal(loaded.get_flat(), trained.get_flat())
    assert loaded.config == trained.config
    np.testing.assert_array_equal(loaded.normalizer.means, trained.normalizer.means)
    assert loaded.training_summary["epochs_run"] == 3
    assert loaded.extra_metadata == {"owner": "tests"}
    raw = np.random.default_rng(1).random((8, 5))
    np.testing.assert_array_equal(loaded.predict(raw), trained.predict(raw))


def test_predict_on_raw_features_equals_forward_on_normalized(trained: FastGRNN) -> None:
    raw = np.random.default_rng(2).random((32, 5)) * 3 - 1
    np.testing.assert_allclose(trained.predict(raw), trained.forward(trained.normalizer.apply(raw)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trained.predict(raw[0]), trained.predict(raw)[0], rtol=1e-6)


def test_save_is_atomic_and_leaves_no_temp_files(trained: FastGRNN, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    trained.save(path)
    first = path.read_bytes()
    trained.set_params(fc_b=[0.5])
    trained.save(path)
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_a_save_that_dies_midway_leaves_the_old_file_whole(trained: FastGRNN, tmp_path, monkeypatch, fail_at: str) -> None:
    """The disk fails after the new bytes are written but before they are in place: the file on
    disk is still the old model, byte for byte, and no temporary file is left behind."""
    path = tmp_path / "model.safetensors"
    trained.save(path)
    first = path.read_bytes()
    changed = trained.copy()
    changed.set_params(fc_b=[0.5])

    def disk_error(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, fail_at, disk_error)
    with pytest.raises(OSError, match="No space left"):
        changed.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    np.testing.assert_array_equal(FastGRNN.load(path).get_flat(), trained.get_flat())


def test_readers_never_see_a_partial_file_while_it_is_replaced(trained: FastGRNN, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    other = trained.copy()
    other.set_params(fc_b=[0.5])
    trained.save(path)
    expected = {trained.get_flat().tobytes(), other.get_flat().tobytes()}
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(FastGRNN.load(path).get_flat().tobytes())
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            (other if i % 2 else trained).save(path)
    finally:
        done.set()
        thread.join()
    assert errors == [] and seen <= expected and seen


def test_missing_file_says_how_to_get_one(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="make demo"):
        FastGRNN.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header_lie"])
def test_corrupt_files_raise_model_file_error(trained: FastGRNN, tmp_path, damage: str) -> None:
    path = trained.save(tmp_path / "model.safetensors")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # header length field pointing past the end
        path.write_bytes(struct.pack("<Q", 10**9) + data[8:])
    with pytest.raises(ModelFileError):
        FastGRNN.load(path)


def _tensors(model: FastGRNN) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in model.params.items()}


def _metadata(model: FastGRNN) -> dict[str, str]:
    return {"format": "tinydancer.fastgrnn", "format_version": "1", "config": json.dumps(model.config.to_dict())}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t, m: m.pop("format"), "not a Tiny Dancer"),
        (lambda t, m: m.update(format_version="99"), "version"),
        (lambda t, m: m.update(config="{not json"), "metadata"),
        (lambda t, m: t.update(W1=np.full(t["W1"].shape, np.nan, dtype=np.float32)), "NaN"),
        (lambda t, m: t.update(W1=np.zeros((3, 3), dtype=np.float32)), "shape"),
        (lambda t, m: t.update(W1=t["W1"].astype(np.float64)), "float32"),
        (lambda t, m: t.pop("fc_b"), "missing"),
        (lambda t, m: t.update(extra=np.zeros(2, dtype=np.float32)), "unexpected"),
    ],
)
def test_foreign_or_inconsistent_files_are_refused(trained: FastGRNN, tmp_path, edit, message) -> None:
    tensors, metadata = _tensors(trained), _metadata(trained)
    edit(tensors, metadata)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match=message):
        FastGRNN.load(path)


def test_normalizer_json_rejects_bad_values(tmp_path) -> None:
    path = tmp_path / "n.json"
    path.write_text(json.dumps({"means": [0.0, 1.0], "stds": [1.0, 0.0]}))
    with pytest.raises(ValueError, match="positive"):
        Normalizer.load_json(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="JSON"):
        Normalizer.load_json(path)
