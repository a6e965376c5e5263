"""The HTTP service and what it leans on: storage, the wire decoder, the learning loop.

``app`` assembles; ``routes/`` holds one router per resource; ``deps`` the shared dependencies
(auth, readiness); ``state`` the routers, storage and hot reload; ``schemas`` the bodies;
``metrics`` Prometheus; ``wire`` the fast /v1/route decoder; ``storage/`` the decision log;
``learning`` and ``registry`` retraining and model versions.
"""

from .app import create_app
from .metrics import Metrics
from .settings import ServiceSettings

__all__ = ["Metrics", "ServiceSettings", "create_app"]
