"""Does a lexical head get our router ahead of kNN on MMLU?  (issue 15's one missed target)

On MMLU's test split every router on MiniLM embeddings lands between 0.761 and 0.766 AIQ, and
ours (0.765) is inside the interval of the best, kNN (0.766).  Words carry what mean-pooled embeddings blur (a formula, a named statute), so this blends the
router's advantage score with a ridge regression on TF-IDF word uni- and bigrams (hashed to
2^18 columns, sublinear tf), the ridge penalty and the blend weight chosen by the same 3 folds of
the training table that choose the router's own settings.  Printed: the folds' AIQ of the
router's network (out of fold), tuned kNN, the lexical ridge alone and the chosen blend; then
each on the test split, with the paired 95 % bootstrap interval of its difference to kNN (the
best baseline of ``robustness.py`` on MMLU).  An experiment, not a feature: nothing here ships.

    .venv/bin/python -W ignore benchmarks/mmlu_lexical.py      # ~40 s here with cached embeddings
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import console, environment, table
from quality import knn_predict
from robustness import KNN_K, bootstrap_weights, resampled_aiq, tuned

from tinydancer.llm.embeddings import make_embedder
from tinydancer.llm.evaluation import router_aiq, sweep_choices
from tinydancer.llm.query_router import QueryRouter, QueryRouterConfig
from tinydancer.llm.router_fit import problem_for
from tinydancer.llm.selection import kfold, select
from tinydancer.llm.tables import shared_data_dir, split_routellm, load_routellm_mmlu

ALPHAS = (3.0, 10.0, 30.0)
NETWORK_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)


def lexical_ridge(fit_text: list[str], target: np.ndarray, text: list[str], alpha: float) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
    from sklearn.linear_model import Ridge

    words = HashingVectorizer(n_features=2**18, ngram_range=(1, 2), alternate_sign=False, norm=None)
    counts = words.transform(fit_text)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
    return Ridge(alpha=alpha).fit(tfidf.transform(counts), target).predict(tfidf.transform(words.transform(text)))


def main(data: Path, resamples: int = 1000) -> None:
    console.print(environment())
    emb = make_embedder("minilm")
    train, test = (t.with_embeddings(emb) for t in split_routellm(load_routellm_mmlu(data)))
    config = QueryRouterConfig()
    problem, _models, _costs = problem_for(train, config, emb.id, None, None)
    pair = (problem.strong, problem.weak)
    network = select(problem).out_of_fold[:, 2]  # the chosen setting's advantage score, out of fold
    y = train.scores.astype(np.float64)
    advantage = (1.0 + y[:, pair[0]] - y[:, pair[1]]) / 2.0

    def score_aiq(score: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> float:
        out = np.zeros((len(score), 3))
        out[:, 2] = score
        return router_aiq(out, scores, costs, pair)

    folds = kfold(len(train), config.folds, config.seed)
    cv: dict[tuple[float, float], list[float]] = {}
    for f, h in folds:
        held = [train.queries[i] for i in h]
        for a in ALPHAS:
            lex = lexical_ridge([train.queries[i] for i in f], advantage[f], held, a)
            for w in NETWORK_WEIGHTS:
                cv.setdefault((a, w), []).append(score_aiq(w * network[h] + (1 - w) * lex, train.scores[h], train.costs[h]))
    alpha, weight = max(cv, key=lambda key: np.mean(cv[key]))
    k, _ = tuned(KNN_K, lambda xf, yf, xe, v: knn_predict(xf, yf, xe, int(v)), train)
    knn_cv = [score_aiq(knn_predict(train.embeddings[f], advantage[f][:, None], train.embeddings[h], int(k))[:, 0],
                        train.scores[h], train.costs[h]) for f, h in folds]

    router = QueryRouter.fit(train, config)
    est = router.estimate(test.embeddings)
    blended = est.copy()
    blended[:, 2] = weight * est[:, 2] + (1 - weight) * lexical_ridge(train.queries, advantage, test.queries, alpha)
    weights = np.vstack([np.ones((1, len(test))), bootstrap_weights(len(test), resamples)])

    def on_test(outputs: np.ndarray) -> np.ndarray:
        pred, _hit = router.remember(test.queries, outputs)
        return resampled_aiq(sweep_choices(pred, test.costs, pair), test, weights)

    knn = resampled_aiq(sweep_choices(knn_predict(train.embeddings, train.scores, test.embeddings, int(k)), test.costs),
                        test, weights)
    rows = []
    for name, folds_aiq, values in (
        (f"kNN (k = {int(k)})", knn_cv, knn),
        ("ours (as shipped)", cv[(alpha, 1.0)], on_test(est)),
        (f"lexical ridge alone (alpha {alpha:g})", cv[(alpha, 0.0)], None),
        (f"ours + lexical (network weight {weight:g}, alpha {alpha:g})", cv[(alpha, weight)], on_test(blended)),
    ):
        row = [name, f"{np.mean(folds_aiq):.4f}", f"{np.mean(folds_aiq) - np.mean(knn_cv):+.4f}"]
        if values is None:
            row += ["", "", ""]
        else:
            lo, hi = np.percentile(values[1:] - knn[1:], [2.5, 97.5])
            row += [f"{values[0]:.4f}", f"{values[0] - knn[0]:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]"]
        rows.append(row)
    console.print(table(f"MMLU: a lexical head, chosen by {config.folds} folds of train, then the test split "
                        f"({resamples} paired resamples)",
                        ["router", "cv AIQ", "cv − kNN", "test AIQ", "test − kNN", "95 % interval"], rows,
                        key="mmlu-lexical"))


if __name__ == "__main__":
    found = shared_data_dir()
    if found is None:
        raise SystemExit("no ../shared/data (or $TINY_DANCER_DATA): this benchmark needs the routing datasets")
    main(found)
