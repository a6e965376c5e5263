"""Model-tier routing of LLM queries: embeddings, routing tables, outcome memory, metrics, :class:`QueryRouter`."""
