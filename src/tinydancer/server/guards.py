"""Who may call what: credentials are checked before a request body is even read.

| routes | credentials configured | none configured |
| --- | --- | --- |
| ``/health``, ``/health/ready`` | open (load balancers) | open |
| ``/v1/*`` (routing, feedback) | a client key from ``TINY_DANCER_API_KEYS`` (or the admin token) | open on a loopback bind; 403 elsewhere |
| ``/admin/*``, ``/info``, ``/metrics``, ``/docs``, ``/redoc``, ``/openapi.json`` | the admin token ``TINY_DANCER_AUTH_TOKEN`` | open on a loopback bind; 403 elsewhere |
| ``/dashboard*`` | the admin token, or the session cookie ``/dashboard/login`` sets (a browser without either is sent there) | open on a loopback bind; 403 elsewhere |
| ``/dashboard/login`` | open (the form that checks the token) | open |

Keys are sent as ``Authorization: Bearer <key>`` and compared in constant time; no key is ever
logged.  A key's name (``name:key`` entries, see :mod:`~tinydancer.server.client_keys`) is put in
``request.state.key_name`` for the gateway's log, spend and budgets (``admin`` for the admin token).
``tinydancer serve`` refuses a non-loopback address when neither kind of credential is set
(``--insecure`` overrides both that and the loopback rule, for labs).  Admin ``POST``/``PUT``
requests must be ``Content-Type: application/json`` (415 otherwise): a browser cannot send that
cross-site without a CORS preflight, which this service never grants, so a web page cannot reset
the breaker or reload a model behind an operator's back.

This runs as ASGI middleware, before routing and body parsing: a malformed admin body from an
unauthenticated client is a 401, not a 422 that tells it what the route expects.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from typing import Any, Awaitable, Callable, Sequence

from .client_keys import ADMIN_NAME, client_keys
from .metrics import Metrics
from .middleware import reject

OPEN = ("/health",)
DATA_PLANE = ("/v1/",)
OPERATOR = ("/admin", "/info", "/metrics", "/docs", "/redoc", "/openapi.json")
DASHBOARD = "/dashboard"
LOGIN = "/dashboard/login"
#: the dashboard's session cookie: "<expiry>.<HMAC of the expiry keyed by the admin token>" (never the token)
COOKIE = "tinydancer_dashboard"
COOKIE_TTL_S = 12 * 3600


def session_value(token: str | bytes, now: float | None = None, ttl_s: float = COOKIE_TTL_S) -> str:
    """A dashboard session cookie's value for the admin token, valid ``ttl_s``; a new token ends every session."""
    key = token.encode() if isinstance(token, str) else token
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{expires}.{hmac.new(key, f'dashboard:{expires}'.encode(), hashlib.sha256).hexdigest()}"


def session_valid(token: bytes, value: str, now: float | None = None) -> bool:
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    wanted = hmac.new(token, f"dashboard:{expires}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac.encode("latin-1", "replace"), wanted.encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AccessGuard:
    """Pure ASGI middleware applying the table above."""

    def __init__(self, app: Any, *, admin_token: str | None, api_keys: Sequence[str], local_only: bool,
                 metrics: Metrics) -> None:
        self.app = app
        self.admin_token = admin_token.encode() if admin_token else None
        named = client_keys(api_keys)
        self.api_keys = tuple(k.key.encode() for k in named)
        #: the name of each key, in the same order (the admin token's last)
        self.key_names = tuple(k.name for k in named) + (ADMIN_NAME,)
        #: True when no credential may be skipped: the service listens beyond loopback
        self.remote = not local_only
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "http":
            problem = self._check(scope)
            if problem is not None:
                status, detail = problem
                self.metrics.errors.labels(self.metrics.endpoint_label(scope.get("path", "")),
                                           "unauthorized" if status == 401 else "forbidden").inc()
                headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
                if status == 303:  # a browser without a session: to the sign-in form
                    headers = [(b"location", LOGIN.encode())]
                await reject(send, status, detail, headers)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: dict) -> tuple[int, str] | None:
        path: str = scope.get("path", "")
        if path.startswith(OPEN):
            return None
        if path.startswith(DATA_PLANE):
            if self.api_keys:
                which = self._presented(scope, self.api_keys + self._admin())
                if which is None:
                    return 401, "this route needs a client key: Authorization: Bearer <one of TINY_DANCER_API_KEYS>"
                # who sent it, for the audit of outcome corrections: a fingerprint, never the key
                token = self._header(scope, b"authorization").partition(" ")[2].strip().encode("latin-1")
                state = scope.setdefault("state", {})
                state["client"] = "key:" + hashlib.sha256(token).hexdigest()[:12]
                state["key_name"] = self.key_names[which]
                return None
            if self.remote:
                return 403, "client keys are required off loopback: set TINY_DANCER_API_KEYS"
            return None
        if path.startswith(DASHBOARD):
            return self._dashboard(scope, path)
        operator = path.startswith(OPERATOR)
        if operator:
            if self.admin_token is not None:
                if self._presented(scope, self._admin()) is None:
                    return 401, "this route needs the admin token: Authorization: Bearer $TINY_DANCER_AUTH_TOKEN"
            elif self.remote:
                return 403, "admin and operator routes need TINY_DANCER_AUTH_TOKEN off loopback"
        if path.startswith("/admin") and scope.get("method") in ("POST", "PUT", "PATCH"):
            content_type = self._header(scope, b"content-type").split(";")[0].strip().lower()
            if content_type != "application/json":
                return 415, "admin requests must be sent as Content-Type: application/json"
        return None

    def _dashboard(self, scope: dict, path: str) -> tuple[int, str] | None:
        """The admin token as a bearer header or a session cookie; the sign-in form is open."""
        if path == LOGIN:
            return None
        if self.admin_token is None:
            return (403, "the dashboard needs TINY_DANCER_AUTH_TOKEN off loopback") if self.remote else None
        if self._presented(scope, self._admin()) is not None or self._session(scope):
            return None
        if scope.get("method") == "GET" and "text/html" in self._header(scope, b"accept"):
            return 303, "sign in at /dashboard/login"
        return 401, "the dashboard needs the admin token: Authorization: Bearer $TINY_DANCER_AUTH_TOKEN, or sign in at /dashboard/login"

    def _session(self, scope: dict) -> bool:
        assert self.admin_token is not None
        for part in self._header(scope, b"cookie").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and session_valid(self.admin_token, value):
                return True
        return False

    def _admin(self) -> tuple[bytes, ...]:
        return (self.admin_token,) if self.admin_token is not None else ()

    @staticmethod
    def _header(scope: dict, name: bytes) -> str:
        for key, value in scope.get("headers", ()):
            if key == name:
                return value.decode("latin-1")
        return ""

    def _presented(self, scope: dict, accepted: tuple[bytes, ...]) -> int | None:
        """The position in ``accepted`` of the key presented, or None."""
        scheme, _, value = self._header(scope, b"authorization").partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = value.strip().encode("latin-1")
        # compare with every key, so the time taken does not say which one (or whether any) matched
        matched = None
        for i, key in enumerate(accepted):
            if hmac.compare_digest(given, key):
                matched = i
        return matched
