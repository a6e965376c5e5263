"""Tiny Dancer inside LiteLLM: a routing strategy for ``litellm.Router``, and an outcome logger.

Read from the installed ``litellm`` (1.108.7): ``Router.set_custom_routing_strategy`` replaces the
router's ``get_available_deployment`` / ``async_get_available_deployment`` with a
``CustomRoutingStrategyBase``'s, which must return one element of ``Router.model_list``.  The
replaced method is the whole of LiteLLM's choice, cooldowns included, so the strategy asks
``Router.async_get_healthy_deployments`` (cooldowns, blocked deployments, tags, order, retry
skips) before it chooses.  LiteLLM retries a call by calling the chosen function again with the
same request ``metadata`` dict (``Router.log_retry`` appends ``previous_models``), and a fallback
copies that dict into the next group's call: the decision rides there, so every attempt of a call
is one decision.  A ``CustomLogger`` receives ``async_log_success_event`` /
``async_log_failure_event`` once per attempt, with the call's kwargs, whose
``standard_logging_object`` carries LiteLLM's cost, tokens, status and the attempt's deployment
id; ``async_post_call_success_deployment_hook`` sees each response before the caller does (its
``_hidden_params["additional_headers"]`` become response headers in the proxy).

- :class:`TinyDancerRoutingStrategy` reads the request's last user turn, asks a
  :class:`~tinydancer.llm.QueryRouter` (a local file, or a running Tiny Dancer service's
  ``/v1/route/query``) which of the model group's healthy deployments to use, within a latency
  budget, and tags the request with its decision.  Anything going wrong on our side (the
  embedder, the budget, the service, its breaker, an unmapped deployment) falls back to LiteLLM's
  own choice, logged with its cause and counted: a user's call never fails because of us.
- :class:`TinyDancerLogger` records each call's decision, each attempt's deployment, tokens,
  LiteLLM's cost figure, latency and failures in Tiny Dancer's storage (for decisions a service
  made, outcomes go to the service's ``/v1/feedback``), so ``tinydancer retrain --query-router``
  learns from LiteLLM traffic, and hands the decision id to the caller.  It never blocks the call:
  records go to a bounded queue that a background thread writes; when the queue is full, records
  are dropped and counted.

This module is the import path; the strategy lives in :mod:`~tinydancer.integrations.litellm_routing`,
the logger in :mod:`~tinydancer.integrations.litellm_logger`.
"""

from .litellm_judge import JudgeSettings, LiteLLMJudge
from .litellm_logger import DECISION_HEADER, Judge, TinyDancerLogger
from .litellm_routing import (FALLBACK_CAUSES, LOCAL_BUDGET_S, METADATA_KEY, SERVICE_BUDGET_S, TinyDancerRoutingStrategy,
                              _fallback_counter)

__all__ = ["TinyDancerLogger", "TinyDancerRoutingStrategy", "DECISION_HEADER", "FALLBACK_CAUSES", "Judge", "JudgeSettings",
           "LiteLLMJudge", "LOCAL_BUDGET_S",
           "METADATA_KEY", "SERVICE_BUDGET_S", "_fallback_counter"]
