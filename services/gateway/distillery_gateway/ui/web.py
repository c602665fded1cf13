"""What every dashboard page shares: the templates, the session dependency and the HTML responses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from distillery_gateway.errors import APIError
from distillery_gateway.ui.session import CSRF_HEADER, SessionStore, UISession

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
LOGIN_PATH = "/ui/login"

# Everything the pages load comes from the gateway itself; nothing inline runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _when(value: datetime | int | float | None) -> str:
    if value is None or value == 0:
        return "-"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f} %"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(when=_when, pct=_pct, num=_num, pretty=lambda v: json.dumps(v, indent=2))
templates.env.globals["csrf_header"] = CSRF_HEADER


class LoginRequired(Exception):
    """Raised by page dependencies without a live session; answered with a redirect to the login page."""

    def __init__(self, next_path: str):
        self.next_path = next_path


def login_redirect(next_path: str | None = None) -> RedirectResponse:
    target = LOGIN_PATH + (f"?next={quote(next_path, safe='/')}" if next_path else "")
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


def safe_next(value: str | None) -> str:
    """Where to go after logging in: only a dashboard path of this site (no open redirect)."""
    if value and value.startswith("/ui/") and "//" not in value and "\\" not in value:
        return value
    return "/ui/jobs"


async def current_session(request: Request) -> UISession:
    store: SessionStore = request.app.state.ui_sessions
    session = await store.from_request(request)
    if session is None:
        raise LoginRequired(request.url.path)
    request.state.principal = session.principal
    return session


SessionPage = Annotated[UISession, Depends(current_session)]


class PageForbidden(Exception):
    """Raised by `page_scope` when the session's key lacks the page's scope; answered with a 403 page."""

    def __init__(self, session: UISession, scope: str):
        self.session = session
        self.scope = scope


def page_scope(scope: str) -> Any:
    """Dependency: the page's session, whose key must hold `scope` (the scope of the API reads it shows)."""

    async def check(session: SessionPage) -> UISession:
        if not session.principal.allows(scope):
            raise PageForbidden(session, scope)
        return session

    check.required_scope = scope  # type: ignore[attr-defined]
    return Depends(check)


JobsPage = Annotated[UISession, page_scope("jobs:read")]
TrainingPage = Annotated[UISession, page_scope("train:read")]
ModelsPage = Annotated[UISession, page_scope("models:read")]
PlaygroundPage = Annotated[UISession, page_scope("infer")]


def render(
    request: Request,
    template: str,
    session: UISession | None = None,
    status_code: int = 200,
    **context: object,
) -> HTMLResponse:
    context = {"session": session, "page": template.removesuffix(".html"), **context}
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def render_error(request: Request, session: UISession, exc: APIError) -> HTMLResponse:
    return render(
        request, "error.html", session, status_code=exc.status, status=exc.status, message=exc.message
    )
