"""The learning loop: routing logs → a new model → versioned → promoted only if not worse.

``retrain`` reads the decisions that have outcomes, fine-tunes the served model (a lower
learning rate, the seed's continual learning) or trains a fresh one, calibrates conformal
uncertainty on a slice the training never saw, and evaluates old and new on the *same* held-out
slice.  Every new model is kept in the :class:`~tinydancer.server.registry.ModelRegistry` with its metrics (the seed's
``ModelVersion``); it replaces the served file — atomically, so a watching service hot-reloads a
complete file — only when its held-out loss is no worse than the current model's.

``retrain_query_router`` does the same for a query router from ``/v1/route/query`` decisions and
their feedback, where each query tells how one model did (see :func:`bandit_targets`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..candidates import ConformalCalibrator
from ..errors import TinyDancerError
from ..nn import FastGRNN, FastGRNNConfig, Trainer, TrainingConfig, TrainingDataset, balanced_sample_weights
from ..nn.datafiles import read_table
from ..nn.losses import bce_with_logits
from ..llm import ROUTER_FILE, OutcomeMemory, QueryRouter
from ..llm.linear_head import LinearHead
from ..llm.neighbours import neighbour_means
from .offpolicy import LoggedExploration, offpolicy_gate
from .registry import DatabaseRegistry, ModelRegistry, PromotionRefused
from .storage import Storage


@dataclass
class RetrainConfig:
    mode: str = "finetune"  # or "fresh"
    #: fine-tuning steps more gently than training from scratch (the seed's continual learning)
    learning_rate: float = 0.002
    epochs: int = 40
    holdout_fraction: float = 0.2
    calibration_fraction: float = 0.15
    min_samples: int = 200
    since: float | None = None
    seed: int = 0
    hidden_dim: int = 16  # for mode="fresh"
    #: query routers: a model's target for a query is the mean outcome of this many nearest queries it answered
    neighbours: int = 25
    #: the promotion gate (a flood of logged outcomes must not be able to satisfy it by itself):
    #: a new model may move the share of lightweight decisions (candidates; for query routers the
    #: share of each model, as total variation) by at most this much on the held-out decisions,
    #: and on the reference set when one is given, unless allow_mix_shift is set
    max_mix_shift: float = 0.25
    allow_mix_shift: bool = False
    #: the confidence at which a candidate counts as lightweight when measuring the mix
    lightweight_threshold: float = 0.85
    #: a trusted labelled set kept apart from the logs (CSV, JSONL or NPZ of the router's raw
    #: features and 0/1 labels): when given, the new model must not be worse on it either
    reference: Path | None = None
    #: recorded with a promotion (the CLI sets user@host)
    promoted_by: str | None = None
    #: query routers: an explored outcome (logged propensity p) weighs min(1/p, ips_clip) in the
    #: neighbour means its model's targets are made of; a deterministic one weighs 1
    ips_clip: float = 10.0
    #: the off-policy gate (server/offpolicy.py): promote only if the new router's doubly robust
    #: quality is not below the current one's by more than this, with 95 % confidence ...
    offpolicy_margin: float = 0.01
    #: ... on at least this many held-out decisions with a propensity (fewer: the gate does not decide)
    offpolicy_min_rows: int = 100
    #: the strong share both routers are compared at (None: the current router's share on the logs)
    strong_share: float | None = None


def _promote(registry: ModelRegistry | DatabaseRegistry, entry: Any, serve_path: Path | str, expected: str | None,
             cfg: RetrainConfig) -> str | None:
    """Promote unless another promotion happened since this retrain read the current version;
    None when promoted, else why not."""
    try:
        registry.promote(entry, serve_path, expected=expected, by=cfg.promoted_by)
    except PromotionRefused as exc:
        return str(exc)
    return None


@dataclass
class RetrainReport:
    samples: int
    train: int
    calibration: int
    holdout: int
    old: dict[str, float]
    new: dict[str, float]
    promoted: bool
    version: str
    parent: str | None
    reason: str
    seconds: float
    registry_entry: dict[str, Any] = field(default_factory=dict)
    #: logged outcomes that could not be used (query routers: a model the router does not know)
    skipped: int = 0


def _holdout_metrics(model: FastGRNN, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    logits = model.logits(model.normalizer.apply(x) if model.normalizer is not None else x)[:, 0].astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    return {
        "log_loss": float(bce_with_logits(logits, y).mean()),
        "accuracy": float(((p >= 0.5) == (y >= 0.5)).mean()),
        "brier": float(np.mean((p - y) ** 2)),
    }


def retrain(
    storage: Storage,
    model_path: str | Path,
    registry: ModelRegistry | DatabaseRegistry,
    config: RetrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> RetrainReport:
    """Train a new candidate-scoring model from the logs; promote it over ``model_path`` if not worse."""
    cfg = config or RetrainConfig()
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    logs = storage.labelled("candidate", cfg.since)
    n = len(logs.labels)
    if n < cfg.min_samples:
        raise TinyDancerError(f"only {n} decisions have outcomes (need {cfg.min_samples}); send feedback to /v1/feedback first")
    expected = registry.current()
    base = registry.current_data()  # a database registry's promoted version; else the served file
    current = (FastGRNN.load(model_path) if base is None
               else FastGRNN.from_bytes(base, f"registry version {expected}"))
    parent = current.extra_metadata.get("version")
    x, y = logs.inputs, logs.labels
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_hold = int(cfg.holdout_fraction * n)
    n_cal = int(cfg.calibration_fraction * n)
    hold, cal, fit = perm[:n_hold], perm[n_hold:n_hold + n_cal], perm[n_hold + n_cal:]
    say(f"{n} labelled decisions: {len(fit)} to train, {len(cal)} to calibrate, {len(hold)} held out")

    if cfg.mode == "finetune":
        new = current.copy()
        new.quantized = None
        dataset = TrainingDataset(x[fit], y[fit], sample_weights=balanced_sample_weights(y[fit]))
        if new.normalizer is not None:
            dataset.apply_normalization(new.normalizer)
        else:
            dataset.normalize()
    elif cfg.mode == "fresh":
        new = FastGRNN(FastGRNNConfig(input_dim=x.shape[1], hidden_dim=cfg.hidden_dim), seed=cfg.seed)
        dataset = TrainingDataset(x[fit], y[fit], sample_weights=balanced_sample_weights(y[fit]))
        dataset.normalize()
    else:
        raise TinyDancerError(f"mode must be 'finetune' or 'fresh', got {cfg.mode!r}")
    new.aux_tensors.clear()
    trainer = Trainer(new.config, TrainingConfig(learning_rate=cfg.learning_rate, epochs=cfg.epochs, seed=cfg.seed,
                                                 early_stopping_patience=8, validation_split=0.15))
    trainer.train(new, dataset)
    calibrator = ConformalCalibrator.fit(new.predict(x[cal])[:, 0], y[cal])
    calibrator.attach(new)

    old_m = _holdout_metrics(current, x[hold], y[hold])
    new_m = _holdout_metrics(new, x[hold], y[hold])
    gate = _gate(cfg, current, new, x[hold])
    better = new_m["log_loss"] <= old_m["log_loss"] and gate.passed
    reason = (f"held-out log loss {old_m['log_loss']:.4f} → {new_m['log_loss']:.4f}"
              + ("" if new_m["log_loss"] <= old_m["log_loss"] else " (worse)") + f"; {gate.summary}: "
              + ("promoted" if better else "kept the current model"))
    metrics = {"holdout": new_m, "holdout_of_parent": old_m, "samples": n, "mode": cfg.mode,
               "test_accuracy": new_m["accuracy"], "gate": gate.details}
    entry = registry.add(new, metrics, parent)
    if better and (refused := _promote(registry, entry, model_path, expected, cfg)) is not None:
        better, reason = False, f"{reason}; then refused: {refused}"
    return RetrainReport(n, len(fit), len(cal), len(hold), old_m, new_m, better, entry.version, parent, reason,
                         round(time.perf_counter() - started, 3), asdict(entry))



@dataclass
class GateResult:
    passed: bool
    summary: str
    details: dict[str, Any]


def lightweight_share(model: FastGRNN, x: np.ndarray, threshold: float) -> float:
    return float((model.predict(x)[:, 0] >= threshold).mean()) if len(x) else 0.0


def _gate(cfg: RetrainConfig, current: FastGRNN, new: FastGRNN, held_out: np.ndarray) -> GateResult:
    """What logged outcomes alone cannot buy: a bounded change of the routing mix, and no loss on
    a trusted reference set (when the operator keeps one)."""
    details: dict[str, Any] = {}
    problems = []
    sets = [("held-out decisions", held_out)]
    if cfg.reference is not None:
        ref = read_table(cfg.reference)
        if ref.labels is None:
            raise TinyDancerError(f"the reference set {cfg.reference} has no labels")
        ref_x = np.asarray(ref.features, dtype=np.float32)
        ref_y = np.asarray(ref.labels, dtype=np.float64).reshape(len(ref_x), -1)[:, 0]
        old_ref, new_ref = _holdout_metrics(current, ref_x, ref_y), _holdout_metrics(new, ref_x, ref_y)
        details["reference"] = {"old": old_ref, "new": new_ref, "rows": len(ref_x)}
        if new_ref["log_loss"] > old_ref["log_loss"]:
            problems.append(f"worse on the reference set ({old_ref['log_loss']:.4f} → {new_ref['log_loss']:.4f})")
        sets.append(("the reference set", ref_x))
    for name, data in sets:
        before = lightweight_share(current, data, cfg.lightweight_threshold)
        after = lightweight_share(new, data, cfg.lightweight_threshold)
        details[f"lightweight share on {name}"] = {"old": before, "new": after}
        if abs(after - before) > cfg.max_mix_shift and not cfg.allow_mix_shift:
            problems.append(f"lightweight share on {name} {before:.3f} → {after:.3f}, a move over "
                            f"{cfg.max_mix_shift:g} (review it, then retrain with --allow-mix-shift)")
    if problems:
        return GateResult(False, "; ".join(problems), details)
    shares = ", ".join(f"{k.removeprefix('lightweight share on ')} {v['old']:.3f} → {v['new']:.3f}"
                       for k, v in details.items() if k.startswith("lightweight"))
    return GateResult(True, f"lightweight share on {shares}" + (" (allowed)" if cfg.allow_mix_shift else ""), details)


def bandit_targets(x: np.ndarray, chosen: np.ndarray, observed: np.ndarray, fallback: np.ndarray, k: int,
                   pair: tuple[int, int] | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Training targets for every model from partial feedback: each logged query says how *one* model did.

    A model's target for a query is the mean observed quality of the ``k`` nearest queries that
    went to that model (the router's neighbour distillation, applied per model), so every column
    is learned from that model's own outcomes.  Holding the unobserved columns at the router's
    old predictions instead would contradict the observed ones wherever the world drifted: the
    same kind of query would say "0.9" when the model was asked and "0.3" when it was not.  A
    model with ``k`` or fewer outcomes keeps ``fallback`` (the old predictions) except where
    observed.  For a two-model router the advantage column is recomputed: ``(1 + q_strong - q_weak) / 2``.

    ``weights`` (one per logged outcome; see :func:`ips_weights`) make each neighbour mean a
    weighted one: the outcomes a router chose itself crowd its neighbourhoods, the explored ones
    are the few that show the rest of the prompt space, and inverse propensity restores their share.
    """
    targets = np.array(fallback, dtype=np.float32, copy=True)
    for j in range(targets.shape[1] - (1 if pair is not None else 0)):
        mine = np.flatnonzero(chosen == j)
        if len(mine) > k > 0:
            own = np.full(len(x), -1)
            own[mine] = np.arange(len(mine))
            if weights is None:
                targets[:, j] = neighbour_means(x, x[mine], observed[mine], k, exclude=own)
            else:  # a weighted mean: the neighbours' mean of w·y over their mean of w
                w = weights[mine].astype(np.float64)
                both = neighbour_means(x, x[mine], np.stack([w * observed[mine], w], axis=1), k, exclude=own)
                targets[:, j] = both[:, 0] / np.maximum(both[:, 1], 1e-12)
        else:
            targets[mine, j] = observed[mine]
    if pair is not None:
        strong, weak = pair
        targets[:, -1] = (1.0 + targets[:, strong] - targets[:, weak]) / 2.0
    return np.clip(targets, 0.0, 1.0)


def ips_weights(propensity: np.ndarray, clip: float) -> np.ndarray:
    """Clipped inverse propensity weights: ``min(1/p, clip)``, and 1 where no propensity was logged
    (a deterministic decision).  Clipping bounds the variance a handful of explored outcomes can
    add, at the price of a small bias towards the logging policy's own choices."""
    p = np.asarray(propensity, dtype=np.float64)
    return np.where(np.isfinite(p) & (p > 0), np.minimum(1.0 / np.where(p > 0, p, 1.0), clip), 1.0)


def remembered_feedback(router: Any, logs: Any, usable: np.ndarray, chosen: np.ndarray, observed: np.ndarray,
                        corrections: Sequence[Sequence[Any]] = ()) -> tuple[Any, int, float | None]:
    """The router's outcome memory plus the feedback it has not seen yet: (memory, outcomes added, watermark).

    Only queries sent as text have a key.  Each outcome is one observation of the model that
    answered; for a two-model router it is also one observation of the advantage, with the other
    model's quality at the router's current estimate for that query.  ``memory_feedback_until``
    in the router's info marks what was merged already, so retraining twice does not count an
    outcome twice.  An outcome corrected since then (``corrections``: the storage's
    :meth:`~tinydancer.server.storage.base.Storage.corrections` after that mark) whose replaced
    value had been merged replaces it: its observation moves by new − old, its count stays.
    """
    done = router.info.get("memory_feedback_until")
    has_key = np.array([k is not None for k in logs.query_keys], dtype=bool)[usable]
    at = logs.feedback_at[usable]
    fresh = has_key & (at > (done if done is not None else -np.inf))
    until = float(at.max()) if at.size else done
    if not fresh.any():
        return router.memory, 0, until
    # the value each fresh outcome replaced, where the memory had counted that one (NaN: none)
    replaced = np.full(len(fresh), np.nan)
    if done is not None and corrections:
        first: dict[tuple[str, str], tuple[Any, ...]] = {}
        for request_id, target, old_success, old_quality, old_at, _corrected_at in corrections:  # oldest first
            first.setdefault((str(request_id), str(target)), (old_success, old_quality, old_at))
        ids = np.asarray(logs.request_ids, dtype=object)[usable]
        names = np.asarray(logs.targets, dtype=object)[usable]
        for i in np.flatnonzero(fresh):
            old = first.get((ids[i], names[i]))
            if old is not None and old[2] is not None and old[2] <= done:
                replaced[i] = old[1] if old[1] is not None else old[0]
    m = len(router.models)
    width = m + 1 if router.is_pair else m
    key_arr = np.array([k or 0 for k in logs.query_keys], dtype=np.uint64)[usable][fresh]
    rows = np.arange(len(key_arr))
    picked = chosen[fresh]
    values = np.zeros((len(key_arr), width))
    mask = np.zeros((len(key_arr), width), dtype=bool)
    values[rows, picked] = observed[fresh]
    mask[rows, picked] = True
    memory = router.memory if router.memory is not None else OutcomeMemory.empty(width)
    old = replaced[fresh]
    swap = ~np.isnan(old)
    changes = np.zeros_like(values)
    changes[rows, picked] = values[rows, picked] - np.nan_to_num(old)
    if router.is_pair:
        estimate = memory.blend_keys(key_arr, router.estimate(np.asarray(logs.inputs)[usable][fresh]))[0][:, :m]
        estimate[rows, picked] = observed[fresh]
        values[:, m] = (1.0 + estimate[:, router.strong] - estimate[:, router.weak]) / 2.0
        mask[:, m] = True
        # the advantage moves by half the change, up for the strong model, down for the weak
        changes[:, m] = np.where(picked == router.strong, 0.5, -0.5) * changes[rows, picked]
    memory, applied = memory.corrected_keys(key_arr[swap], changes[swap], mask[swap])
    add = ~swap
    add[np.flatnonzero(swap)[~applied]] = True  # a replaced value the memory does not hold: counted as new
    if add.any():
        memory = memory.merged_keys(key_arr[add], values[add], mask[add])
    return memory, int(add.sum()) + int(applied.sum()), until


def _feedback(logs: Any, router: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which logged outcomes a router can learn from (a model it routes, its input width), the
    model each came from, and its observed quality (``quality`` where given, else success 0/1)."""
    index = {name: i for i, name in enumerate(router.models)}
    usable = np.array([t in index for t in logs.targets], dtype=bool)
    if logs.inputs.size and logs.inputs.shape[1] != router.model.config.input_dim:
        usable[:] = False
    chosen = np.array([index[t] for t, ok in zip(logs.targets, usable) if ok], dtype=np.int64)
    observed = np.where(np.isnan(logs.quality[usable]), logs.labels[usable], logs.quality[usable]).astype(np.float32)
    return usable, chosen, observed


def _finetuned_network(current: QueryRouter, x: np.ndarray, targets: np.ndarray, cfg: RetrainConfig) -> FastGRNN:
    """A copy of the router's network trained further on the logged targets (in the served
    network's normalization, so the new one reads embeddings exactly as the old one did)."""
    net = current.model.copy()
    net.quantized = None
    dataset = TrainingDataset(x, targets)
    if net.normalizer is not None:
        dataset.apply_normalization(net.normalizer)
    else:
        dataset.normalize()
    Trainer(net.config, TrainingConfig(learning_rate=cfg.learning_rate, epochs=cfg.epochs, seed=cfg.seed,
                                       validation_split=0.0)).train(net, dataset)
    return net


def _routing_mix(router: QueryRouter, x: np.ndarray) -> np.ndarray:
    """The share of the queries ``x`` the router sends to each of its models."""
    return np.bincount(router.choose(router.predict(x)), minlength=len(router.models)) / max(len(x), 1)


def retrain_query_router(
    storage: Storage,
    router_path: str | Path,
    registry: ModelRegistry | DatabaseRegistry,
    config: RetrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> RetrainReport:
    """Fine-tune a query router from ``/v1/route/query`` decisions and their feedback.

    Each logged query has the embedding it was routed on, the model it went to and how well that
    model did (``quality``, or ``success`` as 0/1).  Outcomes the gateway's exploration logged
    with a propensity weigh ``min(1/p, ips_clip)`` in the targets (:func:`ips_weights`).  Old and
    new routers are compared on the same held-out queries (:func:`_query_gate`): by an off-policy
    estimate of their quality when enough of those carry a propensity, else by the squared error
    of the predicted quality of the model that answered; the new one replaces ``router_path``
    (atomically) only if it is not worse, and the evidence is kept in the registry.  A
    two-model router keeps its share of strong calls: the threshold is re-set on the new scores.
    Outcomes of queries sent as text also go into the new router's outcome memory
    (:func:`remembered_feedback`), so a query that failed is routed differently when it returns.
    """
    cfg = config or RetrainConfig()
    if cfg.mode != "finetune":
        raise TinyDancerError("query routers are retrained by fine-tuning; to start afresh, train one from a table "
                              "(tinydancer router train)")
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    path = Path(router_path)
    file = path / ROUTER_FILE if path.is_dir() else path
    expected = registry.current()
    base = registry.current_data()
    current = QueryRouter.load(file) if base is None else QueryRouter.from_bytes(base, f"registry version {expected}")
    parent = current.model.extra_metadata.get("version")
    # the whole log, read once: the outcome memory takes every outcome it has not seen, while
    # --since narrows what the network trains and is judged on (the memory's mark moves past the
    # older decisions' outcomes too, which would otherwise never be merged)
    logs = storage.labelled("query")
    usable, logged_chosen, logged_observed = _feedback(logs, current)
    window = np.ones(len(usable), dtype=bool) if cfg.since is None else logs.created_at >= cfg.since
    recent = usable & window
    chosen, observed = logged_chosen[recent[usable]], logged_observed[recent[usable]]
    n, skipped = int(recent.sum()), int((window & ~usable).sum())
    if n < cfg.min_samples:
        raise TinyDancerError(f"only {n} routed queries have feedback for this router's models (need {cfg.min_samples}); "
                              "send feedback for /v1/route/query decisions to /v1/feedback first")
    x = logs.inputs[recent]
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_hold = int(cfg.holdout_fraction * n)
    hold, fit = perm[:n_hold], perm[n_hold:]
    say(f"{n} routed queries with feedback ({skipped} skipped): {len(fit)} to train, {len(hold)} held out")

    pair = (current.strong, current.weak) if current.is_pair else None
    propensity = logs.propensity[recent] if len(logs.propensity) == len(recent) else np.full(n, np.nan)
    weights = ips_weights(propensity[fit], cfg.ips_clip)
    targets = bandit_targets(x[fit], chosen[fit], observed[fit], current.predict(x[fit]), cfg.neighbours, pair,
                             weights=None if np.isnan(propensity[fit]).all() else weights)
    net = _finetuned_network(current, x[fit], targets, cfg)
    # a linear head, when the router blends one, moves with the new outcomes but is shrunk towards
    # the head it had, so a small log does not undo what the training table taught it
    head = None if current.head is None else LinearHead.fit(x[fit], targets, current.head.alpha, prior=current.head)
    done = current.info.get("memory_feedback_until")
    memory, merged, until = remembered_feedback(current, logs, usable, logged_chosen, logged_observed,
                                                storage.corrections(done) if done is not None else ())
    new = QueryRouter(net, current.models, current.costs, current.embedder_id, threshold=current.threshold,
                      cost_weight=current.cost_weight, quality_bar=current.quality_bar,
                      info={**current.info, "retrained_at": time.time(), "feedback_queries": n,
                            "memory_entries": 0 if memory is None else len(memory), "memory_feedback_until": until},
                      memory=memory, strong=current.strong if current.is_pair else None, head=head,
                      network_weight=current.network_weight)
    if pair is not None and current.threshold is not None:
        share = (cfg.strong_share if cfg.strong_share is not None
                 else float(np.mean(current.predict(x)[:, 2] >= current.threshold)))
        new.score_quantiles = np.quantile(new.predict(x)[:, 2], np.linspace(0, 1, 101))
        new.calibrate(share)

    better, reason, metrics = _query_gate(cfg, current, new, x[hold], chosen[hold], observed[hold], propensity[hold])
    entry = registry.add(new.packed(), {**metrics, "samples": n, "kind": "query_router"}, parent)
    if better and (refused := _promote(registry, entry, file, expected, cfg)) is not None:
        better, reason = False, f"{reason}; then refused: {refused}"
    if merged:  # say plainly where those outcomes went: into the served router, or only into the registry
        reason += (f"; {merged} outcomes of text queries are now in the served router's outcome memory"
                   if better else f"; the served router is unchanged: the {merged} outcomes of text queries merged into "
                   f"the new version's memory are only in the registry ({entry.version})")
    return RetrainReport(n, len(fit), 0, len(hold), metrics["holdout_of_parent"], metrics["holdout"], better,
                         entry.version, parent, reason, round(time.perf_counter() - started, 3), asdict(entry), skipped)


def _query_gate(cfg: RetrainConfig, current: QueryRouter, new: QueryRouter, x: np.ndarray, chosen: np.ndarray,
                observed: np.ndarray, propensity: np.ndarray) -> tuple[bool, str, dict[str, Any]]:
    """Whether ``new`` may replace ``current``, judged on the held-out logs: (verdict, why, evidence).

    With enough held-out decisions that carry a propensity (exploration on), the off-policy gate
    decides (server/offpolicy.py: doubly robust quality at the same operating point, 95 % CI);
    otherwise the squared error of the answering model's predicted quality must not grow.  Either
    way the routing mix may move at most ``max_mix_shift`` (total variation of the shares of
    queries sent to each model)."""
    def errors(router: QueryRouter) -> dict[str, float]:
        predicted = router.predict(x)[np.arange(len(x)), chosen]
        return {"squared_error": float(np.mean((predicted - observed) ** 2)),
                "mean_predicted": float(predicted.mean()), "mean_observed": float(observed.mean())}

    old_m, new_m = errors(current), errors(new)
    mix_old, mix_new = _routing_mix(current, x), _routing_mix(new, x)
    shift = float(0.5 * np.abs(mix_new - mix_old).sum())
    # a mix can stay put while queries swap models (a two-model router keeps its share by design)
    moved = int((current.choose(current.predict(x)) != new.choose(new.predict(x))).sum())
    kept_share = " (a two-model router keeps its share of strong calls by design)" if current.is_pair else ""
    gate_ok = shift <= cfg.max_mix_shift or cfg.allow_mix_shift
    logged = np.isfinite(propensity)
    off = offpolicy_gate(current, new, LoggedExploration(x[logged], chosen[logged], observed[logged], propensity[logged]),
                         strong_share=cfg.strong_share, margin=cfg.offpolicy_margin, min_rows=cfg.offpolicy_min_rows,
                         seed=cfg.seed)
    error_ok = new_m["squared_error"] <= old_m["squared_error"]
    better = (error_ok if off.passed is None else off.passed) and gate_ok
    reason = (f"held-out squared error of the answering model's predicted quality {old_m['squared_error']:.4f} → "
              f"{new_m['squared_error']:.4f}" + ("" if error_ok else " (worse)")
              + ("" if off.passed is None else " (reported; the off-policy gate decides)") + f"; {off.summary}"
              + f"; routing mix moved {shift:.3f}{kept_share}, {moved} of {len(x)} held-out queries now go to "
              "another model"
              + ("" if gate_ok else f", over {cfg.max_mix_shift:g} (review it, then retrain with --allow-mix-shift)")
              + (" (allowed)" if cfg.allow_mix_shift else "") + (": promoted" if better else ": kept the current router"))
    gate = {"mix_old": dict(zip(current.models, mix_old.tolist())), "mix_new": dict(zip(current.models, mix_new.tolist())),
            "shift": shift, "moved_queries": moved}
    return better, reason, {"holdout": new_m, "holdout_of_parent": old_m, "gate": gate, "offpolicy": off.evidence}
