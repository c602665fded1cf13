"""Bounded serving and hostile input against the real gateway (uvicorn, PostgreSQL, Redis).

- Redis unreachable (a black-holed port: it accepts connections and never answers): authenticated
  requests still answer within 2 s, `/readyz` does not depend on Redis.
- `logprobs` over DISTILLERY_MAX_LOGPROB_TOKENS generated tokens: 400 naming `logprobs`; without
  max_tokens it shrinks; an echoed prompt of any length is scored (memory bounded, not counted).
- The token budget charges prompt plus most completion tokens per key (429 past it).
- Failed authentications are rate-limited per client (429 before any key lookup).
- The session cookie is `Secure` behind a TLS ingress (X-Forwarded-Proto).
- At least 30 malformed requests across the endpoints: a 4xx naming the field, and no row written.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from gateway_support import gateway_settings
from jobs_support import count_rows, gateway, make_key
from test_privileges import served

from distillery.config import Settings
from distillery.store import models as m


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A Redis URL whose port accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1024)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


def test_an_unreachable_redis_does_not_hang_authenticated_requests(
    settings: Settings, black_hole: str
) -> None:
    key = make_key(settings.database_url, ("admin",))
    slow = settings.model_copy(update={"redis_url": black_hole, "default_model": "none"})
    with gateway(slow) as url, httpx.Client(base_url=url, timeout=10) as http:
        headers = {"Authorization": f"Bearer {key}"}
        timings = {}
        for path in ("/v1/teachers", "/v1/rationale-jobs", "/v1/training-runs", "/v1/registry/models") * 3:
            start = time.monotonic()
            response = http.get(path, headers=headers)
            timings[path] = max(timings.get(path, 0.0), time.monotonic() - start)
            assert response.status_code == 200, (path, response.text)
        wrong = http.get("/v1/teachers", headers={"Authorization": "Bearer dst_000000000000_nope"})
        assert wrong.status_code == 401
        start = time.monotonic()
        ready = http.get("/readyz")
        timings["/readyz"] = time.monotonic() - start
        assert ready.json()["checks"]["redis"] is False and ready.json()["checks"]["database"] is True
        assert max(timings.values()) < 2.0, timings
        print("slowest answers with Redis black-holed (s):", {k: round(v, 3) for k, v in timings.items()})


def test_logprobs_are_capped(settings: Settings) -> None:
    key = make_key(settings.database_url, ("infer",))
    capped = gateway_settings(settings, max_logprob_tokens=16)
    with gateway(capped) as url, httpx.Client(base_url=url, timeout=60) as http:
        http.headers["Authorization"] = f"Bearer {key}"
        ready = time.monotonic() + 120
        while http.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < ready
            time.sleep(0.2)
        model = http.get("/v1/models").json()["data"][0]["id"]
        base = {"model": model, "prompt": "Hello", "temperature": 0, "logprobs": 1}
        for over in (
            {"max_tokens": 17},
            {"max_tokens": 4, "n": 5},
            {"max_tokens": 3, "prompt": ["a", "b", "c", "d", "e", "f"]},
        ):
            response = http.post("/v1/completions", json={**base, **over})
            assert response.status_code == 400, (over, response.text)
            error = response.json()["error"]
            assert error["param"] == "logprobs" and "DISTILLERY_MAX_LOGPROB_TOKENS" in error["message"]
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "logprobs": True}
        response = http.post("/v1/chat/completions", json={**chat, "max_tokens": 9, "n": 2})
        assert response.status_code == 400 and response.json()["error"]["param"] == "logprobs"
        # An echoed prompt is scored with bounded memory (prefill logits or chunks): not counted.
        echoed = http.post(
            "/v1/completions", json={**base, "max_tokens": 1, "echo": True, "prompt": "word " * 150}
        )
        assert echoed.status_code == 200, echoed.text
        assert len(echoed.json()["choices"][0]["logprobs"]["token_logprobs"]) > 150
        # Within the cap it answers; without max_tokens (chat) the completion shrinks to the cap.
        fits = http.post("/v1/completions", json={**base, "max_tokens": 8, "n": 2})
        assert fits.status_code == 200, fits.text
        shrunk = http.post("/v1/chat/completions", json={**chat, "n": 4}).json()
        assert "choices" in shrunk, shrunk
        assert all(len(c["logprobs"]["content"]) <= 4 for c in shrunk["choices"])


def test_the_token_budget_counts_prompt_and_most_completion_tokens(settings: Settings) -> None:
    key, other = make_key(settings.database_url, ("infer",)), make_key(settings.database_url, ("infer",))
    budget = gateway_settings(settings, token_rate_limit_per_minute=100)
    with gateway(budget) as url, httpx.Client(base_url=url, timeout=60) as http:
        ready = time.monotonic() + 120
        while http.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < ready
            time.sleep(0.2)
        body = {"model": "tiny-causal", "prompt": "Hello there", "max_tokens": 60, "temperature": 0}
        first = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert first.status_code == 200, first.text
        # Under 40 of the 100 tokens a minute are left: a second request that may generate 60 is over.
        second = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert second.status_code == 429, second.text
        error = second.json()["error"]
        assert error["code"] == "token_rate_limit_exceeded" and "60 completion tokens" in error["message"]
        assert int(second.headers["Retry-After"]) >= 1
        # One request per minute would be nowhere near the request limit; another key has its own budget.
        assert http.post(
            "/v1/completions", json=body, headers={"Authorization": f"Bearer {other}"}
        ).is_success


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with served(settings, auth_failures_per_minute=5) as client:
        yield client


def test_failed_authentications_are_rate_limited(api: TestClient, settings: Settings) -> None:
    statuses = [
        api.get("/v1/teachers", headers={"Authorization": f"Bearer dst_00000000000{i % 10}_x"}).status_code
        for i in range(8)
    ]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    limited = api.get("/v1/teachers", headers={"Authorization": "Bearer dst_000000000000_x"})
    assert (
        limited.json()["error"]["code"] == "too_many_auth_failures"
        and int(limited.headers["Retry-After"]) >= 1
    )


def test_the_session_cookie_is_secure_behind_tls(api: TestClient, settings: Settings) -> None:
    form = api.get("/ui/login", headers={"X-Forwarded-Proto": "https"})
    assert "secure" in form.headers["set-cookie"].lower()
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    key = make_key(settings.database_url, ("admin",))
    response = api.post(
        "/ui/login",
        content=f"csrf={token}&next=/ui/jobs&api_key={key}",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Forwarded-Proto": "https",
            # A Secure cookie does not travel over the test's plain http: send it as a browser would.
            "Cookie": f"distillery_login_csrf={token}",
        },
    )
    assert response.status_code == 303
    cookies = response.headers.get_list("set-cookie")
    assert any(c.startswith("distillery_session=") and "secure" in c.lower() for c in cookies), cookies
    plain = api.get("/ui/login")
    assert "secure" not in plain.headers["set-cookie"].lower()


JOB = {"dataset": "arc", "limit": 4, "teachers": ["smol"]}
TEACHER = {"name": "phi", "base_url": "http://127.0.0.1:9/v1", "model": "phi"}
RUN = {"student": "tiny-causal", "method": "label_ft", "dataset": "arc", "split": "train"}
COMPLETION = {"model": "x", "prompt": "hi"}
CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
# (method, path, body, the field the error must name)
MALFORMED = [
    ("POST", "/v1/rationale-jobs", {**JOB, "dataset": ""}, "dataset"),
    ("POST", "/v1/rationale-jobs", {**JOB, "dataset": "x" * 101}, "dataset"),
    ("POST", "/v1/rationale-jobs", {**JOB, "limit": 0}, "limit"),
    ("POST", "/v1/rationale-jobs", {**JOB, "limit": "many"}, "limit"),
    ("POST", "/v1/rationale-jobs", {**JOB, "teachers": []}, "teachers"),
    ("POST", "/v1/rationale-jobs", {**JOB, "teachers": "smol"}, "teachers"),
    ("POST", "/v1/rationale-jobs", {**JOB, "teachers": ["ghost"]}, "teachers"),
    ("POST", "/v1/rationale-jobs", {**JOB, "split": "holdout"}, "split"),
    ("POST", "/v1/rationale-jobs", {**JOB, "samples_per_example": 17}, "samples_per_example"),
    ("POST", "/v1/rationale-jobs", {**JOB, "surprise": 1}, "surprise"),
    ("POST", "/v1/rationale-jobs", {**JOB, "in_context": {"k": -1}}, "in_context.k"),
    ("POST", "/v1/rationale-jobs", {**JOB, "generation": {"temperature": 9}}, "generation.temperature"),
    ("POST", "/v1/rationale-jobs", {**JOB, "ids": ["a", "a"], "limit": None}, "ids"),
    ("POST", "/v1/teachers", {**TEACHER, "name": "bad name"}, "name"),
    ("POST", "/v1/teachers", {**TEACHER, "backend": "ollama"}, "backend"),
    ("POST", "/v1/teachers", {**TEACHER, "base_url": "http://10.0.0.1/v1"}, "base_url"),
    ("POST", "/v1/teachers", {**TEACHER, "max_concurrency": 0}, "max_concurrency"),
    ("POST", "/v1/teachers", {**TEACHER, "timeout_s": 99999}, "timeout_s"),
    ("POST", "/v1/teachers", {**TEACHER, "params": {"top_p": 0}}, "params.top_p"),
    ("POST", "/v1/teachers", {"name": "pre", "backend": "precomputed", "base_url": "/etc"}, "base_url"),
    ("POST", "/v1/training-runs", {**RUN, "student": "no-such-model"}, "student"),
    ("POST", "/v1/training-runs", {**RUN, "method": "magic"}, "method"),
    ("POST", "/v1/training-runs", {**RUN, "dataset": ""}, "dataset"),
    ("POST", "/v1/training-runs", {**RUN, "alphas": {"t": -1}}, "alphas.t"),
    ("POST", "/v1/registry/models", {"name": "m"}, "path"),
    ("POST", "/v1/registry/models", {"name": "", "path": "/tmp"}, "name"),
    ("POST", "/v1/completions", {**COMPLETION, "n": 0}, "n"),
    ("POST", "/v1/completions", {**COMPLETION, "temperature": -1}, "temperature"),
    ("POST", "/v1/completions", {**COMPLETION, "logprobs": 9}, "logprobs"),
    ("POST", "/v1/completions", {"model": "x"}, "prompt"),
    ("POST", "/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
    ("POST", "/v1/chat/completions", {**CHAT, "top_p": 2}, "top_p"),
    ("POST", "/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ("POST", "/v1/predict", {"question": ""}, "question"),
    ("GET", "/v1/rationale-jobs?limit=0", None, "limit"),
    ("GET", "/v1/rationale-jobs?status=exploded", None, "status"),
    ("GET", "/v1/training-runs?limit=100000", None, "limit"),
    ("GET", "/v1/registry/models?stage=heaven", None, "stage"),
    ("GET", "/v1/rationale-jobs/abc/export?format=csv", None, "format"),
]
TABLES = (m.RationaleJob, m.Teacher, m.TrainingRun, m.Model, m.Rationale, m.ApiKey)


def test_malformed_requests_name_the_field_and_write_nothing(api: TestClient, settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {make_key(settings.database_url, ('admin',))}"}
    before = {t.__tablename__: count_rows(settings.database_url, t) for t in TABLES}
    wrong = []
    for method, path, body, field in MALFORMED:
        response = api.request(method, path, json=body, headers=headers)
        try:
            error = response.json()["error"]
            named = {error.get("param"), *(d.get("field") for d in error.get("details") or [])}
        except (ValueError, KeyError, TypeError):
            named = set()
        if not 400 <= response.status_code < 500 or not any(field == n or field in str(n) for n in named):
            wrong.append(f"{method} {path} {body}: {response.status_code} {response.text[:160]}")
    assert len(MALFORMED) >= 30
    assert not wrong, "\n".join(wrong)
    assert {t.__tablename__: count_rows(settings.database_url, t) for t in TABLES} == before
