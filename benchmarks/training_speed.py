"""Training speed on the seed's table, against the same FastGRNN cell written in PyTorch.

The seed's table: 1,000 samples (batch 32), 10,000 (batch 64), 100,000 (batch 128), 50 epochs
each, in 10 s, 75 s and 600 s.  Both trainers run 50 epochs with a 20 % validation split (the
validation pass counts), Adam, global-norm clipping at 5, L2 1e-5, the same initial weights and
the same data.  PyTorch runs on one thread (torch.set_num_threads(1)): on 2 cores its default
threading makes a small training step ~16x slower.  Ours is timed twice: as shipped (NumPy's
BLAS may use both cores) and with BLAS held to one thread (threadpoolctl), which is the
like-for-like comparison with single-threaded PyTorch.  The first row also checks that the two
implementations compute the same gradient.

    .venv/bin/python benchmarks/training_speed.py            # the full table (~3 minutes)
    .venv/bin/python benchmarks/training_speed.py --quick    # 1k and 10k only
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import console, environment, table
from threadpoolctl import threadpool_info, threadpool_limits

from tinydancer import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, TrainingDataset
from tinydancer.nn.data import Batch
from tinydancer.synthetic import seed_example_data

SEED_TABLE = [(1_000, 32, 10.0), (10_000, 64, 75.0), (100_000, 128, 600.0)]
EPOCHS = 50
CONFIG = FastGRNNConfig(input_dim=5, hidden_dim=16, output_dim=1, rank=8, nu=0.8, zeta=1.2)


def torch_model(ours: FastGRNN):
    """The same cell in PyTorch, initialised with ``ours``'s weights (dense or low-rank)."""
    import torch

    class TorchFastGRNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.tensor(np.array(v))) for k, v in ours.params.items()})

        def forward(self, x):  # (B, T, D)
            p = self.p
            w = p["W"] if "W" in p else p["W1"] @ p["W2"]
            u = p["U"] if "U" in p else p["U1"] @ p["U2"]
            h = torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype)
            zeta, nu = torch.sigmoid(p["zeta"]), torch.sigmoid(p["nu"])
            for t in range(x.shape[1]):
                pre = x[:, t] @ w.T + h @ u.T
                z = torch.sigmoid(pre + p["b_z"])
                c = torch.tanh(pre + p["b_h"])
                h = (zeta * (1 - z) + nu) * c + z * h
            return h @ p["fc_w"].T + p["fc_b"]

        def weights(self):
            return [v for k, v in self.p.items() if k in ("W", "W1", "W2", "U", "U1", "U2", "fc_w")]

    return TorchFastGRNN()


def train_torch(model, train: TrainingDataset, val: TrainingDataset, cfg: TrainingConfig, epochs: int) -> tuple[float, float]:
    """The same loop as tinydancer's Trainer, in PyTorch. Returns (seconds, val accuracy)."""
    import torch

    x = torch.tensor(train.features_3d())
    y = torch.tensor(train.labels_2d())
    xv = torch.tensor(val.features_3d())
    yv = torch.tensor(val.labels_2d())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_decay_step, gamma=cfg.lr_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss = loss + 0.5 * cfg.l2_reg * sum((w * w).sum() for w in model.weights())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        sched.step()
        with torch.no_grad():
            val_logits = model(xv)
            loss_fn(val_logits, yv).item()  # the validation pass counts, as in ours
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = ((model(xv) >= 0).float() == yv).float().mean().item()
    return seconds, acc


def gradient_agreement(ours: FastGRNN, dataset: TrainingDataset, cfg: TrainingConfig) -> float:
    """Max |difference| between our BPTT gradient and torch autograd on one batch (float64)."""
    import torch

    m64 = ours.astype(np.float64)
    batch = Batch(dataset.features_3d()[:64].astype(np.float64), dataset.labels_2d()[:64].astype(np.float64), None, None)
    _loss, ours_grad = Trainer(None, cfg).loss_and_grad(m64, batch)
    tm = torch_model(ours).double()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(tm(torch.tensor(batch.features)), torch.tensor(batch.labels))
    loss = loss + 0.5 * cfg.l2_reg * sum((w * w).sum() for w in tm.weights())
    loss.backward()
    views = m64.unflatten(ours_grad)
    return max(float(np.abs(views[name] - tm.p[name].grad.numpy()).max()) for name in views)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the 1k and 10k rows")
    parser.add_argument("--torch-epochs", type=int, default=5, help="epochs timed for PyTorch (per-epoch time is compared)")
    args = parser.parse_args()
    blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    console.print(environment() + f", torch {torch.__version__} (1 thread), NumPy BLAS: {blas}")

    rows = []
    for n, batch_size, seed_seconds in SEED_TABLE[:2] if args.quick else SEED_TABLE:
        x, y = seed_example_data(n, seed=0)
        dataset = TrainingDataset(x, y)
        dataset.normalize()
        cfg = TrainingConfig(learning_rate=0.01, batch_size=batch_size, epochs=EPOCHS, early_stopping_patience=None, lr_decay_step=20)
        model = FastGRNN(CONFIG, seed=0)
        torch_start = torch_model(model)
        if n == 1_000:
            console.print(f"gradient check against torch autograd (float64): max |diff| = {gradient_agreement(model, dataset, cfg):.2e}")
        one_thread = FastGRNN(CONFIG, seed=0)
        with threadpool_limits(limits=1, user_api="blas"):
            t0 = time.perf_counter()
            Trainer(CONFIG, cfg).train(one_thread, dataset)
            ours_1t = time.perf_counter() - t0
        t0 = time.perf_counter()
        Trainer(CONFIG, cfg).train(model, dataset)
        ours = time.perf_counter() - t0
        assert np.array_equal(one_thread.get_flat(), model.get_flat()) or np.allclose(one_thread.get_flat(), model.get_flat(), atol=1e-5)
        train, val = dataset.split(cfg.validation_split, seed=cfg.seed)
        our_acc = float(((model.forward(val.features)[:, 0] >= 0.5) == (val.labels >= 0.5)).mean())
        torch_epochs = min(EPOCHS, args.torch_epochs if n > 1_000 else EPOCHS)
        torch_s, torch_acc = train_torch(torch_start, train, val, cfg, torch_epochs)
        ours_epoch, torch_epoch = ours / EPOCHS, torch_s / torch_epochs
        ours_1t_epoch = ours_1t / EPOCHS
        rows.append([
            f"{n:,} (batch {batch_size})",
            f"{seed_seconds:.0f} s",
            f"{ours:.2f} s",
            f"{seed_seconds / ours:.0f}x",
            f"{ours_epoch * 1e3:.1f} ms",
            f"{ours_1t_epoch * 1e3:.1f} ms",
            f"{torch_epoch * 1e3:.1f} ms ({torch_epochs} ep)",
            f"{torch_epoch / ours_epoch:.1f}x",
            f"{torch_epoch / ours_1t_epoch:.1f}x",
            f"{our_acc:.3f} / {torch_acc:.3f}" + ("" if torch_epochs == EPOCHS else "*"),
        ])
    console.print(table(
        "FastGRNN training, 50 epochs, 5→16 hidden, rank 8",
        ["samples", "seed", "tinydancer", "vs seed", "per epoch", "per epoch, BLAS 1 thread", "PyTorch per epoch (1 thread)",
         "PyTorch/ours", "PyTorch/ours, both 1 thread", "val acc ours / torch"],
        rows,
    ))
    console.print("* PyTorch trained fewer epochs there; its accuracy is not comparable, its per-epoch time is.")


if __name__ == "__main__":
    main()
