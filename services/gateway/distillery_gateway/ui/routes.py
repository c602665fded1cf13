"""/ui: login, logout, static assets, and the wiring of the dashboard into the app.

The dashboard's routes are left out of the OpenAPI document and skip the app-wide key check: each page
checks the session itself and sends the browser to /ui/login without one (the API answers 401 instead).
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import iter_route_contexts

from distillery_gateway.errors import APIError
from distillery_gateway.ui import pages
from distillery_gateway.ui.session import COOKIE, LOGIN_CSRF_COOKIE, SessionStore, check_key, tokens_match
from distillery_gateway.ui.web import (
    STATIC_DIR,
    LoginRequired,
    PageForbidden,
    SessionPage,
    login_redirect,
    render,
    safe_next,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_FORM_BYTES = 16 * 1024
STATIC_NAME = re.compile(r"^[a-z0-9_-]+\.(css|js|svg)$")
MEDIA_TYPES = {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the dashboard's own forms only; no multipart)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise APIError(413, "form too large", code="request_too_large")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _cookie_secure(request: Request) -> bool:
    """The Secure flag: DISTILLERY_SECURE_COOKIES, else whether the browser reached us over TLS (directly,
    or through a TLS-terminating ingress that says so in X-Forwarded-Proto)."""
    configured = request.app.state.settings.secure_cookies
    if configured is not None:
        return bool(configured)
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _login_page(request: Request, next_path: str, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", status_code=status, login_csrf=token, next_path=next_path, error=error
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
        path="/ui/login",
        max_age=3600,
    )
    return response


@router.get("", response_class=HTMLResponse)
def index(_: SessionPage) -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the pasted key once; on success start a session and go where the user was heading."""
    form = await read_form(request)
    next_path = safe_next(form.get("next"))
    if not tokens_match(form.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        return _login_page(request, next_path, "The login form expired; please try again.", 403)
    key = form.get("api_key", "").strip()
    if not key:
        return _login_page(request, next_path, "Paste an API key.", 401)
    app = request.app
    principal = await run_in_threadpool(check_key, app.state.database_url, app.state.settings, key)
    if principal is None:
        return _login_page(request, next_path, "Invalid or revoked API key.", 401)
    store: SessionStore = app.state.ui_sessions
    session_id = await run_in_threadpool(store.create, principal)
    log.info("dashboard login with key %s (%s)", principal.key_id, principal.name)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
        path="/",
        max_age=store.lifetime_s,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    store: SessionStore = request.app.state.ui_sessions
    session = await store.from_request(request)
    if session is None:
        return login_redirect()
    form = await read_form(request)
    if not tokens_match(form.get("csrf"), session.csrf):
        raise APIError(403, "missing or wrong CSRF token", code="csrf_failed")
    await run_in_threadpool(store.end, request.cookies[COOKIE])
    response = login_redirect()
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/static/{name}")
def static(name: Annotated[str, Path(max_length=100)]) -> Response:
    """The dashboard's own CSS and JavaScript (no CDN: everything works offline)."""
    path = STATIC_DIR / name
    if not STATIC_NAME.match(name) or not path.is_file():
        raise APIError(404, f"no static file '{name}'", code="not_found")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[name.rsplit(".", 1)[1]],
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


def install(app: FastAPI) -> None:
    """Serve the dashboard: its routes, its session store, and the redirect to the login page."""
    app.state.ui_sessions = SessionStore(
        app.state.redis, app.state.database_url, app.state.settings.api_key_pepper
    )
    for each in (router, pages.router):
        app.include_router(each)
        # The pages check the dashboard session themselves (redirect, not 401): the key check skips them.
        app.state.public_paths |= {route.path for route in iter_route_contexts(each.routes)}

    @app.exception_handler(LoginRequired)
    async def _to_login(_: Request, exc: LoginRequired) -> Response:
        return login_redirect(exc.next_path)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> Response:
        message = f"This page needs an API key with the '{exc.scope}' scope."
        return render(request, "error.html", exc.session, status_code=403, status=403, message=message)
