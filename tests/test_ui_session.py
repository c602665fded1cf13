"""Dashboard sessions without a browser: login, the cookie on /v1/* with its CSRF header, logout, revocation.

Real PostgreSQL and Redis behind the app factory (TestClient); the browser tests are in test_ui.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from gateway_support import make_key, revoke

from distillery.config import Settings
from distillery_gateway.ui.session import COOKIE, CSRF_HEADER

PAGES = ("/ui/jobs", "/ui/teachers", "/ui/training", "/ui/models", "/ui/playground")


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    from distillery_gateway.app import create_app

    with TestClient(create_app(settings=settings), follow_redirects=False) as client:
        yield client


def login(client: TestClient, key: str, next_path: str = "/ui/jobs"):
    form = client.get("/ui/login")
    assert form.status_code == 200
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return client.post(
        "/ui/login",
        content=f"csrf={token}&next={next_path}&api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def csrf_of(client: TestClient) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/ui/jobs").text).group(1)


def test_pages_redirect_to_login_without_a_session(app_client: TestClient) -> None:
    for path in PAGES:
        response = app_client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login?next=/ui/")
    app_client.cookies.set(COOKIE, "forged")
    assert app_client.get("/ui/jobs").headers["location"].startswith("/ui/login")
    # An API call with a dead session cookie is a 401, not a redirect.
    response = app_client.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_session"


def test_login_sets_an_httponly_strict_cookie_without_the_key(
    app_client: TestClient, settings: Settings
) -> None:
    key = make_key(settings.database_url, ("infer", "jobs:read", "train:read"), "reader")
    response = login(app_client, key, "/ui/models")
    assert response.status_code == 303 and response.headers["location"] == "/ui/models"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert key not in cookie and key.split("_", 2)[2] not in cookie
    for path in PAGES:
        page = app_client.get(path)
        assert page.status_code == 200, path
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "reader" in page.text


def test_wrong_key_or_missing_form_token_does_not_log_in(app_client: TestClient, settings: Settings) -> None:
    response = login(app_client, "dst_000000000000_nope")
    assert response.status_code == 401 and "Invalid or revoked API key" in response.text
    key = make_key(settings.database_url, ("admin",))
    forged = app_client.post(
        "/ui/login",
        content=f"csrf=guess&api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert forged.status_code == 403 and COOKIE not in forged.headers.get("set-cookie", "")
    # Only dashboard paths are followed after login (no open redirect).
    assert login(app_client, key, "https://evil.example/").headers["location"] == "/ui/jobs"


def test_the_cookie_authenticates_the_api_and_unsafe_calls_need_the_csrf_header(
    app_client: TestClient, settings: Settings
) -> None:
    login(app_client, make_key(settings.database_url, ("infer", "jobs:read")))
    assert app_client.get("/v1/rationale-jobs").status_code == 200
    no_token = app_client.post("/v1/registry/models/zzz/promote")
    assert no_token.status_code == 403 and no_token.json()["error"]["code"] == "csrf_failed"
    wrong = app_client.post("/v1/registry/models/zzz/promote", headers={CSRF_HEADER: "wrong"})
    assert wrong.json()["error"]["code"] == "csrf_failed"
    # With the token, the API's own scope check answers, exactly as for the key.
    scoped = app_client.post("/v1/registry/models/zzz/promote", headers={CSRF_HEADER: csrf_of(app_client)})
    assert scoped.status_code == 403 and scoped.json()["error"]["code"] == "insufficient_scope"


def test_logout_and_revocation_end_the_session(app_client: TestClient, settings: Settings) -> None:
    key = make_key(settings.database_url, ("admin",))
    login(app_client, key)
    token = csrf_of(app_client)
    refused = app_client.post(
        "/ui/logout", content="csrf=wrong", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert refused.status_code == 403
    out = app_client.post(
        "/ui/logout", content=f"csrf={token}", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert app_client.get("/ui/jobs").status_code == 303

    login(app_client, key)
    assert app_client.get("/ui/jobs").status_code == 200
    revoke(settings.database_url, key)
    assert app_client.get("/ui/jobs").status_code == 303
    assert app_client.get("/v1/models").status_code == 401


def test_static_assets_are_served_by_the_gateway(app_client: TestClient) -> None:
    css = app_client.get("/ui/static/app.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert app_client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    assert app_client.get("/ui/static/..%2Fpages.py").status_code == 404
    assert app_client.get("/ui/static/nope.js").status_code == 404
