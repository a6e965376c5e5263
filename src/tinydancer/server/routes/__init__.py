"""One ``APIRouter`` per resource: candidate routing, query routing, feedback, health and metrics, admin."""

from . import admin, feedback, health, queries, routing

ALL = (routing.router, queries.router, feedback.router, health.router, admin.router)

__all__ = ["ALL"]
