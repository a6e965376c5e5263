"""Model-tier routing of LLM queries: embeddings, routing tables, outcome memory, metrics, :class:`QueryRouter`.

Modules, bottom up: ``embeddings`` (MiniLM and a hashing embedder, with an on-disk cache),
``tables`` (routing tables and the shared datasets), ``memory`` (outcomes of seen queries),
``evaluation`` (RouteLLM and RouterBench metrics), ``query_router`` (routing; its training in
``router_fit``, its file in ``router_file``, its measurement on a table in ``router_eval``).
"""

from .memory import OutcomeMemory, query_key, query_keys
from .query_router import ROUTER_FILE, QueryRouter, QueryRouterConfig, RouteDecision
from .tables import RoutingTable

__all__ = [
    "ROUTER_FILE",
    "OutcomeMemory",
    "QueryRouter",
    "QueryRouterConfig",
    "RouteDecision",
    "RoutingTable",
    "query_key",
    "query_keys",
]
