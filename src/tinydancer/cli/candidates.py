"""The candidate router's commands (the seed's candidate scorer): ``tinydancer candidates train /
evaluate / predict`` train, measure and query a FastGRNN on a labelled features file.  The old
top-level ``train / evaluate / predict`` still work and say, on stderr, which command replaces
them.  ``demo`` (``make demo``) stays a top-level command: it shows the gateway first."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ..errors import TinyDancerError
from ..nn import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, evaluate_model
from ..nn.datafiles import read_table
from ..progress import EpochProgress
from .common import console, friendly_errors, print_or_json

__all__ = ["candidates_app", "deprecated_aliases", "demo"]

candidates_app = typer.Typer(
    help="The candidate router (the seed's candidate scorer): train, evaluate and query a FastGRNN that scores "
         "candidates (a cached answer, a small model, a tool) from routing features. Served by `tinydancer serve` "
         "(POST /v1/route); see docs/candidates.md.",
    no_args_is_help=True, rich_markup_mode="markdown")


@friendly_errors
def train(
    data: Path = typer.Option(..., "--data", help="Training data: .csv, .jsonl or .npz (see docs)."),
    out: Path = typer.Option(..., "--out", help="Folder for model.safetensors, normalization.json, metrics.json, training_curve.png."),
    hidden_dim: int = typer.Option(16, help="Hidden units."),
    rank: Optional[int] = typer.Option(None, help="Low-rank factorisation of W and U (None = dense)."),
    epochs: int = typer.Option(100),
    learning_rate: float = typer.Option(0.001, "--learning-rate", "--lr"),
    batch_size: int = typer.Option(32),
    validation_split: float = typer.Option(0.2),
    patience: Optional[int] = typer.Option(10, help="Early-stopping patience in epochs (0 disables)."),
    lr_decay: float = typer.Option(0.5),
    lr_decay_step: int = typer.Option(20),
    grad_clip: float = typer.Option(5.0),
    l2_reg: float = typer.Option(1e-5),
    distill: bool = typer.Option(False, help="Use the file's soft_target column for knowledge distillation."),
    temperature: float = typer.Option(3.0, help="Distillation temperature."),
    alpha: float = typer.Option(0.5, help="Weight of the soft (teacher) loss."),
    normalize: bool = typer.Option(True, help="Z-score features and store the parameters with the model."),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a FastGRNN on a labelled file and write the model and its artefacts."""
    dataset = read_table(data).to_dataset()
    if normalize:
        dataset.normalize()
    model_config = FastGRNNConfig(
        input_dim=dataset.feature_dim,
        hidden_dim=hidden_dim,
        output_dim=dataset.output_dim,
        rank=rank,
    )
    training_config = TrainingConfig(
        learning_rate=learning_rate,
        batch_size=batch_size,
        epochs=epochs,
        validation_split=validation_split,
        early_stopping_patience=patience or None,
        lr_decay=lr_decay,
        lr_decay_step=lr_decay_step,
        grad_clip=grad_clip,
        l2_reg=l2_reg,
        enable_distillation=distill,
        distillation_temperature=temperature,
        distillation_alpha=alpha,
        seed=seed,
    )
    model = FastGRNN(model_config, seed=seed)
    trainer = Trainer(model_config, training_config)
    with EpochProgress(epochs, quiet) as progress:
        trainer.train(model, dataset, on_epoch_end=progress)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.safetensors")
    if dataset.normalization is not None:
        dataset.normalization.save_json(out / "normalization.json")
    trainer.save_metrics(out / "metrics.json")
    from ..plotting import plot_training_curve

    curve = plot_training_curve(trainer.metrics, out / "training_curve.png")
    s = model.training_summary
    console.print(
        f"trained {s['epochs_run']} epochs ({s['seconds']:.2f} s), best epoch {s['best_epoch'] + 1}: "
        f"val loss {s['val_loss'] if s['val_loss'] is not None else float('nan'):.4f}, "
        f"val accuracy {s['val_accuracy'] if s['val_accuracy'] is not None else float('nan'):.3f}"
    )
    console.print(f"wrote {out / 'model.safetensors'} ({model.size_bytes()} bytes by EdgeML accounting)")
    if curve is None:
        console.print("(install tinydancer[plot] for training_curve.png)")


@friendly_errors
def evaluate(
    model_path: Path = typer.Option(..., "--model", help="A model.safetensors file."),
    data: Path = typer.Option(..., "--data", help="Labelled data (.csv, .jsonl, .npz) in raw feature units."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Loss, accuracy and calibration of a saved model on a labelled file."""
    model = FastGRNN.load(model_path)
    dataset = read_table(data).to_dataset()
    if model.normalizer is not None:
        dataset.apply_normalization(model.normalizer)
    loss, acc = evaluate_model(model, dataset)
    probs = model.forward(dataset.features_3d())
    labels = dataset.labels_2d()
    result: dict[str, Any] = {"n": len(dataset), "loss": loss, "accuracy": acc}
    if model.config.output_activation == "sigmoid":
        result["brier"] = float(np.mean((probs - labels) ** 2))
    print_or_json(result, as_json, f"evaluation of {model_path.name}")


@friendly_errors
def predict(
    model_path: Path = typer.Option(..., "--model", help="A model.safetensors file."),
    data: Optional[Path] = typer.Option(None, "--data", help="Features file (.csv, .jsonl, .npz); labels optional."),
    features: Optional[str] = typer.Option(None, "--features", help="One comma-separated feature vector."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """Probabilities for raw (un-normalized) features; the model's stored normalization is applied."""
    model = FastGRNN.load(model_path)
    if (data is None) == (features is None):
        raise TinyDancerError("give exactly one of --data FILE or --features 'v1,v2,...'")
    if features is not None:
        try:
            rows = np.array([[float(v) for v in features.split(",")]])
        except ValueError:
            raise TinyDancerError(f"--features must be comma-separated numbers, got {features!r}") from None
    else:
        rows = read_table(data).features  # type: ignore[arg-type]
    probs = model.predict(rows)
    for p in probs:
        values = [round(float(v), 6) for v in p]
        typer.echo(json.dumps(values if len(values) > 1 else values[0]) if as_json else " ".join(f"{v:.6f}" for v in values))


@friendly_errors
def demo(
    out: Path = typer.Option(Path("models"), help="Where the default model and artefacts go."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The demo (`make demo`): the LLM gateway in front of two stand-in LLMs, then the candidate router
    trained on the seed example's synthetic data."""
    from ..demo import run_demo

    run_demo(out, console=console, quiet=quiet)


#: the group's commands, in the order of its --help
COMMANDS = [train, evaluate, predict]
for _command in COMMANDS:
    candidates_app.command()(_command)


def _deprecated(command: Any) -> Any:
    """``command`` under its old top-level name: the same options, and one line on stderr naming
    the command that replaces it (stdout stays the command's own, for scripts that parse it)."""
    name = command.__name__

    @functools.wraps(command)
    def alias(*args: Any, **kwargs: Any) -> Any:
        typer.echo(f"`tinydancer {name}` is deprecated: use `tinydancer candidates {name}` (the candidate router's "
                   "commands)", err=True)
        return command(*args, **kwargs)

    return alias


def deprecated_aliases() -> list[Any]:
    """The old top-level ``train / evaluate / predict``, each printing its deprecation notice."""
    return [_deprecated(c) for c in COMMANDS]
