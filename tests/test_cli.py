"""The ``tinydancer`` command line: train, evaluate and predict on CSV, JSONL and NPZ files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from tinydancer import FastGRNN
from tinydancer.cli import app
from tinydancer.synthetic import seed_example_data

runner = CliRunner()


def _write(fmt: str, path, x: np.ndarray, y: np.ndarray) -> None:
    if fmt == "csv":
        lines = ["similarity,recency,popularity,success_rate,complexity,label"]
        lines += [",".join(f"{v:.6f}" for v in row) + f",{int(t)}" for row, t in zip(x, y)]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"features": row.tolist(), "label": float(t)}) + "\n" for row, t in zip(x, y)))
    else:
        np.savez(path, features=x, labels=y)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "npz"])
def test_train_evaluate_predict(tmp_path, fmt: str) -> None:
    x, y = seed_example_data(800, seed=0)
    data = tmp_path / f"train.{fmt}"
    _write(fmt, data, x, y)
    out = tmp_path / "out"
    result = runner.invoke(app, ["candidates", "train", "--data", str(data), "--out", str(out), "--epochs", "15", "--lr", "0.01", "--quiet"])
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "normalization.json", "metrics.json", "training_curve.png"):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "metrics.json").read_text())) <= 15

    xt, yt = seed_example_data(2000, seed=1)
    test = tmp_path / f"test.{fmt}"
    _write(fmt, test, xt, yt)
    result = runner.invoke(app, ["candidates", "evaluate", "--model", str(out / "model.safetensors"), "--data", str(test), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["n"] == 2000 and scores["accuracy"] > 0.85 and 0 <= scores["brier"] < 0.15

    result = runner.invoke(app, ["candidates", "predict", "--model", str(out / "model.safetensors"), "--features", "0.9,0.8,0.7,0.9,0.2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) > 0.9  # high similarity, low complexity: lightweight
    result = runner.invoke(app, ["candidates", "predict", "--model", str(out / "model.safetensors"), "--data", str(test)])
    assert len(result.output.strip().splitlines()) == 2000
    model = FastGRNN.load(out / "model.safetensors")
    first = float(result.output.splitlines()[0])
    assert first == pytest.approx(float(model.predict(xt[:1])[0, 0]), abs=1e-6)


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b,label\n1,2,0\n1,x,1\n", "not a number"),
        ("a,b,label\n1,2,0\n1,2\n", "fields"),
        ("a,b,label\n1,nan,1\n1,2,0\n", "non-finite"),
        ("a,b,label\n1,2,3\n", r"\[0, 1\]"),
        ("", "empty"),
    ],
)
def test_train_reports_bad_csv_in_one_line(tmp_path, content: str, message: str) -> None:
    data = tmp_path / "bad.csv"
    data.write_text(content)
    result = runner.invoke(app, ["candidates", "train", "--data", str(data), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1
    assert "error:" in result.output and re.search(message, result.output)
    assert "Traceback" not in result.output


def test_jsonl_ragged_rows_and_unknown_format(tmp_path) -> None:
    data = tmp_path / "r.jsonl"
    data.write_text('{"features": [1, 2], "label": 1}\n{"features": [1], "label": 0}\n')
    result = runner.invoke(app, ["candidates", "train", "--data", str(data), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1 and "ragged" in result.output
    other = tmp_path / "d.parquet"
    other.write_text("x")
    result = runner.invoke(app, ["candidates", "train", "--data", str(other), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1 and "unknown data format" in result.output


def test_predict_with_a_corrupt_model_fails_cleanly(tmp_path) -> None:
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"\x00" * 40)
    result = runner.invoke(app, ["candidates", "predict", "--model", str(bad), "--features", "1,2,3,4,5"])
    assert result.exit_code == 1 and "corrupt" in result.output


def test_demo_writes_a_reloadable_default_model(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    seed = FastGRNN.load(tmp_path / "seed_example.safetensors")
    assert seed.normalizer is not None and seed.config.rank == 8
    default = FastGRNN.load(tmp_path / "default.safetensors")  # the Router's default, conformally calibrated
    assert default.config.input_dim == 5 and "conformal_scores" in default.aux_tensors
    assert default.extra_metadata["version"] == "default-demo-1"  # the learning loop promoted over a copy
    assert FastGRNN.load(tmp_path / "served.safetensors").extra_metadata["version"].startswith("v")
    assert "after hot reload" in result.output


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "npz"])
def test_data_files_carry_several_labels_soft_targets_and_weights(tmp_path, fmt: str) -> None:
    """The README's optional columns: label_0…, soft_target(_i), weight; and their JSONL/NPZ forms."""
    from tinydancer.nn.datafiles import read_table

    rng = np.random.default_rng(3)
    x = rng.random((6, 3)).round(4)
    y = (rng.random((6, 2)) > 0.5).astype(float)
    soft = rng.random((6, 2)).round(4)
    w = (rng.random(6) + 0.5).round(4)
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        rows = ["f0,f1,f2,label_0,label_1,soft_target_0,soft_target_1,weight"]
        rows += [",".join(str(v) for v in [*x[i], *y[i], *soft[i], w[i]]) for i in range(6)]
        path.write_text("\n".join(rows) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"features": x[i].tolist(), "label": y[i].tolist(), "soft_target": soft[i].tolist(),
                                            "weight": float(w[i])}) + "\n" for i in range(6)))
    else:
        np.savez(path, features=x, labels=y, soft_targets=soft, weights=w)
    table = read_table(path)
    np.testing.assert_allclose(np.asarray(table.features, dtype=float), x)
    np.testing.assert_allclose(table.labels, y)
    np.testing.assert_allclose(table.soft_targets, soft)
    np.testing.assert_allclose(table.weights, w)
    ds = table.to_dataset()
    assert (ds.feature_dim, ds.output_dim) == (3, 2)
    np.testing.assert_allclose(ds.sample_weights, w, rtol=1e-6)
    np.testing.assert_allclose(ds.soft_targets_2d(), soft, rtol=1e-6)
    if fmt == "csv":
        assert table.feature_names == ["f0", "f1", "f2"]


def test_train_uses_the_weight_column(tmp_path) -> None:
    """Weight 0 on every positive row: the trained model must learn the negatives only."""
    x, y = seed_example_data(400, seed=5)
    w = np.where(y >= 0.5, 0.0, 1.0)
    lines = ["a,b,c,d,e,label,weight"] + [",".join(f"{v:.6f}" for v in row) + f",{int(t)},{wt}" for row, t, wt in zip(x, y, w)]
    (tmp_path / "w.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["candidates", "train", "--data", str(tmp_path / "w.csv"), "--out", str(out), "--epochs", "30", "--lr", "0.02", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (FastGRNN.load(out / "model.safetensors").predict(x)[:, 0] < 0.5).mean() > 0.95


def test_the_old_top_level_commands_still_work_and_name_their_replacement(tmp_path) -> None:
    """`train / evaluate / predict` moved under `candidates` (the candidate router's group); the old
    names keep working, with one line on stderr naming the new command and stdout unchanged."""
    x, y = seed_example_data(300, seed=0)
    data = tmp_path / "train.npz"
    np.savez(data, features=x, labels=y)
    old = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "3", "--quiet"])
    assert old.exit_code == 0, old.output
    assert old.stderr.splitlines()[0] == ("`tinydancer train` is deprecated: use `tinydancer candidates train` "
                                          "(the candidate router's commands)")
    assert (tmp_path / "o" / "model.safetensors").is_file()
    args = ["--model", str(tmp_path / "o" / "model.safetensors"), "--features", "0.9,0.8,0.7,0.9,0.2", "--json"]
    old, new = runner.invoke(app, ["predict", *args]), runner.invoke(app, ["candidates", "predict", *args])
    assert old.exit_code == new.exit_code == 0 and old.stdout == new.stdout and json.loads(old.stdout) > 0
    assert "use `tinydancer candidates predict`" in old.stderr and new.stderr == ""
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert top.index("gateway") < top.index("candidates") and "│ train " not in top  # the gateway leads; aliases hidden


def test_an_error_is_one_line_at_any_width_and_its_brackets_are_printed_as_they_are(tmp_path) -> None:
    # a path long enough that an 80-column console would wrap it, with brackets rich would read as markup
    folder = tmp_path / ("x" * 90) / "[bold]data"
    folder.mkdir(parents=True)
    data = folder / "bad.csv"
    data.write_text("a,b,label\n1,x,0\n")
    result = runner.invoke(app, ["candidates", "train", "--data", str(data), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1 and "not a number" in lines[0] and "/[bold]data/bad.csv" in lines[0], result.output
