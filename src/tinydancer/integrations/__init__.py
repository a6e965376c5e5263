"""Tiny Dancer inside other gateways.  ``tinydancer.integrations.litellm`` needs the ``litellm`` extra
and is imported on its own (importing this package does not import LiteLLM)."""
