"""The gateway's Prometheus metrics, in the service's registry (names start ``tiny_dancer_gateway_``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..server.metrics import BatchHistogram

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.calls = Counter("tiny_dancer_gateway_calls", "Upstream attempts by outcome", ["upstream", "status"], registry=r)
        self.tokens = Counter("tiny_dancer_gateway_tokens", "Tokens reported by upstreams' usage", ["upstream", "kind"], registry=r)
        self.cost = Counter("tiny_dancer_gateway_cost_dollars", "Dollars spent, from usage × the configured prices",
                            ["upstream"], registry=r)
        self.saved = Counter("tiny_dancer_gateway_saved_dollars",
                             "Dollars saved against calling the priciest configured upstream with the same tokens", registry=r)
        self.fallbacks = Counter("tiny_dancer_gateway_fallbacks", "Calls moved on after an upstream failed",
                                 ["from_upstream"], registry=r)
        self.busy = Counter("tiny_dancer_gateway_busy", "Calls turned away by an upstream with no free slot (no call made)",
                            ["upstream"], registry=r)
        self.unknown_usage = Counter("tiny_dancer_gateway_unknown_usage",
                                     "Answers whose reported token counts were impossible (logged with cost unknown)",
                                     ["upstream"], registry=r)
        self.breaker_state = Gauge("tiny_dancer_gateway_breaker_state", "Per-upstream breaker: 0 closed, 1 half-open, 2 open",
                                   ["upstream"], registry=r)
        self.live_strong_share = Gauge("tiny_dancer_gateway_live_strong_share",
                                       "Share of the last live_window routed calls sent first to the strong model", registry=r)
        self.live_spend = Gauge("tiny_dancer_gateway_live_spend_per_call_dollars",
                                "Mean dollars a routed call cost over the last live_window (usage × prices)", registry=r)
        self.explored = Counter("tiny_dancer_gateway_explored_calls",
                                "Routed calls sent to a model the router did not pick (exploration)", registry=r)
        self.embed_batches = Counter("tiny_dancer_gateway_embed_batches", "Embedding batches run for prompts", registry=r)
        self.embed_rejected = Counter("tiny_dancer_gateway_embed_queue_full",
                                      "Routed calls turned away because max_embed_queue prompts were waiting", registry=r)
        self.embed_texts = Counter("tiny_dancer_gateway_embedded_prompts", "Prompts embedded (÷ batches = mean batch)",
                                   registry=r)
        self.overhead = BatchHistogram("tiny_dancer_gateway_overhead_seconds",
                                       "Time from the request to the upstream call (parsing, routing)",
                                       (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1), r, ["kind"])
        self.ttft = BatchHistogram("tiny_dancer_gateway_time_to_first_byte_seconds", "Upstream time to the first byte",
                                   (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), r, ["upstream"])
