"""Model-tier routing: send each query to the cheapest model that will answer it well enough.

A :class:`QueryRouter` is one FastGRNN over the query embedding with sigmoid outputs:

* one predicted quality (0..1) per model, and,
* for two models, one more output: the strong model's *advantage*, trained on
  ``(1 + q_strong - q_weak) / 2``.  Its conditional mean is monotone in the expected gain of
  calling the strong model, E[q_strong - q_weak | query], which is exactly the ranking RouteLLM's
  curve rewards.

Outcome labels are single noisy draws (did this model get this question right?), so by default
the network is *distilled from its neighbourhood*: each training query's soft target is the mean
target of its ``neighbours`` nearest training queries (cosine).  The network then generalises a
smoothed signal instead of memorising coin flips; only the kilobyte network runs at routing time.
When a transformer teacher's logits are given (two-model tables), they are blended into the
advantage head's soft target.

Which smoothing, which hidden size, and whether to blend the network's outputs with a linear
head (ridge on the same embedding) are chosen by k-fold cross-validation on the training table
(:mod:`tinydancer.llm.selection`); the head, when kept, lives in the same router file.

This module is the router at work: scoring, decisions, the operating point, evaluation.  Its
training lives in :mod:`~tinydancer.llm.router_fit`, its file format in
:mod:`~tinydancer.llm.router_file`, its measurement on a table in :mod:`~tinydancer.llm.router_eval`;
``QueryRouter.fit`` / ``load`` / ``save`` / ``evaluate`` delegate to them.

Queries routed *as text* also consult an :class:`~tinydancer.llm.memory.OutcomeMemory` of the
training table's own outcomes: a query seen before, word for word, gets the posterior mean of
the network's output and what was observed for it (see :mod:`tinydancer.llm.memory`).

Decisions
    two models:  strong when the advantage score >= ``threshold`` (``calibrate(share)`` sets it
                 so that ``share`` of typical queries go strong, as RouteLLM does);
    N models:    the cheapest model whose predicted quality clears ``quality_bar``, or else
                 ``argmax(predicted quality - cost_weight * cost / dearest cost)``.

The cost weight is unitless: a cost counts as a share of the dearest model's cost per call, so
the same weight makes the same trade-off whatever the prices' scale (in dollars a call, the
cheap models of today cost so little that weights 0, 1 and 100 all chose alike).  Weight w pays
the dearest model's whole price for w more predicted quality (0 to 1): 0 ignores cost, about 1
trades them evenly, 100 takes the cheapest model unless another is predicted far better for
little more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .._validation import as_float_array, check_number
from ..errors import ValidationError
from ..nn import FastGRNN
from . import router_eval, router_file, router_fit
from .evaluation import cost_weight_for_budget
from .linear_head import LinearHead
from .memory import OutcomeMemory
from .router_config import QueryRouterConfig
from .router_file import ROUTER_FILE
from .routing_problem import validation_split
from .tables import RoutingTable

__all__ = ["QueryRouter", "QueryRouterConfig", "OperatingPoint", "RouteDecision", "ROUTER_FILE", "validation_split"]


class OperatingPoint(NamedTuple):
    """Where on its cost-quality curve a router decides: the two-model threshold, or the N-model
    cost weight and quality bar."""

    threshold: float | None
    cost_weight: float
    quality_bar: float | None

    def to_dict(self) -> dict[str, float | None]:
        return self._asdict()


@dataclass(frozen=True)
class RouteDecision:
    """Where one query goes, what we expect, and the alternative."""

    model: str
    predicted_quality: float
    cost: float
    runner_up: str
    runner_up_quality: float
    runner_up_cost: float
    #: two-model routers: the strong model's advantage score the threshold is compared with
    strong_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueryRouter:
    """Routes a query (text or embedding) to one of ``models``."""

    def __init__(
        self,
        model: FastGRNN,
        models: Sequence[str],
        costs: Sequence[float],
        embedder_id: str,
        *,
        threshold: float | None = None,
        cost_weight: float = 0.0,
        quality_bar: float | None = None,
        score_quantiles: Sequence[float] | None = None,
        info: dict[str, Any] | None = None,
        memory: OutcomeMemory | None = None,
        strong: int | None = None,
        head: LinearHead | None = None,
        network_weight: float = 1.0,
    ) -> None:
        self.model = model
        self.models = list(models)
        self.costs = np.asarray(costs, dtype=np.float64)
        self.embedder_id = embedder_id
        m = len(self.models)
        expected = m + 1 if m == 2 else m
        if model.config.output_dim != expected or model.config.output_activation != "sigmoid":
            raise ValidationError(f"a router over {m} models needs a sigmoid FastGRNN with {expected} outputs")
        if self.costs.shape != (m,):
            raise ValidationError(f"need one cost per model ({m}), got {self.costs.shape}")
        self.threshold = threshold
        self.cost_weight = float(cost_weight)
        self.quality_bar = quality_bar
        self.score_quantiles = None if score_quantiles is None else np.asarray(score_quantiles, dtype=np.float64)
        self.info: dict[str, Any] = info or {}
        if memory is not None and len(memory) and memory.width != expected:
            raise ValidationError(f"the outcome memory holds {memory.width} outputs per query; this router has {expected}")
        self.memory = memory
        check_number("QueryRouter", "network_weight", network_weight, low=0.0, high=1.0)
        if network_weight < 1.0 and head is None:
            raise ValidationError("a network weight below 1 blends with a linear head; none was given")
        if head is not None and head.weight.shape != (model.config.input_dim, expected):
            raise ValidationError(f"the linear head maps {head.weight.shape}; this router needs "
                                  f"{(model.config.input_dim, expected)}")
        #: the linear head blended with the network (None: the network alone) and the network's share
        self.head = head if network_weight < 1.0 else None
        self.network_weight = float(network_weight) if self.head is not None else 1.0
        self._embedder: Any = None
        order = np.argsort(self.costs)
        #: two models: the better one on the training data, which need not be the dearer (a router
        #: file without the field, from an earlier release, took the dearer); more models: the dearest
        self.strong = int(order[-1]) if strong is None else int(strong)
        if not 0 <= self.strong < m:
            raise ValidationError(f"strong must index one of the {m} models, got {strong!r}")
        self.weak = (1 - self.strong) if m == 2 else int(order[0])
        self._cost_list = [float(c) for c in self.costs]
        dearest = float(self.costs.max()) if m else 0.0
        #: what ``cost_weight`` multiplies: each model's cost as a share of the dearest one's
        self.relative_costs = self.costs / dearest if dearest > 0 else np.zeros_like(self.costs)
        self._relative_list = [float(c) for c in self.relative_costs]

    # ------------------------------------------------------------------ structure
    @property
    def is_pair(self) -> bool:
        return len(self.models) == 2

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from .embeddings import embedder_for_id

            self._embedder = embedder_for_id(self.embedder_id)
        return self._embedder

    @property
    def loaded_embedder(self) -> Any:
        """The embedder if it has been loaded already, else None (loading MiniLM takes a while)."""
        return self._embedder

    @embedder.setter
    def embedder(self, value: Any) -> None:
        if value.id != self.embedder_id:
            from .prompt_features import describe_inputs

            raise ValidationError(f"this router was trained on {describe_inputs(self.embedder_id)}; it was given "
                                  f"{describe_inputs(value.id)}")
        self._embedder = value

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _texts(queries: Any) -> list[str] | None:
        """The queries as a list of texts, or None when they are embeddings."""
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries):
            if any(not q.strip() for q in queries):
                raise ValidationError("a query is empty; send the text to route")
            return list(queries)
        return None

    def _embeddings(self, queries: Any) -> np.ndarray:
        texts = self._texts(queries)
        if texts is not None:
            return self.embedder.embed(texts)
        x = as_float_array(queries, "query embedding", ndim=(1, 2))
        x = x[None, :] if x.ndim == 1 else x
        self._check_width(x.shape[1])
        return x

    def _check_width(self, width: int) -> None:
        if width != self.model.config.input_dim:
            from .prompt_features import describe_inputs

            raise ValidationError(f"embeddings must have {self.model.config.input_dim} values "
                                  f"({describe_inputs(self.embedder_id)}), got {width}")

    def predict(self, queries: Any) -> np.ndarray:
        """All outputs, (N, M) qualities [+ the advantage column for two models].

        Texts seen verbatim in training are blended with their remembered outcomes; embeddings
        carry no text, so they get the network's output alone.
        """
        texts = self._texts(queries)
        if texts is None:
            return self.estimate(self._embeddings(queries))
        return self.remember(texts, self.estimate(self.embedder.embed(texts)))[0]

    def estimate(self, embeddings: np.ndarray) -> np.ndarray:
        """The network's outputs for a batch of embeddings, blended with the linear head when the
        router has one; before the outcome memory (which needs the texts)."""
        out = self.model.predict(embeddings)
        if self.head is None:
            return out
        head = self.head.predict(np.asarray(embeddings, dtype=np.float32).reshape(-1, self.head.weight.shape[0]))
        return self.network_weight * out + (1.0 - self.network_weight) * head.reshape(out.shape)

    def remember(self, texts: Sequence[str], outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network ``outputs`` for ``texts`` with the outcome memory applied, and which texts it knew."""
        if self.memory is None:
            return outputs, np.zeros(len(texts), dtype=bool)
        return self.memory.blend(texts, outputs)

    def predicted_quality(self, queries: Any) -> np.ndarray:
        return self.predict(queries)[:, : len(self.models)]

    def strong_scores(self, queries: Any) -> np.ndarray:
        """Two models: the strong model's advantage score per query (higher = more needed)."""
        if not self.is_pair:
            raise ValidationError("strong scores exist for two-model routers only")
        return self.predict(queries)[:, 2]

    def choose(self, outputs: np.ndarray, *, threshold: float | None = None, cost_weight: float | None = None,
               quality_bar: float | None = None) -> np.ndarray:
        """Model index per row of :meth:`predict` outputs, under the given (or stored) knob."""
        if self.is_pair:
            t = self.threshold if threshold is None else threshold
            if t is None:
                raise ValidationError("no threshold: call calibrate(strong_share) first")
            return np.where(outputs[:, 2] >= t, self.strong, self.weak)
        quality = outputs[:, : len(self.models)]
        bar = self.quality_bar if quality_bar is None else quality_bar
        if bar is not None:
            ok = quality >= bar
            # cheapest model that clears the bar; among equal prices, the better predicted one
            rank = self.costs[None, :] - 1e-9 * quality
            cheapest_ok = np.argmin(np.where(ok, rank, np.inf), axis=1)
            return np.where(ok.any(axis=1), cheapest_ok, np.argmax(quality, axis=1))
        lam = self.cost_weight if cost_weight is None else cost_weight
        return np.argmax(quality - lam * self.relative_costs, axis=1)

    def outputs_for(self, embedding: Sequence[float] | np.ndarray, text: str | None = None) -> np.ndarray:
        """Outputs for one query's embedding; given its text as well, the outcome memory applies."""
        x = embedding if isinstance(embedding, np.ndarray) else np.asarray(embedding, dtype=np.float32)
        self._check_width(x.shape[-1])
        out = self.estimate(x)
        if out.ndim != 1:
            raise ValidationError("route() takes one query; use predict() and choose() for batches")
        if text is not None and self.memory is not None:
            out = self.memory.blend([text], out[None, :])[0][0]
        return out

    def route(self, query: str | Sequence[float] | np.ndarray, *, text: str | None = None,
              point: "OperatingPoint | None" = None) -> RouteDecision:
        """Route one query given as text or as its embedding (the hot path: one compiled pass).

        A caller that embedded the text itself passes the embedding and ``text=`` the text, so
        that a remembered query still gets its remembered outcomes.  ``point`` routes this one
        query at another operating point (see :meth:`operating_point`) without changing the router.
        """
        out = self.predict(query)[0] if isinstance(query, str) else self.outputs_for(query, text)
        # one query, a handful of models: plain Python floats beat NumPy scalars here
        values = out.tolist()
        choice, runner = self.ranking(values, point)[:2]
        quality = values[: len(self.models)]
        costs = self._cost_list
        return RouteDecision(
            model=self.models[choice],
            predicted_quality=quality[choice],
            cost=costs[choice],
            runner_up=self.models[runner],
            runner_up_quality=quality[runner],
            runner_up_cost=costs[runner],
            strong_score=values[2] if self.is_pair else None,
        )

    def ranking(self, values: Sequence[float], point: "OperatingPoint | None" = None,
                allowed: Sequence[bool] | None = None) -> list[int]:
        """Model indices in the order a call should try them: the choice at ``point``, then the rest
        best first (the next-best model is the one a gateway falls back to).

        ``values`` are one query's outputs as a list (:meth:`outputs_for`); ``allowed`` (one flag
        per model) narrows the choice to some models, at the same operating point.
        """
        threshold, cost_weight, quality_bar = (self.threshold, self.cost_weight, self.quality_bar) if point is None else point
        m = len(self.models)
        ok = [True] * m if allowed is None else list(allowed)
        if self.is_pair:
            if threshold is None:
                raise ValidationError("no threshold: call calibrate(strong_share) first")
            first = self.strong if values[2] >= threshold else self.weak
            order = [first, 1 - first]
        else:
            quality = values[:m]
            costs = self._cost_list
            utility = [q - cost_weight * c for q, c in zip(quality, self._relative_list)]
            order = sorted(range(m), key=lambda i: -utility[i])
            clears = [i for i in range(m) if ok[i] and quality_bar is not None and quality[i] >= quality_bar]
            if clears:  # the cheapest model predicted to reach the bar; among equal prices, the better one
                first = min(clears, key=lambda i: (costs[i], -quality[i]))
                order.remove(first)
                order.insert(0, first)
        return [i for i in order if ok[i]]

    def operating_point(self, *, strong_share: float | None = None, cost_weight: float | None = None,
                        quality_bar: float | None = None) -> "OperatingPoint":
        """The (threshold, cost_weight, quality_bar) that routing uses, moved by the knobs that fit
        this router: ``strong_share`` for two models, ``cost_weight`` / ``quality_bar`` for more.
        Nothing is changed on the router; errors name the knob to use instead."""
        if self.is_pair:
            if cost_weight is not None or quality_bar is not None:
                raise ValidationError("this router chooses between two models: set strong_share, not cost_weight or quality_bar")
            threshold = self.threshold if strong_share is None else self.threshold_for_share(strong_share)
            return OperatingPoint(threshold, self.cost_weight, self.quality_bar)
        if strong_share is not None:
            raise ValidationError(f"this router chooses among {len(self.models)} models: set cost_weight "
                                  "(quality − weight × cost) or quality_bar (the cheapest model predicted to reach it), "
                                  "not strong_share")
        check_number("operating point", "cost_weight", cost_weight, low=0.0, optional=True)
        check_number("operating point", "quality_bar", quality_bar, low=0.0, optional=True)
        return OperatingPoint(self.threshold, self.cost_weight if cost_weight is None else float(cost_weight),
                              self.quality_bar if quality_bar is None else float(quality_bar))

    def threshold_for_share(self, target_strong_share: float) -> float:
        """The threshold that sends ``target_strong_share`` of typical queries to the strong model,
        from the training queries' stored score distribution (the router is not changed)."""
        if not self.is_pair:
            raise ValidationError(f"strong_share applies to two-model routers; this one chooses among {len(self.models)} "
                                  "models: set cost_weight or quality_bar")
        if not 0.0 <= target_strong_share <= 1.0:
            raise ValidationError(f"strong_share must be in [0, 1], got {target_strong_share!r}")
        if self.score_quantiles is None:
            raise ValidationError("this router has no stored score distribution: calibrate it on queries first")
        grid = np.linspace(0.0, 1.0, len(self.score_quantiles))
        threshold = float(np.interp(1.0 - target_strong_share, grid, self.score_quantiles))
        if target_strong_share == 0.0:
            # scores are float32 and NumPy compares them in float32: step one float32 ulp up
            threshold = float(np.nextafter(np.float32(threshold), np.float32(np.inf)))
        return threshold

    def calibrate(self, target_strong_share: float, queries: Any = None) -> float:
        """Set the threshold so that ``target_strong_share`` of queries go to the strong model.

        With ``queries`` the share is measured on them (RouteLLM's ``calibrate_threshold``);
        without, on the score distribution of the training queries stored in the router.
        """
        if not self.is_pair:
            raise ValidationError("calibrate() applies to two-model routers; set cost_weight or quality_bar")
        if not 0.0 <= target_strong_share <= 1.0:
            raise ValidationError("target_strong_share must be in [0, 1]")
        if queries is None:
            if self.score_quantiles is None:
                raise ValidationError("no stored score distribution: pass queries to calibrate on")
            self.threshold = self.threshold_for_share(target_strong_share)
            return self.threshold
        scores = self.strong_scores(queries)
        self.threshold = float(np.quantile(scores, 1.0 - target_strong_share))
        if target_strong_share == 0.0:
            # scores are float32 and NumPy compares them in float32: step one float32 ulp up
            self.threshold = float(np.nextafter(np.float32(self.threshold), np.float32(np.inf)))
        return self.threshold

    def calibrate_on_traffic(self, embeddings: np.ndarray, *, strong_share: float | None = None,
                             budget: float | None = None) -> dict[str, Any]:
        """Move the operating point to a strong-call share or a cost budget ($ a query, predicted)
        measured on real traffic (``embeddings`` of logged queries), and report the predicted mean
        quality and cost there.  For two models, the stored score distribution becomes the
        traffic's, so ``strong_share`` given later (serve, a request) refers to this traffic too."""
        if (strong_share is None) == (budget is None):
            raise ValidationError("give a strong-call share or a budget (one of them)")
        x = as_float_array(embeddings, "logged query embeddings", ndim=2)
        if len(x) < 20 or x.shape[1] != self.model.config.input_dim:
            raise ValidationError(f"need at least 20 logged queries embedded as this router's ({self.embedder_id}, "
                                  f"{self.model.config.input_dim} values); got {x.shape[0]} of {x.shape[1]}")
        out = self.estimate(x)
        m = len(self.models)
        quality = out[:, :m]

        def point(choice: np.ndarray) -> tuple[float, float]:
            rows = np.arange(len(choice))
            return float(quality[rows, choice].mean()), float(self.costs[choice].mean())

        if self.is_pair:
            self.score_quantiles = np.quantile(out[:, 2], np.linspace(0, 1, 101))
            if strong_share is None:  # the largest share whose routing of this traffic stays under the budget
                if budget < self.costs.min():  # type: ignore[operator]
                    raise ValidationError(f"a budget of ${budget:g} a query is below the cheaper model's ${self.costs.min():g}")
                for share in np.linspace(1.0, 0.0, 101):
                    self.calibrate(float(share), queries=x)
                    if point(self.choose(out))[1] <= budget:  # type: ignore[operator]
                        strong_share = round(float(share), 2)
                        break
            check_number("calibrate", "strong_share", strong_share, low=0.0, high=1.0)
            self.calibrate(strong_share, queries=x)  # type: ignore[arg-type]
            q, c = point(self.choose(out))
            return {"queries": len(x), "strong_share": strong_share, "threshold": self.threshold,
                    "predicted_quality": q, "predicted_cost": c}
        if strong_share is not None:
            raise ValidationError(f"this router chooses among {m} models: calibrate it to a --budget")
        found = cost_weight_for_budget(quality, self.costs, budget)  # type: ignore[arg-type]
        if found is None:
            raise ValidationError(f"no operating point keeps the predicted cost under ${budget:g} a query "
                                  f"(the cheapest model costs ${self.costs.min():g})")
        lam, q, c = found
        self.cost_weight, self.quality_bar = float(lam), None
        return {"queries": len(x), "cost_weight": self.cost_weight, "predicted_quality": q, "predicted_cost": c}

    # ------------------------------------------------------------------ evaluation (router_eval)
    def evaluate(self, table: RoutingTable, n_settings: int = 201) -> dict[str, Any]:
        """AIQ (and for two models APGR, CPT20/50/80 in % strong calls), Brier score and ECE on a table."""
        return router_eval.evaluate(self, table, n_settings)

    # ------------------------------------------------------------------ training (router_fit)
    @classmethod
    def fit(
        cls,
        table: RoutingTable,
        config: QueryRouterConfig | None = None,
        *,
        embedder: Any = None,
        teacher_logits: np.ndarray | None = None,
        progress: Callable[[str], None] | None = None,
        init: "QueryRouter | None" = None,
        groups: Any = None,
    ) -> "QueryRouter":
        """Train on a routing table, its settings chosen by cross-validation on the same table.

        With ``config.folds`` >= 2 (the default), :func:`~tinydancer.llm.selection.select` chooses
        the smoothing, the hidden size, the blend with a linear head and the memory prior; the
        shipped network is then trained on the whole table (early-stopped on a slice of it), the
        head refit on all of it.  With ``folds`` = 1 the hidden size is chosen on one validation
        slice and the network routes alone.

        A partial table (some cells missing: logged outcomes, a labelled sample) trains too: a
        query's target for a model it has no score for is the mean outcome of its nearest
        neighbours that do have one, so only observed outcomes enter the loss (which is why a
        partial table needs neighbour smoothing).  ``init`` fine-tunes an existing router (its
        models, embedder, network, normalization, settings and linear head) instead of starting
        afresh; the table may score any subset of its models.

        ``groups`` (one label per row, e.g. each row's source table) makes the folds hold out whole
        groups (``selection.group_kfold``): settings are chosen on sources a fold never trained on,
        not for recognising known ones.  A table without vectors is embedded with ``embedder``
        (default: the static one, as ``router train``: MiniLM's quality at 70-190x its speed).
        """
        return router_fit.fit(cls, table, config, embedder=embedder, teacher_logits=teacher_logits, progress=progress,
                              init=init, groups=groups)

    # ------------------------------------------------------------------ files (router_file)
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/router.safetensors``: the network plus models, costs, embedder, knobs."""
        return router_file.save(self, folder)

    def packed(self) -> FastGRNN:
        """A copy of the network carrying the router's metadata: saved, it is a router file."""
        return router_file.pack(self)

    @classmethod
    def load(cls, path: str | Path) -> "QueryRouter":
        """Load from a folder written by :meth:`save` (or the ``router.safetensors`` in it)."""
        return router_file.load(cls, path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "router bytes") -> "QueryRouter":
        """A router from the bytes of its file (a version kept in a database registry)."""
        return router_file.from_bytes(cls, data, source)

    @classmethod
    def from_network(cls, net: FastGRNN, file: str) -> "QueryRouter":
        """The router a network with routing metadata describes (``file`` names it in errors)."""
        return router_file.from_network(cls, net, file)
