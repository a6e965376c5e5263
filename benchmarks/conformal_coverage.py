"""Empirical coverage of the candidate router's conformal sets against their nominal level.

The default model (``make demo`` writes it) is calibrated on 3,200 outcomes of simulated traffic
(400 requests × 8 candidates) drawn afresh for each of 10 seeds. Each calibration is then checked
on the same 20,000 fresh outcomes (2,500 requests): the share whose observed label is in the
prediction set at level 1 − alpha.  Split-conformal promises the nominal level on average.

    .venv/bin/python benchmarks/conformal_coverage.py
"""

from __future__ import annotations

import numpy as np
from _common import console, environment, table

from tinydancer.demo import traffic_dataset, train_default_router_model
from tinydancer.nn.model import FastGRNN
from tinydancer.candidates import default_model_path
from tinydancer.candidates import ConformalCalibrator


def main() -> None:
    console.print(environment())
    path = default_model_path()
    if not path.is_file():
        train_default_router_model(path)
    model = FastGRNN.load(path)
    x_new, y_new = traffic_dataset(2500, seed=12)
    p_new = model.predict(x_new)[:, 0]
    labels = y_new.astype(int)
    calibrations = [ConformalCalibrator.fit(model.predict(x)[:, 0], y)
                    for x, y in (traffic_dataset(400, seed=s) for s in range(20, 30))]
    rows = []
    for alpha in (0.05, 0.1, 0.15, 0.2):
        cov = np.array([cal.prediction_sets(p_new, alpha)[np.arange(len(labels)), labels].mean() for cal in calibrations])
        rows.append([f"{1 - alpha:.2f}", f"{cov.mean():.4f}", f"{cov.min():.4f} – {cov.max():.4f}", f"{cov.mean() - (1 - alpha):+.4f}"])
    console.print(table("conformal sets of the default candidate model: coverage on 20,000 fresh outcomes, 10 calibrations",
                        ["nominal", "mean coverage", "range", "mean − nominal"], rows))


if __name__ == "__main__":
    main()
