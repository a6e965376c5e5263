"""An OpenAI-compatible gateway in front of real LLMs: it routes each chat call with a query
router, forwards it (streaming too), falls back when an upstream fails, and logs every call
with its cost so that retraining learns from real traffic.

Modules: ``config`` (gateway.yaml), ``upstream`` (one LLM: pooled client, breaker), ``selection``
(the model field, options, sessions, the routed text), ``scoring`` (batched embedding), ``state``
(the shared state and the plan of a call), ``forwarding`` (attempts and fallbacks), ``sse``
(usage off streams), ``routes``, ``app``, and ``standin`` (loopback stand-in LLMs).
"""

from .app import create_gateway_app
from .config import GatewayConfig, UpstreamConfig, load_config
from .state import default_router_path

__all__ = ["GatewayConfig", "UpstreamConfig", "create_gateway_app", "default_router_path", "load_config"]
