"""The training pipeline: Adam, clipping, LR decay, early stopping, distillation, datasets."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinydancer import (
    BatchIterator,
    FastGRNN,
    FastGRNNConfig,
    Trainer,
    TrainingConfig,
    TrainingDataset,
    ValidationError,
    binary_cross_entropy,
    evaluate_model,
    generate_teacher_predictions,
    load_normalization_params,
    save_normalization_params,
    temperature_softmax,
)
from tinydancer.nn.optim import Adam, clip_by_global_norm
from tinydancer.synthetic import seed_example_data


def test_one_adam_step_by_hand() -> None:
    theta = np.array([1.0, -2.0, 0.5])
    g = np.array([0.1, -0.4, 2.0])
    opt = Adam(3, beta1=0.9, beta2=0.999, epsilon=1e-8, dtype=np.float64)
    # two steps so that bias correction with t = 2 is exercised too
    expected = theta.copy()
    m = np.zeros(3)
    v = np.zeros(3)
    for t in (1, 2):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat = m / (1 - 0.9**t)
        v_hat = v / (1 - 0.999**t)
        expected = expected - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
        opt.step(theta, g, lr=0.01)
    np.testing.assert_allclose(theta, expected, rtol=1e-12)
    # the first step of Adam moves every coordinate by ~lr regardless of gradient scale
    np.testing.assert_allclose(np.abs(np.array([1.0, -2.0, 0.5]) - expected), 0.02, rtol=1e-5)


def test_global_norm_clipping_keeps_direction() -> None:
    g = np.array([3.0, 4.0])
    before = clip_by_global_norm(g, 1.0)
    assert before == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, 0.8])
    small = np.array([0.3, 0.4])
    clip_by_global_norm(small, 1.0)
    np.testing.assert_allclose(small, [0.3, 0.4])


def _seed_dataset(n: int = 600, seed: int = 0) -> TrainingDataset:
    x, y = seed_example_data(n, seed=seed)
    ds = TrainingDataset(x, y)
    ds.normalize()
    return ds


def test_training_learns_the_seed_example() -> None:
    ds = _seed_dataset(1000, seed=1)
    config = FastGRNNConfig()
    model = FastGRNN(config, seed=0)
    trainer = Trainer(config, TrainingConfig(learning_rate=0.01, epochs=40, lr_decay=0.8, lr_decay_step=10, l2_reg=1e-4))
    metrics = trainer.train(model, ds)
    assert metrics[-1].train_loss < metrics[0].train_loss
    x_test, y_test = seed_example_data(20000, seed=123)
    acc = float(((model.predict(x_test)[:, 0] >= 0.5) == (y_test >= 0.5)).mean())
    # the Bayes rate of this data is 0.904; a trained model gets close, an untrained one does not
    assert acc > 0.88
    assert model.normalizer is ds.normalization
    untrained = FastGRNN(config, seed=0)
    assert float(((untrained.predict(x_test)[:, 0] >= 0.5) == (y_test >= 0.5)).mean()) < 0.75


def test_learning_rate_decays_in_steps() -> None:
    trainer = Trainer(None, TrainingConfig(learning_rate=0.01, epochs=7, lr_decay=0.5, lr_decay_step=3, early_stopping_patience=None))
    trainer.train(FastGRNN(FastGRNNConfig(), seed=0), _seed_dataset(100))
    assert [m.learning_rate for m in trainer.metrics] == pytest.approx([0.01] * 3 + [0.005] * 3 + [0.0025])


def test_early_stopping_restores_the_best_weights() -> None:
    """Validation labels are the training labels flipped, so validation loss rises after epoch 0."""
    train = _seed_dataset(400, seed=2)
    val = TrainingDataset(train.features, 1.0 - train.labels)
    snapshots: dict[int, np.ndarray] = {}
    model = FastGRNN(FastGRNNConfig(), seed=0)
    trainer = Trainer(None, TrainingConfig(learning_rate=0.02, epochs=50, early_stopping_patience=3))
    trainer.train(model, train, validation=val, on_epoch_end=lambda m: snapshots.__setitem__(m.epoch, model.get_flat()))
    losses = [m.val_loss for m in trainer.metrics]
    best = int(np.argmin(losses))
    assert trainer.stopped_early
    assert trainer.best_epoch == best
    assert len(trainer.metrics) == best + 3 + 1
    np.testing.assert_array_equal(model.get_flat(), snapshots[best])
    assert not np.array_equal(model.get_flat(), snapshots[len(losses) - 1])
    assert evaluate_model(model, val)[0] == pytest.approx(losses[best], rel=1e-6)


def test_distillation_student_follows_the_teacher() -> None:
    """With alpha = 1 the student sees only the teacher; it must reproduce the teacher's decisions."""
    rng = np.random.default_rng(0)
    teacher = FastGRNN(FastGRNNConfig(input_dim=5, hidden_dim=32), seed=11)
    teacher.set_params(fc_w=rng.normal(0, 3.0, size=(1, 32)))  # a teacher with decisive opinions
    x = rng.normal(size=(1500, 5)).astype(np.float32)
    soft = generate_teacher_predictions(teacher, x, temperature=2.0)
    np.testing.assert_allclose(soft, 1 / (1 + np.exp(-teacher.logits(x)[:, 0] / 2.0)), rtol=1e-5)
    random_labels = rng.integers(0, 2, size=1500).astype(np.float32)
    ds = TrainingDataset(x, random_labels).with_soft_targets(soft)
    student = FastGRNN(FastGRNNConfig(input_dim=5, hidden_dim=8), seed=1)
    Trainer(None, TrainingConfig(learning_rate=0.01, epochs=60, enable_distillation=True, distillation_alpha=1.0,
                                 distillation_temperature=2.0, early_stopping_patience=None)).train(student, ds)
    agree = ((student.forward(x)[:, 0] >= 0.5) == (teacher.forward(x)[:, 0] >= 0.5)).mean()
    assert agree > 0.93


def test_distillation_without_soft_targets_is_refused() -> None:
    with pytest.raises(ValidationError, match="soft targets"):
        Trainer(None, TrainingConfig(enable_distillation=True)).train(FastGRNN(), _seed_dataset(50))


def test_trainer_refuses_mismatched_model_and_data() -> None:
    with pytest.raises(ValidationError, match="features"):
        Trainer(None, TrainingConfig(epochs=1)).train(FastGRNN(FastGRNNConfig(input_dim=4)), _seed_dataset(50))
    with pytest.raises(ValidationError, match="model_config"):
        Trainer(FastGRNNConfig(hidden_dim=8), TrainingConfig(epochs=1)).train(FastGRNN(FastGRNNConfig()), _seed_dataset(50))


def test_metrics_json_and_training_is_reproducible(tmp_path) -> None:
    runs = []
    for _ in range(2):
        model = FastGRNN(FastGRNNConfig(), seed=0)
        trainer = Trainer(None, TrainingConfig(epochs=3, seed=5))
        trainer.train(model, _seed_dataset(200))
        runs.append(model.get_flat())
    np.testing.assert_array_equal(runs[0], runs[1])
    path = trainer.save_metrics(tmp_path / "m" / "metrics.json")
    rows = json.loads(path.read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) >= {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate"}


def test_training_config_defaults_are_the_seeds() -> None:
    c = TrainingConfig()
    assert (c.learning_rate, c.batch_size, c.epochs, c.validation_split, c.early_stopping_patience) == (0.001, 32, 100, 0.2, 10)
    assert (c.lr_decay, c.lr_decay_step, c.grad_clip, c.l2_reg) == (0.5, 20, 5.0, 1e-5)
    assert (c.adam_beta1, c.adam_beta2, c.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert (c.enable_distillation, c.distillation_temperature, c.distillation_alpha) == (False, 3.0, 0.5)
    for bad in ({"learning_rate": 0}, {"batch_size": 0}, {"validation_split": 1.0}, {"distillation_alpha": 2.0}, {"lr_decay": 0}):
        with pytest.raises(ValidationError):
            TrainingConfig(**bad)


# ---------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "features, labels, message",
    [
        ([[1.0, np.nan]], [1.0], "non-finite"),
        ([[1.0, np.inf]], [1.0], "non-finite"),
        ([[1.0, 2.0], [1.0]], [1.0, 0.0], "ragged"),
        ([[1.0, 2.0]], [1.5], r"\[0, 1\]"),
        ([[1.0, 2.0]], [-0.1], r"\[0, 1\]"),
        (np.zeros((0, 3)), np.zeros(0), "empty"),
        ([[1.0, 2.0], [3.0, 4.0]], [1.0], "rows"),
        ([1.0, 2.0], [1.0, 0.0], "must be 2-D or 3-D"),
    ],
)
def test_dataset_rejects_bad_data(features, labels, message) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainingDataset(features, labels)


def test_normalization_round_trip_and_constant_features(tmp_path) -> None:
    x = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    ds = TrainingDataset(x, [0.0, 1.0, 1.0])
    means, stds = ds.normalize()
    np.testing.assert_allclose(means, x.mean(axis=0))
    np.testing.assert_allclose(stds[[0, 2]], x.std(axis=0)[[0, 2]])  # the z-score's own spread, not a rescaled one
    assert stds[1] == 1.0  # a constant feature maps to 0 instead of dividing by zero
    np.testing.assert_allclose(ds.features, (x - means) / stds, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ds.features[:, 1], 0.0)
    np.testing.assert_allclose(ds.features.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(ds.features[:, [0, 2]].std(axis=0), 1.0, rtol=1e-5)
    path = save_normalization_params(tmp_path / "norm.json", means, stds)
    m2, s2 = load_normalization_params(path)
    np.testing.assert_array_equal(m2, means)
    np.testing.assert_array_equal(s2, stds)
    with pytest.raises(ValidationError, match="already normalized"):
        ds.normalize()


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 6)), elements=st.floats(-1e4, 1e4)))
def test_normalize_gives_zero_mean_unit_or_zero_spread(x: np.ndarray) -> None:
    ds = TrainingDataset(x, np.zeros(len(x)))
    _means, stds = ds.normalize()
    f = ds.features.astype(np.float64)
    assert np.all(np.abs(f.mean(axis=0)) < 1e-3 * np.maximum(1.0, np.abs(x).max() / stds))
    spread = f.std(axis=0)
    raw = x.std(axis=0)
    varying = raw > 1e-6 * np.maximum(1.0, np.abs(x).max(axis=0))  # well above float rounding
    constant = raw == 0
    assert np.all(np.abs(spread[varying] - 1) < 1e-3), "a varying feature must come out with unit spread"
    assert np.all(spread[constant] == 0) and np.all(stds[constant] == 1.0)


def test_split_is_seeded_disjoint_and_complete() -> None:
    ds = TrainingDataset(np.arange(20.0)[:, None], np.zeros(20))
    train, val = ds.split(0.25, seed=3)
    assert (len(train), len(val)) == (15, 5)
    seen = np.concatenate([train.features[:, 0], val.features[:, 0]])
    assert sorted(seen.tolist()) == list(range(20))
    again = ds.split(0.25, seed=3)[1]
    np.testing.assert_array_equal(again.features, val.features)
    with pytest.raises(ValidationError):
        ds.split(0.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 17), seed=st.integers(0, 99))
def test_batch_iterator_visits_every_sample_once_per_pass(n: int, batch_size: int, seed: int) -> None:
    ds = TrainingDataset(np.arange(n, dtype=float)[:, None], np.zeros(n))
    it = BatchIterator(ds, batch_size, shuffle=True, seed=seed)
    for _ in range(2):
        batches = list(it)
        assert len(batches) == len(it) == math.ceil(n / batch_size)
        assert all(len(b) == batch_size for b in batches[:-1])
        ids = np.concatenate([b.features[:, 0, 0] for b in batches])
        assert sorted(ids.tolist()) == list(range(n))


def test_loss_helpers() -> None:
    assert binary_cross_entropy(0.9, 1.0) == pytest.approx(-math.log(0.9))
    assert binary_cross_entropy(0.0, 0.0) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(temperature_softmax([0.0, math.log(3.0)], 1.0), [0.25, 0.75])
    soft = temperature_softmax([0.0, 10.0], 100.0)
    assert abs(soft[0] - soft[1]) < 0.1  # high temperature flattens


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda v: TrainingConfig(learning_rate=v), "TrainingConfig.learning_rate"),
        (lambda v: TrainingConfig(batch_size=v), "TrainingConfig.batch_size"),
        (lambda v: FastGRNNConfig(hidden_dim=v), "FastGRNNConfig.hidden_dim"),
        (lambda v: FastGRNNConfig(rank=v), "FastGRNNConfig.rank"),
    ],
)
@pytest.mark.parametrize("bad", [0, -1, float("nan"), True, "3"])
def test_configs_name_the_field_they_reject(make: Any, field: str, bad: Any) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.") + " must be"):
        make(bad)


def test_config_checks_share_one_message_shape() -> None:
    from tinydancer.candidates import FeatureConfig, RouterConfig
    from tinydancer.llm import QueryRouterConfig

    cases = [
        (lambda: RouterConfig(confidence_threshold=1.5), "RouterConfig.confidence_threshold must be a number in [0, 1], got 1.5"),
        (lambda: FeatureConfig(recency_decay=-1.0), "FeatureConfig.recency_decay must be a number >= 0, got -1.0"),
        (lambda: QueryRouterConfig(validation_fraction=0.5), "QueryRouterConfig.validation_fraction must be a number in (0, 0.5), got 0.5"),
        (lambda: TrainingConfig(early_stopping_patience=0), "TrainingConfig.early_stopping_patience must be None or an integer >= 1, got 0"),
    ]
    for make, message in cases:
        with pytest.raises(ValidationError) as info:
            make()
        assert str(info.value) == message
    assert TrainingConfig(early_stopping_patience=None).early_stopping_patience is None
    assert FastGRNNConfig(rank=np.int64(4)).rank == 4


def test_distillation_loss_is_the_documented_formula() -> None:
    """L = α·T²·BCE(σ(s/T), q) + (1−α)·BCE(σ(s), y), averaged over the batch, and its gradient
    α·T·(σ(s/T) − q) + (1−α)·(σ(s) − y) per sample: the T² factor keeps the soft term's gradient
    on the scale of the hard one (Hinton et al.).  Written out by hand here, number by number."""
    from tinydancer.nn.losses import LossSpec, objective

    s = np.array([[-2.0], [0.3], [1.7], [4.0]])
    y = np.array([[0.0], [1.0], [1.0], [0.0]])
    q = np.array([[0.2], [0.6], [0.9], [0.4]])
    t, a = 2.5, 0.6

    def sig(v: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-v))

    def bce(p: np.ndarray, target: np.ndarray) -> np.ndarray:
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))

    expected = np.mean(a * t * t * bce(sig(s / t), q) + (1 - a) * bce(sig(s), y))
    expected_grad = (a * t * (sig(s / t) - q) + (1 - a) * (sig(s) - y)) / len(s)
    loss, grad = objective(s, y, LossSpec("sigmoid", distillation=True, temperature=t, alpha=a), q)
    assert loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12)
