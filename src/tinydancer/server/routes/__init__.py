"""One ``APIRouter`` per resource: candidate routing, query routing, LiteLLM's classifier protocol, feedback,
health and metrics, admin, the dashboard."""

from . import admin, classifier, dashboard, feedback, health, queries, routing

ALL = (routing.router, queries.router, classifier.router, feedback.router, health.router, admin.router,
       dashboard.router)

__all__ = ["ALL"]
