"""FastGRNN: the equations, the gradients, inference shapes and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinydancer import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, ValidationError
from tinydancer.nn.data import Batch


def reference_forward(model: FastGRNN, x: np.ndarray) -> np.ndarray:
    """The paper's equations written plainly, one sample and one step at a time (float64)."""
    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    w = p["W"] if "W" in p else p["W1"] @ p["W2"]
    u = p["U"] if "U" in p else p["U1"] @ p["U2"]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    zeta, nu = sig(p["zeta"][0]), sig(p["nu"][0])
    out = []
    for seq in x:
        h = np.zeros(model.config.hidden_dim)
        for x_t in seq:
            pre = w @ x_t + u @ h
            z = sig(pre + p["b_z"])
            c = np.tanh(pre + p["b_h"])
            h = (zeta * (1 - z) + nu) * c + z * h
        logits = p["fc_w"] @ h + p["fc_b"]
        if model.config.output_activation == "sigmoid":
            out.append(sig(logits))
        else:
            e = np.exp(logits - logits.max())
            out.append(e / e.sum())
    return np.array(out)


CONFIGS = [
    FastGRNNConfig(input_dim=4, hidden_dim=6, output_dim=1),
    FastGRNNConfig(input_dim=4, hidden_dim=6, output_dim=1, rank=3),
    FastGRNNConfig(input_dim=4, hidden_dim=6, output_dim=3),
    FastGRNNConfig(input_dim=4, hidden_dim=6, output_dim=3, output_activation="sigmoid", w_rank=2, u_rank=4),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"O{c.output_dim}-{c.output_activation}-r{c.rank or c.w_rank}")
@pytest.mark.parametrize("steps", [1, 5])
def test_inference_matches_the_paper_equations(config: FastGRNNConfig, steps: int) -> None:
    model = FastGRNN(config, seed=3)
    model.set_params(zeta=[0.3], nu=[-1.2])  # move the scalars away from their init
    x = np.random.default_rng(0).normal(size=(5, steps, config.input_dim))
    expected = reference_forward(model, x)
    np.testing.assert_allclose(model.forward(x.astype(np.float32)), expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(model.astype(np.float64).forward(x), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"O{c.output_dim}-{c.output_activation}-r{c.rank or c.w_rank}")
@pytest.mark.parametrize("steps", [1, 5])
def test_training_forward_agrees_with_inference_forward(config: FastGRNNConfig, steps: int) -> None:
    model = FastGRNN(config, seed=4).astype(np.float64)
    x = np.random.default_rng(1).normal(size=(6, steps, config.input_dim))
    logits, _cache = model.forward_train(x)
    np.testing.assert_allclose(logits, model.logits(x), rtol=1e-12, atol=1e-13)


def numeric_gradient(trainer: Trainer, model: FastGRNN, batch: Batch, eps: float = 1e-6) -> np.ndarray:
    flat = model.get_flat()
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        for sign in (1, -1):
            shifted = flat.copy()
            shifted[i] += sign * eps
            model.flat[...] = shifted
            loss, _ = trainer.loss_and_grad(model, batch)
            grad[i] += sign * loss / (2 * eps)
    model.flat[...] = flat
    return grad


def _targets(rng: np.random.Generator, shape: tuple[int, int], activation: str) -> np.ndarray:
    y = rng.random(shape)
    return y / y.sum(axis=1, keepdims=True) if activation == "softmax" else y


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"O{c.output_dim}-{c.output_activation}-r{c.rank or c.w_rank}")
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("distill", [False, True])
def test_every_gradient_matches_finite_differences(config: FastGRNNConfig, steps: int, distill: bool) -> None:
    """BPTT for every parameter (W/U or factors, biases, zeta, nu, the head) in float64."""
    model = FastGRNN(config, seed=5).astype(np.float64)
    rng = np.random.default_rng(6)
    b, o = 7, config.output_dim
    act = config.output_activation or "sigmoid"
    batch = Batch(
        features=rng.normal(size=(b, steps, config.input_dim)),
        labels=_targets(rng, (b, o), act),
        soft_targets=_targets(rng, (b, o), act) if distill else None,
        weights=rng.random(b) + 0.2,
    )
    trainer = Trainer(
        config,
        TrainingConfig(l2_reg=0.05, enable_distillation=distill, distillation_temperature=2.5, distillation_alpha=0.6),
    )
    _loss, analytic = trainer.loss_and_grad(model, batch)
    numeric = numeric_gradient(trainer, model, batch)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
    names = model.unflatten(analytic)
    for name in ("zeta", "nu", "fc_w", "fc_b", "b_z", "b_h"):
        assert np.abs(names[name]).sum() > 0, f"{name} received no gradient"


def test_sample_weight_two_equals_a_duplicated_row() -> None:
    config = FastGRNNConfig(input_dim=3, hidden_dim=4)
    model = FastGRNN(config, seed=0).astype(np.float64)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1, 3))
    y = rng.random((3, 1))
    trainer = Trainer(config, TrainingConfig(l2_reg=0.0))
    weighted = trainer.loss_and_grad(model, Batch(x, y, None, np.array([2.0, 1.0, 1.0])))
    duplicated = trainer.loss_and_grad(model, Batch(np.concatenate([x[:1], x]), np.concatenate([y[:1], y]), None, None))
    assert weighted[0] == pytest.approx(duplicated[0], rel=1e-12)
    np.testing.assert_allclose(weighted[1], duplicated[1], rtol=1e-10)


def test_edgeml_initialisation_and_seed_reproducibility() -> None:
    config = FastGRNNConfig(input_dim=8, hidden_dim=32, rank=4, nu=-4.0, zeta=1.0)
    a, b = FastGRNN(config, seed=7), FastGRNN(config, seed=7)
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    assert not np.array_equal(a.get_flat(), FastGRNN(config, seed=8).get_flat())
    p = a.params
    assert np.all(p["b_z"] == 1.0) and np.all(p["b_h"] == 1.0)
    assert p["zeta"][0] == 1.0 and p["nu"][0] == -4.0
    assert abs(p["W1"].std() - 0.1) < 0.03 and abs(p["U2"].std() - 0.1) < 0.03
    with pytest.raises(ValueError):
        p["W1"][0, 0] = 1.0  # read-only view: changes go through set_params


def test_output_shapes() -> None:
    model = FastGRNN(FastGRNNConfig(input_dim=5, hidden_dim=8, output_dim=3), seed=0)
    assert model.forward(np.zeros(5)).shape == (3,)
    assert model.forward(np.zeros((4, 5))).shape == (4, 3)
    assert model.forward(np.zeros((4, 7, 5))).shape == (4, 3)
    assert model.forward_batch([[0.0] * 5, [1.0] * 5]).shape == (2, 3)
    np.testing.assert_allclose(model.forward(np.ones((4, 5))).sum(axis=1), 1.0, rtol=1e-6)


def test_initial_hidden_state_changes_the_output_and_matches_a_longer_sequence() -> None:
    model = FastGRNN(FastGRNNConfig(input_dim=3, hidden_dim=5), seed=0).astype(np.float64)
    x = np.random.default_rng(0).normal(size=(2, 2, 3))
    h1 = model.hidden_state(x[:, :1])
    # running step 2 from h1 equals running the two-step sequence
    np.testing.assert_allclose(model.forward(x[:, 1], initial_hidden=h1), model.forward(x), rtol=1e-12)
    with pytest.raises(ValidationError, match="initial_hidden"):
        model.forward(x[:, 1], initial_hidden=np.zeros(4))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([1.0, np.nan, 0, 0, 0]), "non-finite"),
        (np.array([[1.0, 2, 3, 4, np.inf]]), "non-finite"),
        (np.zeros(4), "expects 5 features"),
        (np.zeros((2, 6)), "expects 5 features"),
        ([[1, 2, 3, 4, 5], [1, 2, 3]], "ragged"),
        (np.zeros((0, 5)), "empty"),
        ("hello", "could not be read"),
        (np.zeros((1, 1, 1, 5)), "must be"),
    ],
)
def test_forward_rejects_bad_input_with_a_clear_message(bad: object, message: str) -> None:
    model = FastGRNN(FastGRNNConfig(), seed=0)
    with pytest.raises(ValidationError, match=message):
        model.forward(bad)


@pytest.mark.parametrize(
    "kwargs",
    [{"input_dim": 0}, {"hidden_dim": -1}, {"rank": 0}, {"nu": float("nan")}, {"output_activation": "relu"},
     {"output_dim": 1, "output_activation": "softmax"}, {"hidden_dim": 2.5}],
)
def test_config_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        FastGRNNConfig(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    x=arrays(np.float32, st.tuples(st.integers(1, 6), st.just(5)), elements=st.floats(-50, 50, width=32)),
    seed=st.integers(0, 1000),
)
def test_batch_rows_are_independent_and_probabilities(x: np.ndarray, seed: int) -> None:
    model = FastGRNN(FastGRNNConfig(rank=2), seed=seed)
    batch = model.forward(x)
    assert np.all((batch >= 0) & (batch <= 1))
    rows = np.stack([model.forward(row) for row in x])
    np.testing.assert_allclose(batch, rows, rtol=1e-6, atol=1e-7)


def test_l2_penalises_the_weight_matrices_and_nothing_else() -> None:
    """l2_reg/2 · Σw² over W (or its factors), U (or its factors) and the head's weights; biases,
    zeta and nu are not shrunk.  A finite-difference check cannot see a wrong scope, this can."""
    config = FastGRNNConfig(input_dim=3, hidden_dim=4, rank=2)
    model = FastGRNN(config, seed=1).astype(np.float64)
    rng = np.random.default_rng(2)
    batch = Batch(rng.normal(size=(5, 2, 3)), rng.random((5, 1)), None, None)
    loss0, grad0 = Trainer(config, TrainingConfig(l2_reg=0.0)).loss_and_grad(model, batch)
    loss1, grad1 = Trainer(config, TrainingConfig(l2_reg=0.1)).loss_and_grad(model, batch)
    params = model.params
    weights = ("W1", "W2", "U1", "U2", "fc_w")
    assert loss1 - loss0 == pytest.approx(0.05 * sum(float((params[n] ** 2).sum()) for n in weights), rel=1e-12)
    added = model.unflatten(grad1 - grad0)
    for name, value in added.items():
        expected = 0.1 * params[name] if name in weights else np.zeros_like(params[name])
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15, err_msg=name)
