"""How much AIQ can task-level information buy on LLMRouter's test split? (issue 3's 0.60 target)

Every embedding-based predictor we tried lands at AIQ 0.565-0.575 on the 500 test queries.  This
script measures, on the same MiniLM embeddings:

- ridge and kNN(50), the issue's references;
- a *cluster router*: k-means on the train and test embeddings together (no scores), each
  cluster's mean score per model on train;
- the same with each cluster's mean score per model measured **on the test rows themselves** —
  not a router (it peeks at the answers), an optimistic bound on what routing by task family
  (as far as MiniLM's clusters see it) could reach — at large k it also overfits the 500 rows;
- a cost-sensitive softmax regression trained per λ on soft targets softmax((Q − λ·c)/0.05),
  which optimises the choice instead of the scores;
- ridge with training queries reweighted towards the test split's task mix (a train-vs-test
  logistic classifier on the embeddings; it uses the test queries, not their scores);
- the oracle;

and, in a second table, how the task mix differs between train and test (k-means, k = 14), with
ridge's AIQ on a validation slice of train next to its test AIQ.

    .venv/bin/python benchmarks/llmrouter_ceiling.py
"""

from __future__ import annotations

import numpy as np
from _common import console, table
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression, Ridge

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.evaluation import aiq, lambda_grid, oracle_points, sweep_points
from tinydancer.llm.tables import load_llmrouter, shared_data_dir


def main() -> None:
    data = shared_data_dir()
    if data is None:
        raise SystemExit("needs ../shared/data (LLMRouter's dcrouter_{train,test}.json)")
    train, test = load_llmrouter(data, "train"), load_llmrouter(data, "test")
    embedder = make_embedder("minilm")
    x_tr, x_te = embedder.embed(train.queries), embedder.embed(test.queries)
    q_tr, q_te, c_tr, c_te = train.scores, test.scores, train.costs, test.costs
    lo, hi = float(test.mean_costs.min()), float(test.mean_costs.max())

    def aiq_of(pred: np.ndarray) -> float:
        pts = [sweep_points(np.argmax(pred - lam * c_te, 1), q_te, c_te) for lam in lambda_grid(pred, c_te, 201)]
        return aiq([p[0] for p in pts], [p[1] for p in pts], lo, hi)

    rows = [["ridge (alpha 10)", f"{aiq_of(Ridge(alpha=10.0).fit(x_tr, q_tr).predict(x_te)):.4f}", "router"]]
    nearest = np.argpartition(-(x_te @ x_tr.T), 49, axis=1)[:, :50]
    rows.append(["kNN(50), cosine", f"{aiq_of(q_tr[nearest].mean(1)):.4f}", "router"])
    for k in (8, 30, 60):
        km = KMeans(k, n_init=4, random_state=0).fit(np.vstack([x_tr, x_te]))
        l_tr, l_te = km.labels_[: len(x_tr)], km.labels_[len(x_tr):]
        fitted = np.array([q_tr[l_tr == c].mean(0) if (l_tr == c).any() else q_tr.mean(0) for c in range(k)])
        peeked = np.array([q_te[l_te == c].mean(0) if (l_te == c).any() else q_te.mean(0) for c in range(k)])
        rows.append([f"cluster router, k = {k} (train means)", f"{aiq_of(fitted[l_te]):.4f}", "router"])
        rows.append([f"cluster means measured on test, k = {k}", f"{aiq_of(peeked[l_te]):.4f}", "bound (peeks)"])

    points = [sweep_points(np.argmax(x_te @ w + b, 1), q_te, c_te)
              for w, b in (_soft_choice(x_tr, q_tr - lam * c_tr) for lam in (0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8))]
    rows.append(["cost-sensitive softmax, 9 values of λ", f"{aiq([p[0] for p in points], [p[1] for p in points], lo, hi):.4f}",
                 "router"])
    domain = LogisticRegression(max_iter=2000).fit(np.vstack([x_tr, x_te]), np.r_[np.zeros(len(x_tr)), np.ones(len(x_te))])
    p_test = domain.predict_proba(x_tr)[:, 1]
    weights = np.minimum(p_test / (1 - p_test) * len(x_tr) / len(x_te), 20.0)
    rows.append(["ridge (alpha 10), reweighted to the test mix", f"{aiq_of(Ridge(alpha=10.0).fit(x_tr, q_tr, sample_weight=weights).predict(x_te)):.4f}",
                 "peeks (test inputs)"])
    ox, oy = oracle_points(q_te, c_te)
    rows.append(["oracle", f"{aiq(ox, oy, lo, hi):.4f}", "bound"])
    console.print(table("LLMRouter test split (500 queries), MiniLM embeddings: AIQ", ["predictor", "AIQ", "kind"], rows))

    # the test split's task mix is not the training split's
    km = KMeans(14, n_init=4, random_state=0).fit(np.vstack([x_tr, x_te]))
    l_tr, l_te = km.labels_[: len(x_tr)], km.labels_[len(x_tr):]
    mix = []
    for c in np.argsort(-np.bincount(l_te, minlength=14)):
        example = train.queries[int(np.flatnonzero(l_tr == c)[0])][:48].replace("\n", " ")
        mix.append([f"{(l_tr == c).mean():.1%}", f"{(l_te == c).mean():.1%}", f"{q_tr[l_tr == c].mean(0).max():.2f}", example])
    console.print(table("Task mix (k-means, k = 14): share of train and test queries", ["train", "test", "best single model, train",
                                                                                       "a training query"], mix))
    perm = np.random.default_rng(0).permutation(len(x_tr))
    val, fit = perm[:1000], perm[1000:]
    pred = Ridge(alpha=10.0).fit(x_tr[fit], q_tr[fit]).predict(x_tr[val])
    c_val = c_tr[val]
    pts = [sweep_points(np.argmax(pred - lam * c_val, 1), q_tr[val], c_val) for lam in lambda_grid(pred, c_val, 201)]
    console.print(f"ridge (alpha 10) AIQ on 1,000 held-out training queries: "
                  f"{aiq([p[0] for p in pts], [p[1] for p in pts], lo, hi):.4f} (on test: {rows[0][1]})")


def _soft_choice(x: np.ndarray, utility: np.ndarray, tau: float = 0.05, l2: float = 1e-3,
                 epochs: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression on soft targets softmax(utility / tau), full-batch Adam."""
    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    target = softmax(utility / tau)
    n, k = target.shape
    params = [np.zeros((x.shape[1], k)), np.zeros(k)]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    for t in range(1, epochs + 1):
        grad = (softmax(x @ params[0] + params[1]) - target) / n
        for p, g, (m, v) in zip(params, (x.T @ grad + l2 * params[0], grad.sum(0)), moments):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return params[0], params[1]


if __name__ == "__main__":
    main()
