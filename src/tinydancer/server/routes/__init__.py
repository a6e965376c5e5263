"""One ``APIRouter`` per resource: candidate routing, query routing, LiteLLM's classifier protocol, feedback,
health and metrics, admin."""

from . import admin, classifier, feedback, health, queries, routing

ALL = (routing.router, queries.router, classifier.router, feedback.router, health.router, admin.router)

__all__ = ["ALL"]
