"""Off-policy evaluation of a query router on the gateway's logged exploration, and the promotion
gate built on it (Vowpal Wabbit's vocabulary: logged propensities, IPS, doubly robust).

The logs say how one model did on each prompt: the one the call went to.  A router that would
have sent some of those prompts elsewhere cannot be scored on them directly, and scoring it on
the prompts where it agrees with the logging policy alone favours whatever that policy already
did.  With exploration on, every decision carries the probability ``p`` of the model it went to
(server/exploration.py), and the mean quality a router's policy π would get is estimated
without bias by

- **IPS**:  mean_i  1[a_i = π(x_i)] / p_i · y_i
- **doubly robust (DR)**:  mean_i  q̂(x_i, π(x_i)) + 1[a_i = π(x_i)] / p_i · (y_i − q̂(x_i, a_i))

where ``q̂`` is a direct model of quality.  We use DR with the *current* router's own predicted
qualities as ``q̂`` for both routers compared: the current router was not trained on the
held-out rows the estimate uses, and DR stays unbiased whatever ``q̂`` is (it only needs the
propensities to be right); a good ``q̂`` shrinks the variance that the 1/p weights of the rare
explored calls bring.  Both estimates are reported.

Each router is evaluated at the same operating point: for two models, the same share of strong
calls on the evaluated prompts (each router's threshold is that quantile of its own scores,
as the gateway's live operating point would set it); for more models, each router's stored point.

**The gate.**  The comparison is paired: per row, the new router's DR term minus the current
one's, so the noise the two share cancels.  A 95 % percentile bootstrap over rows gives an
interval for the mean difference.  The new router is promoted only if the interval's *lower*
end is at least ``-margin`` (a non-inferiority test: "not worse by more than ``margin`` of
quality, with 95 % confidence"), and only on at least ``min_rows`` logged rows with a
propensity; with fewer, the off-policy gate does not decide and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LoggedExploration", "OffPolicyGate", "bootstrap_interval", "dr_terms", "ips_terms", "offpolicy_gate",
           "policy_choices", "simulated_log"]


@dataclass
class LoggedExploration:
    """Logged decisions with a propensity: the prompt's embedding, the model (index) tried first,
    its observed quality (0..1) and its probability under the logging policy."""

    x: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray

    def __post_init__(self) -> None:
        self.action = np.asarray(self.action, dtype=np.int64)
        self.reward = np.asarray(self.reward, dtype=np.float64)
        self.propensity = np.asarray(self.propensity, dtype=np.float64)
        if not (len(self.x) == len(self.action) == len(self.reward) == len(self.propensity)):
            raise ValueError("x, action, reward and propensity need one entry per logged decision")
        if len(self.propensity) and not ((self.propensity > 0) & (self.propensity <= 1)).all():
            raise ValueError("propensities must lie in (0, 1]")

    def __len__(self) -> int:
        return len(self.action)


def simulated_log(x: np.ndarray, choice: np.ndarray, success: np.ndarray, share: float,
                  rng: np.random.Generator) -> LoggedExploration:
    """What the gateway's exploration would log where the truth is known (benchmarks, tests): the
    logging policy picks ``choice``; with probability ``share`` a call goes to one of the other
    models instead, uniformly (server/exploration.py); the served model succeeds with probability
    ``success[i, model]``."""
    n, m = success.shape
    explored = rng.random(n) < share
    other = (choice + 1 + rng.integers(0, m - 1, n)) % m  # uniform among the m - 1 others
    action = np.where(explored, other, choice)
    reward = (rng.random(n) < success[np.arange(n), action]).astype(np.float64)
    return LoggedExploration(x, action, reward, np.where(explored, share / (m - 1), 1.0 - share))


def policy_choices(router: Any, x: np.ndarray, strong_share: float | None = None) -> np.ndarray:
    """The model index the router picks for each row of ``x``: for two models at ``strong_share``
    of these rows (a quantile of its own scores), else at its stored operating point."""
    out = router.estimate(x)
    if router.is_pair and strong_share is not None:
        threshold = float(np.quantile(out[:, 2], 1.0 - strong_share)) if len(out) else 0.0
        return np.asarray(router.choose(out, threshold=threshold))
    return np.asarray(router.choose(out))


def ips_terms(choice: np.ndarray, data: LoggedExploration) -> np.ndarray:
    """Per-row IPS terms; their mean estimates the policy's mean quality."""
    return (choice == data.action) / data.propensity * data.reward


def dr_terms(choice: np.ndarray, data: LoggedExploration, direct: np.ndarray) -> np.ndarray:
    """Per-row doubly robust terms, ``direct`` being the (N, M) predicted quality of every model."""
    rows = np.arange(len(data))
    return direct[rows, choice] + (choice == data.action) / data.propensity * (data.reward - direct[rows, data.action])


def bootstrap_interval(terms: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                       chunk: int = 250) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``terms`` (rows resampled with replacement)."""
    n = len(terms)
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        means[start:start + size] = terms[rng.integers(0, n, (size, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _summary(terms: np.ndarray, seed: int) -> dict[str, Any]:
    low, high = bootstrap_interval(terms, seed=seed)
    return {"estimate": float(terms.mean()) if len(terms) else float("nan"), "ci95": [low, high]}


@dataclass
class OffPolicyGate:
    """The evidence a promotion rests on (stored in the registry) and its verdict."""

    passed: bool | None  # None: too few rows to decide
    summary: str
    evidence: dict[str, Any]


def offpolicy_gate(current: Any, new: Any, data: LoggedExploration, *, strong_share: float | None = None,
                   margin: float = 0.01, min_rows: int = 100, seed: int = 0) -> OffPolicyGate:
    """Compare ``new`` with ``current`` on logged exploration (see the module docstring for the rule)."""
    # an explored draw has propensity share/k <= 0.2 (the config caps share at 0.2); the router's own, 1 - share >= 0.8
    n, explored = len(data), int((data.propensity < 0.5).sum())
    base = {"n": n, "explored": explored, "estimator": "doubly robust (direct model: the current router)",
            "margin": margin, "rule": f"promote if the 95% CI of new - current has lower end >= -{margin:g}",
            "strong_share": strong_share}
    if n < min_rows:
        return OffPolicyGate(None, f"off-policy gate: {n} logged decisions with a propensity, fewer than {min_rows}: "
                             "not decided (turn exploration on in gateway.yaml)", base)
    if current.is_pair and strong_share is None:  # the share the current router sends to strong here
        strong_share = float(np.mean(policy_choices(current, data.x) == current.strong))
        base["strong_share"] = strong_share
    direct = np.clip(current.estimate(data.x)[:, : len(current.models)].astype(np.float64), 0.0, 1.0)
    terms = {}
    for name, router in (("current", current), ("new", new)):
        choice = policy_choices(router, data.x, strong_share)
        terms[name] = dr_terms(choice, data, direct)
        base[name] = {**_summary(terms[name], seed), "ips": float(ips_terms(choice, data).mean()),
                      "agrees_with_log": float(np.mean(choice == data.action))}
    diff = terms["new"] - terms["current"]
    base["difference"] = _summary(diff, seed)
    low = base["difference"]["ci95"][0]
    passed = low >= -margin
    summary = (f"off-policy (DR, n={n}, {explored} explored): current {base['current']['estimate']:.4f} "
               f"[{base['current']['ci95'][0]:.4f}, {base['current']['ci95'][1]:.4f}], new {base['new']['estimate']:.4f} "
               f"[{base['new']['ci95'][0]:.4f}, {base['new']['ci95'][1]:.4f}], difference "
               f"{base['difference']['estimate']:+.4f} (95% CI lower end {low:+.4f} "
               + (">=" if passed else "<") + f" -{margin:g})")
    base["passed"] = passed
    return OffPolicyGate(passed, summary, base)
