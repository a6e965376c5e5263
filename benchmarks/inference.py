"""Inference latency of the seed example's 5→16 model, against the same cell in PyTorch.

Targets (issue 2): one sample <= 15 µs and a batch of 32 <= 60 µs through the public
``FastGRNN.forward`` (input validation included); the seed promises < 100 µs and < 1 ms.
PyTorch runs the identical weights under ``torch.inference_mode()`` on one thread.

    .venv/bin/python benchmarks/inference.py
"""

from __future__ import annotations

import numpy as np
from _common import console, environment, table, time_call, us
from training_speed import CONFIG, torch_model

from tinydancer import FastGRNN


def main() -> None:
    import torch

    torch.set_num_threads(1)
    console.print(environment() + f", torch {torch.__version__} (1 thread)")
    rng = np.random.default_rng(0)
    rows = []
    for label, config in (("dense", CONFIG.__class__(**{**CONFIG.to_dict(), "rank": None})), ("rank 8", CONFIG)):
        model = FastGRNN(config, seed=0)
        tm = torch_model(model)
        for batch in (1, 32, 1024):
            x = rng.normal(size=(batch, 5)).astype(np.float32)
            one = x[0] if batch == 1 else x
            ours = time_call(lambda: model.forward(one))
            xt = torch.tensor(x[:, None, :])

            def run_torch() -> None:
                with torch.inference_mode():
                    torch.sigmoid(tm(xt))

            peer = time_call(run_torch)
            np.testing.assert_allclose(torch.sigmoid(tm(xt)).detach().numpy(), model.forward(x), rtol=1e-5, atol=1e-6)
            rows.append([f"{label}, batch {batch}", us(ours), us(peer), f"{peer / ours:.1f}x"])
    console.print(table("FastGRNN.forward, 5 features → 16 hidden → 1 output", ["case", "tinydancer", "PyTorch", "PyTorch/ours"], rows))
    console.print("seed targets: < 100 µs per sample, < 1 ms per batch of 32; issue 2: <= 15 µs and <= 60 µs")


if __name__ == "__main__":
    main()
