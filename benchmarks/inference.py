"""Inference latency of the seed example's 5→16 model, against the same cell in PyTorch.

Targets (issue 2): one sample <= 15 µs and a batch of 32 <= 60 µs through the public
``FastGRNN.forward`` (input validation included); the seed promises < 100 µs and < 1 ms.
PyTorch runs the identical weights under ``torch.inference_mode()`` on one thread, twice:

* as a plain module that computes everything each call (W1·W2, σ(ζ), σ(ν), both gates, U·h);
* with the plan our model caches (:func:`tinydancer.nn.cell.compile_plan`: W1·W2 multiplied
  out, σ(ζ) and σ(ν) precomputed, gate and candidate fused into one matrix, U·h skipped
  because h_0 = 0 for one step).  That is the like-for-like peer; the first shows what the
  plan itself is worth.

    .venv/bin/python benchmarks/inference.py
"""

from __future__ import annotations

import numpy as np
from _common import console, environment, table, time_call, us
from training_speed import CONFIG, torch_model

from tinydancer import FastGRNN
from tinydancer.nn.cell import compile_plan


def torch_planned(model: FastGRNN):
    """The model's compiled inference plan, evaluated by PyTorch: the same arithmetic as ours."""
    import torch

    plan = compile_plan(model.params, np.dtype(np.float32))
    a_w, a_b = torch.tensor(plan.a_w), torch.tensor(plan.a_b)
    fc_t, fc_b = torch.tensor(plan.fc_half_t), torch.tensor(plan.fc_half_b)
    alpha, beta, hd = plan.alpha, plan.beta, plan.hidden_dim

    def forward(x):  # (B, D), one step from h_0 = 0: U·h vanishes
        a = torch.tanh(torch.addmm(a_b, x, a_w))
        h = (alpha - beta * a[:, :hd]) * a[:, hd:]
        return torch.tanh(torch.addmm(fc_b, h, fc_t)) * 0.5 + 0.5

    return forward


def main() -> None:
    import torch

    torch.set_num_threads(1)
    console.print(environment() + f", torch {torch.__version__} (1 thread)")
    rng = np.random.default_rng(0)
    rows = []
    for label, config in (("dense", CONFIG.__class__(**{**CONFIG.to_dict(), "rank": None})), ("rank 8", CONFIG)):
        model = FastGRNN(config, seed=0)
        tm = torch_model(model)
        planned = torch_planned(model)
        for batch in (1, 32, 1024):
            x = rng.normal(size=(batch, 5)).astype(np.float32)
            one = x[0] if batch == 1 else x
            ours = time_call(lambda: model.forward(one))
            xt = torch.tensor(x[:, None, :])
            x2 = torch.tensor(x)

            def run_torch() -> None:
                with torch.inference_mode():
                    torch.sigmoid(tm(xt))

            def run_planned() -> None:
                with torch.inference_mode():
                    planned(x2)

            peer = time_call(run_torch)
            peer_planned = time_call(run_planned)
            with torch.inference_mode():
                np.testing.assert_allclose(torch.sigmoid(tm(xt)).numpy(), model.forward(x), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(planned(x2).numpy(), model.forward(x), rtol=1e-5, atol=1e-6)
            rows.append([f"{label}, batch {batch}", us(ours), us(peer), f"{peer / ours:.1f}x", us(peer_planned),
                         f"{peer_planned / ours:.1f}x"])
    console.print(table("FastGRNN.forward, 5 features → 16 hidden → 1 output",
                        ["case", "tinydancer", "PyTorch module", "module/ours", "PyTorch, same plan", "same plan/ours"], rows))
    console.print("seed targets: < 100 µs per sample, < 1 ms per batch of 32; issue 2: <= 15 µs and <= 60 µs")


if __name__ == "__main__":
    main()
