"""``make demo``: the seed example done properly, end to end, in a few seconds.

The crate's ``train-model`` example trains on normalized features and then predicts on raw ones,
distils from an untrained "teacher", and never updates a weight.  Here: real training, a large
fresh held-out set (the Bayes ceiling of this data is ~0.904, so 200 validation rows cannot tell
0.88 from 0.92), predictions on properly normalized inputs, and a saved, reloadable model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .data import TrainingDataset
from .model import FastGRNN, FastGRNNConfig
from .synthetic import seed_example_data
from .training import Trainer, TrainingConfig

#: the seed example's model and training settings (its distillation from a random teacher is dropped)
DEMO_MODEL = FastGRNNConfig(input_dim=5, hidden_dim=16, output_dim=1, nu=0.8, zeta=1.2, rank=8)
DEMO_TRAINING = TrainingConfig(
    learning_rate=0.01,
    batch_size=32,
    epochs=50,
    validation_split=0.2,
    early_stopping_patience=10,
    lr_decay=0.8,
    lr_decay_step=10,
    grad_clip=5.0,
    l2_reg=1e-4,
)
#: the seed example's three test inputs: easy (lightweight), hard (powerful), in between
SEED_CASES = {
    "easy": [0.9, 0.8, 0.7, 0.9, 0.2],
    "hard": [0.3, 0.2, 0.1, 0.4, 0.9],
    "medium": [0.5, 0.5, 0.5, 0.5, 0.5],
}
SHORT_NAMES = ("sim", "recency", "pop", "success", "complexity")


def train_seed_example(n_train: int = 1000, seed: int = 42, quiet: bool = True, console: Console | None = None) -> tuple[FastGRNN, Trainer]:
    """Train the seed example's model on ``n_train`` synthetic samples."""
    x, y = seed_example_data(n_train, seed=seed)
    dataset = TrainingDataset(x, y)
    dataset.normalize()
    model = FastGRNN(DEMO_MODEL, seed=seed)
    trainer = Trainer(DEMO_MODEL, DEMO_TRAINING)
    if quiet or console is None:
        trainer.train(model, dataset)
    else:
        from .cli import EpochProgress

        with EpochProgress(DEMO_TRAINING.epochs, quiet=False, label="training the seed example") as progress:
            trainer.train(model, dataset, on_epoch_end=progress)
    return model, trainer


def held_out_accuracy(model: FastGRNN, n: int = 20000, seed: int = 4242) -> float:
    x, y = seed_example_data(n, seed=seed)
    return float(((model.predict(x)[:, 0] >= 0.5) == (y >= 0.5)).mean())


def run_demo(out: Path, console: Console | None = None, quiet: bool = False) -> FastGRNN:
    console = console or Console()
    console.rule("[bold]Tiny Dancer demo: the seed example, trained for real")
    model, trainer = train_seed_example(console=console, quiet=quiet)
    s = model.training_summary
    acc = held_out_accuracy(model)
    console.print(
        f"trained {s['epochs_run']} epochs in {s['seconds']:.2f} s on {s['train_samples']} samples "
        f"(+{s['val_samples']} validation); best epoch {s['best_epoch'] + 1}"
    )
    console.print(f"held-out accuracy on 20,000 fresh samples: [bold]{acc:.4f}[/] (Bayes ceiling of this data ≈ 0.904)")

    table = Table(title="predictions on raw features (normalized with the stored parameters)")
    table.add_column("case")
    for name in SHORT_NAMES:
        table.add_column(name, justify="right")
    table.add_column("P(light ok)", justify="right")
    probs = model.predict(np.array(list(SEED_CASES.values())))[:, 0]
    for (case, feats), p in zip(SEED_CASES.items(), probs):
        table.add_row(case, *(f"{v:.1f}" for v in feats), f"{p:.4f}")
    console.print(table)

    out.mkdir(parents=True, exist_ok=True)
    path = model.save(out / "default.safetensors")
    trainer.save_metrics(out / "default.metrics.json")
    if model.normalizer is not None:
        model.normalizer.save_json(out / "default.normalization.json")
    from .plotting import plot_training_curve

    plot_training_curve(trainer.metrics, out / "default.training_curve.png", title="seed example")
    reloaded = FastGRNN.load(path)
    same = np.array_equal(reloaded.predict(np.array(list(SEED_CASES.values()))), model.predict(np.array(list(SEED_CASES.values()))))
    console.print(f"saved {path} ({path.stat().st_size} bytes on disk); reload gives identical outputs: {same}")

    fp32_size = model.size_bytes()
    int8 = reloaded.quantize()
    int8_acc = held_out_accuracy(int8)
    console.print(
        f"int8 quantization: {fp32_size} → {int8.size_bytes()} bytes (EdgeML accounting), "
        f"held-out accuracy {acc:.4f} → {int8_acc:.4f}"
    )
    return model
