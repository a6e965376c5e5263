"""``/dashboard``: what routing saves, as a page (and ``/dashboard/report.json``, the same numbers).

Credentials are checked before routing (:mod:`tinydancer.server.guards`): the admin token as a
bearer header or the session cookie that ``POST /dashboard/login`` sets (HttpOnly,
SameSite=Strict); on a loopback bind without a token the page is open, as the admin routes are.
The numbers come from :func:`tinydancer.server.report.build_report`, off the event loop; a gateway
adds its prices and live state through :class:`DashboardSource` (``app.state.dashboard``).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ...errors import ValidationError
from ..dashboard import login_page, render_dashboard
from ..deps import service_of
from ..guards import COOKIE, COOKIE_TTL_S, LOGIN, session_value
from ..report import Price, build_report, registry_versions
from ..storage import StorageUnavailable

__all__ = ["DashboardSource", "router"]

router = APIRouter(tags=["dashboard"])

#: how often the page reloads itself
REFRESH_S = 30
#: the largest login form read (a token, URL-encoded)
MAX_FORM_BYTES = 8192


@dataclass
class DashboardSource:
    """What the log alone does not know: prices (for savings), live state, where the registry is."""

    prices: Sequence[Price] = ()
    live: Callable[[], dict[str, Any]] | None = None
    registry_folder: Path | None = None


def _source(request: Request) -> DashboardSource:
    found = getattr(request.app.state, "dashboard", None)
    if found is None:  # `serve`: no prices; the registry beside the served model
        found = DashboardSource(registry_folder=Path(service_of(request).settings.model_path).parent / "registry")
    return found  # type: ignore[no-any-return]


async def _report(request: Request, window: str, reference: str | None, last: int) -> dict[str, Any]:
    service = service_of(request)
    source = _source(request)
    await service.writer.aflush()  # the calls just answered are on the page
    live = source.live() if source.live is not None else {}

    def build() -> dict[str, Any]:
        registry = registry_versions(service.storage, source.registry_folder)
        return build_report(service.storage, window=window, prices=source.prices, reference=reference or None,
                            last_n=last, registry=registry, live=live)

    return await asyncio.to_thread(build)


async def _answer(request: Request, window: str, reference: str | None, last: int, page: bool) -> Response:
    try:
        report = await _report(request, window, reference, max(0, min(last, 200)))
    except ValidationError as exc:  # a window or reference we cannot read: FastAPI's 422 shape
        return JSONResponse({"detail": [{"loc": ["query"], "msg": str(exc), "type": "value_error"}]}, status_code=422)
    except (StorageUnavailable, *service_of(request).storage.errors) as exc:
        return JSONResponse({"detail": f"the decision log cannot be read now ({exc}); retry later"}, status_code=503,
                            headers={"Retry-After": "5"})
    if not page:
        return JSONResponse(report)
    names = [p.name for p in _source(request).prices]
    return HTMLResponse(render_dashboard(report, refresh_s=REFRESH_S, references=names),
                        headers={"cache-control": "no-store"})


@router.get("/dashboard", include_in_schema=False)
async def dashboard(request: Request, window: str = "day", reference: str | None = None, last: int = 20) -> Response:
    """The page: window hour, day, week, all (or 30m, 12h, 7d...); reference: an upstream to price the calls at."""
    return await _answer(request, window, reference, last, page=True)


@router.get("/dashboard/report.json", summary="The dashboard's numbers")
async def dashboard_json(request: Request, window: str = "day", reference: str | None = None, last: int = 20) -> Response:
    return await _answer(request, window, reference, last, page=False)


@router.get(LOGIN, include_in_schema=False)
async def login_form() -> HTMLResponse:
    return HTMLResponse(login_page())


@router.post(LOGIN, include_in_schema=False)
async def login(request: Request) -> Response:
    """Check the token; set the session cookie (its value is derived from the token, never the token)."""
    token = service_of(request).settings.auth_token
    body = await request.body()
    given = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get("token", [""])[0]
    if token is None:  # open on loopback: nothing to sign in to
        return RedirectResponse("/dashboard", status_code=303)
    if not hmac.compare_digest(given.encode(), token.encode()):
        return HTMLResponse(login_page(failed=True), status_code=401)
    answer = RedirectResponse("/dashboard", status_code=303)
    answer.set_cookie(COOKIE, session_value(token), max_age=COOKIE_TTL_S, path="/dashboard", httponly=True,
                      samesite="strict", secure=request.url.scheme == "https")
    return answer
