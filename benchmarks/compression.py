"""Compression report: accuracy against size for dense, low-rank, sparse and int8 FastGRNNs.

Seed example (5 features → 16 hidden, 1,000 training samples, accuracy on 20,000 fresh samples)
and, when ../shared/data is present, the MMLU routing task (APGR on the fixed test split).
Also measures the two int8 inference paths the issue asks about: integer matrix products
(int8 × int8 → int32, rescaled) against dequantizing once at load and running in float32.

    .venv/bin/python benchmarks/compression.py              # writes benchmarks/out/compression.png
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import console, environment, table, time_call, us

from tinydancer import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, TrainingDataset
from tinydancer.demo import DEMO_TRAINING
from tinydancer.plotting import plot_size_quality
from tinydancer.synthetic import seed_example_data

OUT = Path(__file__).resolve().parent / "out"


def file_size(model: FastGRNN) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return model.save(Path(tmp) / "m.safetensors").stat().st_size


def seed_variants() -> list[tuple[str, FastGRNNConfig, TrainingConfig, bool]]:
    """(name, model config, training config, quantize afterwards)."""
    base = replace(DEMO_TRAINING, epochs=60, early_stopping_patience=15)
    dense = FastGRNNConfig(input_dim=5, hidden_dim=16)
    low = FastGRNNConfig(input_dim=5, hidden_dim=16, rank=4)
    sparse_cfg = replace(base, w_sparsity=0.5, u_sparsity=0.75)
    return [
        ("fp32 dense", dense, base, False),
        ("fp32 low-rank (r=4)", low, base, False),
        ("fp32 low-rank + sparse", low, sparse_cfg, False),
        ("int8 dense", dense, base, True),
        ("int8 low-rank + sparse", low, sparse_cfg, True),
    ]


def seed_report() -> list[tuple[str, float, int]]:
    x, y = seed_example_data(1000, seed=42)
    xt, yt = seed_example_data(20000, seed=4242)
    rows, points = [], []
    for name, mcfg, tcfg, quant in seed_variants():
        ds = TrainingDataset(x, y)
        ds.normalize()
        model = FastGRNN(mcfg, seed=0)
        Trainer(mcfg, tcfg).train(model, ds)
        if quant:
            model.quantize()
        acc = float(((model.predict(xt)[:, 0] >= 0.5) == (yt >= 0.5)).mean())
        nnz = int(sum(np.count_nonzero(v) for k, v in model.params.items() if k[0] in "WU"))
        rows.append([name, f"{acc:.4f}", f"{model.size_bytes():,}", f"{file_size(model):,}", f"{nnz}"])
        points.append((name, acc, model.size_bytes()))
    console.print(table(
        "Seed example: held-out accuracy (20,000 samples) against size",
        ["model", "accuracy", "size_bytes (EdgeML)", "file bytes", "nonzero W/U"],
        rows,
        key="seed-compression",
    ))
    return points


def int8_integer_forward(model: FastGRNN, wq: np.ndarray, w_scale: float, x: np.ndarray) -> np.ndarray:
    """T = 1 inference with the input projection done in integers (int8 × int8 → int32).

    The input is quantized per batch (symmetric, int8); the accumulator is rescaled to float
    before the nonlinearities.  This is the integer alternative to dequantize-once.
    """
    p = model.params
    x_scale = float(np.abs(x).max()) / 127.0 or 1.0
    xq = np.rint(x / x_scale).astype(np.int32)
    pre = (xq @ wq.T).astype(np.float32) * np.float32(x_scale * w_scale)
    z = 0.5 * np.tanh(0.5 * (pre + p["b_z"])) + 0.5
    c = np.tanh(pre + p["b_h"])
    zs = 1 / (1 + np.exp(-p["zeta"][0]))
    ns = 1 / (1 + np.exp(-p["nu"][0]))
    h = (zs * (1 - z) + ns) * c
    logits = h @ p["fc_w"].T + p["fc_b"]
    return 0.5 * np.tanh(0.5 * logits) + 0.5


def int8_paths() -> None:
    x, y = seed_example_data(1000, seed=42)
    xt, yt = seed_example_data(20000, seed=4242)
    ds = TrainingDataset(x, y)
    ds.normalize()
    config = FastGRNNConfig(input_dim=5, hidden_dim=16)
    model = FastGRNN(config, seed=0)
    Trainer(config, replace(DEMO_TRAINING, epochs=60)).train(model, ds)
    q = model.copy().quantize()
    wq, w_scale = q.quantized["W"]
    wq32 = wq.astype(np.int32)
    xn = q.normalizer.apply(xt)
    p_int = int8_integer_forward(q, wq32, w_scale, xn)[:, 0]
    p_deq = q.forward(xn)[:, 0]
    acc_int = float(((p_int >= 0.5) == (yt >= 0.5)).mean())
    acc_deq = float(((p_deq >= 0.5) == (yt >= 0.5)).mean())
    rows = []
    for batch in (1, 32, 1024):
        xb = xn[:batch]
        t_int = time_call(lambda: int8_integer_forward(q, wq32, w_scale, xb))
        t_deq = time_call(lambda: q.forward(xb))
        rows.append([f"batch {batch}", us(t_deq), us(t_int), f"{t_int / t_deq:.1f}x"])
    console.print(table(
        f"int8 inference paths (dense 5→16): accuracy dequantize-once {acc_deq:.4f}, integer {acc_int:.4f}, "
        f"max |Δp| {np.abs(p_int - p_deq).max():.4f}",
        ["batch", "dequantize once (kept)", "integer matmul", "integer/dequant"],
        rows,
    ))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-mmlu", action="store_true")
    args = parser.parse_args()
    console.print(environment())
    seed_points = seed_report()
    int8_paths()
    panels = {"seed example, 5 → 16": ("held-out accuracy (20,000 samples)", [(n, sz, a) for n, a, sz in seed_points])}
    if not args.skip_mmlu:
        from compression_mmlu import mmlu_report

        mmlu_points = mmlu_report()
        if mmlu_points:
            panels["MMLU router, 384 → 32"] = ("test APGR", [(n, sz, a) for n, a, sz in mmlu_points])
    path = plot_size_quality(panels, OUT / "compression.png")
    if path:
        console.print(f"plot: {path}")


if __name__ == "__main__":
    main()
