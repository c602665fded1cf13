"""Every route of the app x (no key, wrong key, revoked key, key lacking the scope, right key).

Routes are enumerated from `app.routes` (through FastAPI's included routers), so a route added later
is covered without editing this file. A route's scope is what its `require_scope(...)` dependency says
(routes without one are reads: any valid key). Only the health probes and the OpenAPI pages may
answer without a key; the dashboard's pages (/ui) redirect to its login page instead of a 401.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.testclient import TestClient
from gateway_support import make_key, revoke

from distillery import apikeys
from distillery.config import Settings

PUBLIC_API = {"/healthz", "/readyz"}
# FastAPI's own pages: the OpenAPI document describes the API and serves nothing (as in vLLM).
DOC_PAGES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
DENIED = {401, 403}
# The dashboard: its pages send a browser without a session to the login page (tests/test_ui_session.py);
# only the login form and the static assets answer without one.
UI_PREFIX = "/ui"
UI_PUBLIC = {"/ui/login", "/ui/static/{name}"}


def required_scope(route: RouteContext) -> str | None:
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        scope = getattr(dep.call, "required_scope", None)
        if scope:
            return scope
        pending.extend(dep.dependencies)
    return None


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "zzz", path)


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    from distillery_gateway.app import create_app

    # The matrix makes hundreds of failed authentications from one client: lift that limit here
    # (tests/test_gateway_bounds.py checks it).
    lifted = settings.model_copy(update={"auth_failures_per_minute": 1_000_000})
    with TestClient(create_app(settings=lifted)) as client:
        yield client


def operations(client: TestClient) -> list[tuple[str, str, str | None]]:
    ops = []
    for route in iter_route_contexts(client.app.routes):
        if (
            isinstance(route.original_route, APIRoute)
            and route.path not in PUBLIC_API
            and not route.path.startswith(UI_PREFIX)
        ):
            ops += [(method, route.path, required_scope(route)) for method in sorted(route.methods)]
    return ops


def call(client: TestClient, method: str, path: str, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, concrete(path), headers=headers, json=body, follow_redirects=False)


def denied(response) -> bool:
    to_login = response.status_code == 303 and response.headers["location"].startswith("/ui/login")
    return response.status_code in DENIED or to_login


def test_every_route_checks_key_and_scope(app_client: TestClient, settings: Settings) -> None:
    url = settings.database_url
    revoked = make_key(url, ("admin",), "revoked")
    revoke(url, revoked)
    ops = operations(app_client)
    assert len(ops) >= 15, ops  # serving, registry, metrics, jobs, teachers, training
    failures = []
    for method, path, scope in ops:
        cases: list[tuple[str, str | None, set[int] | None]] = [
            ("no key", None, {401}),
            ("wrong key", "dst_000000000000_notasecret", {401}),
            ("malformed key", "not-a-key", {401}),
            ("revoked key", revoked, {401}),
        ]
        if scope is not None:
            # Every scope that does not grant this one (a write scope implies its read scope).
            others = tuple(
                s for s in apikeys.SCOPES if not apikeys.Principal("x", "x", frozenset({s})).allows(scope)
            )
            cases.append(("key lacking scope", make_key(url, others), {403}))
            cases.append(("right key", make_key(url, (scope,)), None))
        else:
            cases.append(("any key", make_key(url, ("infer",)), None))
        cases.append(("admin key", make_key(url, ("admin",)), None))
        for label, key, expected in cases:
            response = call(app_client, method, path, key)
            ok = response.status_code in expected if expected else response.status_code not in DENIED
            if not ok:
                failures.append(f"{method} {path} with {label}: {response.status_code} {response.text[:120]}")
                continue
            if response.status_code in DENIED:
                error = response.json()["error"]
                assert error["type"] == (
                    "authentication_error" if response.status_code == 401 else "permission_error"
                )
                if response.status_code == 401:
                    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert not failures, "\n".join(failures)


def test_only_health_and_docs_answer_without_a_key(app_client: TestClient) -> None:
    open_paths = set()
    for route in iter_route_contexts(app_client.app.routes):
        methods = sorted(route.methods or {"GET"})
        for method in methods:
            if method == "HEAD":
                continue
            if not denied(call(app_client, method, route.path, None)):
                open_paths.add(route.path)
    assert open_paths == PUBLIC_API | DOC_PAGES | UI_PUBLIC


def test_metrics_can_be_made_public_for_scrapers(settings: Settings) -> None:
    from distillery_gateway.app import create_app

    with TestClient(create_app(settings=settings.model_copy(update={"metrics_public": True}))) as client:
        response = client.get("/metrics")
        assert response.status_code == 200 and "distillery_gateway_requests_total" in response.text


def test_a_revoked_key_stops_working(settings: Settings) -> None:
    from distillery_gateway.app import create_app

    key = make_key(settings.database_url, ("infer",))
    headers = {"Authorization": f"Bearer {key}"}
    # With the key cache off a revocation shows at once; by default it shows within auth_cache_s.
    with TestClient(create_app(settings=settings.model_copy(update={"auth_cache_s": 0}))) as client:
        assert client.get("/v1/models", headers=headers).status_code == 200
        revoke(settings.database_url, key)
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
