"""Least privilege, end to end: each refusal of issue #14 against the real app (PostgreSQL, Redis).

The route x scope matrix (every route, every scope) is tests/test_auth_matrix.py; this file shows the
specific refusals: a `jobs:write` key registering a teacher, an off-list `base_url`, a precomputed path
outside the roots, a forged Redis session, an `infer` key exporting rationales, another key's job
cancelled without `admin`, and the dashboard honouring the same read scopes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from jobs_support import count_rows, import_arc, make_key

from distillery import apikeys
from distillery.config import Settings
from distillery.datasets import SAMPLES_DIR
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.teachers import registry
from distillery.teachers.base import TeacherSpec
from distillery_gateway.ui.session import COOKIE

TEACHER = {"name": "phi", "base_url": "http://127.0.0.1:9/v1", "model": "phi"}
JOB = {"dataset": "arc", "limit": 4, "teachers": ["smol"], "in_context": {"strategy": "none", "k": 0}}
RUN = {"student": "tiny-causal", "method": "label_ft", "dataset": "arc", "split": "train"}
RUN["eval"] = {"split": "train"}


@contextmanager
def served(settings: Settings, **overrides: object) -> Iterator[TestClient]:
    """The app (no model served) over 8 ARC examples and one teacher, `smol`, with `overrides`."""
    from distillery_gateway.app import create_app

    import_arc(settings.database_url, 8)
    with session_scope(settings.database_url) as session:
        registry.upsert_teacher(
            session, TeacherSpec(name="smol", base_url="http://127.0.0.1:9/v1", model="s")
        )
    app = create_app(settings=settings.model_copy(update={"default_model": "none", **overrides}))
    with TestClient(app, follow_redirects=False) as client:
        yield client


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with served(settings, auth_cache_s=0) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keys(settings: Settings, *names: str) -> dict[str, dict[str, str]]:
    """A key per scope (named by the scope), as request headers."""
    return {name: bearer(make_key(settings.database_url, (name,), name=name)) for name in names}


def error_of(response) -> dict:
    return response.json()["error"]


def test_registering_a_teacher_needs_admin_and_an_allowed_location(
    api: TestClient, settings: Settings
) -> None:
    k = keys(settings, "jobs:write", "admin")
    for body in (TEACHER, {**TEACHER, "name": "smol"}):  # create, and overwrite an existing one
        refused = api.post("/v1/teachers", json=body, headers=k["jobs:write"])
        assert refused.status_code == 403 and error_of(refused)["code"] == "insufficient_scope"
    for base_url in (
        "http://169.254.169.254/latest",  # cloud metadata
        "https://attacker.example.com/v1",
        "http://127.0.0.1.attacker.example/v1",
        "file:///etc/passwd",
        "ftp://127.0.0.1/v1",
    ):
        refused = api.post("/v1/teachers", json={**TEACHER, "base_url": base_url}, headers=k["admin"])
        assert refused.status_code == 422, (base_url, refused.text)
        assert error_of(refused)["param"] == "base_url" and "base_url" in error_of(refused)["message"]
    for path in ("/", "/etc", str(settings.home.parent / "outside.jsonl"), f"file://{SAMPLES_DIR}/../../.."):
        body = {"name": "pre", "backend": "precomputed", "base_url": path}
        refused = api.post("/v1/teachers", json=body, headers=k["admin"])
        assert refused.status_code == 422, (path, refused.text)
        assert error_of(refused)["param"] == "base_url"
    with session_scope(settings.database_url) as session:
        smol = registry.get_teacher_by_name(session, "smol")
        assert smol is not None and smol.base_url == "http://127.0.0.1:9/v1"
    assert count_rows(settings.database_url, m.Teacher) == 1
    # What is allowed: a loopback or service-name host, a file under the roots (the bundled samples).
    assert api.post("/v1/teachers", json=TEACHER, headers=k["admin"]).status_code == 201
    service = {**TEACHER, "name": "cpu", "base_url": "http://teacher-cpu:8100/v1"}
    assert api.post("/v1/teachers", json=service, headers=k["admin"]).status_code == 201
    sample = str(SAMPLES_DIR / "rationales" / "arc" / "train.jsonl")
    precomputed = {"name": "flan", "backend": "precomputed", "base_url": sample, "model": "flan-t5-xl"}
    assert api.post("/v1/teachers", json=precomputed, headers=k["admin"]).status_code == 201


def test_the_allow_list_is_configurable(settings: Settings) -> None:
    spec = TeacherSpec(name="x", base_url="https://api.example.org/v1", model="x")
    registry.check_location(spec, ".example.org", [])
    with pytest.raises(ValueError, match="^base_url: "):
        registry.check_location(spec, "example.org,localhost", [])


def test_reads_need_their_scope(api: TestClient, settings: Settings) -> None:
    k = keys(settings, "infer", "jobs:read", "jobs:write", "train:read", "models:read", "admin")
    job = api.post("/v1/rationale-jobs", json=JOB, headers=k["jobs:write"])
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    jobs_reads = (
        "/v1/rationale-jobs",
        f"/v1/rationale-jobs/{job_id}",
        f"/v1/rationale-jobs/{job_id}/rationales",
        f"/v1/rationale-jobs/{job_id}/export",
        "/v1/teachers",
        "/v1/teachers/smol",
        "/v1/teachers/smol/stats",
    )
    expected = {
        # path: the keys that may read it
        **{path: {"jobs:read", "jobs:write", "admin"} for path in jobs_reads},
        "/v1/training-runs": {"train:read", "admin"},
        "/v1/registry/models": {"models:read", "infer", "admin"},
        "/v1/models": {"models:read", "infer", "admin"},
    }
    wrong = []
    for path, allowed in expected.items():
        for name, headers in k.items():
            status = api.get(path, headers=headers).status_code
            if (status == 403) == (name in allowed):
                wrong.append(f"GET {path} with {name}: {status}")
    assert not wrong, "\n".join(wrong)
    # The refusal the issue names: an infer key exporting rationales.
    refused = api.get(f"/v1/rationale-jobs/{job_id}/export", headers=k["infer"])
    assert refused.status_code == 403 and "jobs:read" in error_of(refused)["message"]
    # A read scope writes nothing.
    assert api.post("/v1/rationale-jobs", json=JOB, headers=k["jobs:read"]).status_code == 403
    assert api.post(f"/v1/rationale-jobs/{job_id}/cancel", headers=k["jobs:read"]).status_code == 403


def test_work_records_its_key_and_only_its_key_or_admin_cancels_it(
    api: TestClient, settings: Settings
) -> None:
    owner_key = make_key(settings.database_url, ("jobs:write", "train:write"), name="owner")
    other, admin = (
        bearer(make_key(settings.database_url, ("jobs:write", "train:write"))),
        keys(settings, "admin"),
    )
    owner = bearer(owner_key)
    owner_id = apikeys.split_key(owner_key)[0]  # type: ignore[index]
    jobs = [
        api.post("/v1/rationale-jobs", json={**JOB, "limit": n}, headers=owner).json()["id"] for n in (1, 2)
    ]
    run = api.post("/v1/training-runs", json=RUN, headers=owner)
    assert run.status_code == 202, run.text
    with session_scope(settings.database_url) as session:
        assert {session.get(m.RationaleJob, j).created_by for j in jobs} == {owner_id}  # type: ignore[union-attr]
        assert session.get(m.TrainingRun, run.json()["id"]).created_by == owner_id  # type: ignore[union-attr]
    for path in (f"/v1/rationale-jobs/{jobs[0]}/cancel", f"/v1/training-runs/{run.json()['id']}/cancel"):
        refused = api.post(path, headers=other)
        assert refused.status_code == 403, refused.text
        assert "another API key" in error_of(refused)["message"]
    assert api.get(f"/v1/rationale-jobs/{jobs[0]}", headers=owner).json()["status"] == "queued"
    assert api.post(f"/v1/rationale-jobs/{jobs[0]}/cancel", headers=owner).json()["status"] == "cancelled"
    assert (
        api.post(f"/v1/rationale-jobs/{jobs[1]}/cancel", headers=admin["admin"]).json()["status"]
        == "cancelled"
    )
    assert api.post(f"/v1/training-runs/{run.json()['id']}/cancel", headers=owner).status_code == 200


def login(client: TestClient, key: str) -> None:
    form = client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    response = client.post(
        "/ui/login",
        content=f"csrf={token}&next=/ui/jobs&api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 303, response.text


def test_a_forged_or_copied_redis_session_is_refused(api: TestClient, settings: Settings) -> None:
    admin_key = make_key(settings.database_url, ("admin",), name="admin")
    admin_id = apikeys.split_key(admin_key)[0]  # type: ignore[index]
    store = redis_lib.Redis.from_url(settings.redis_url)  # type: ignore[arg-type]
    prefix = "distillery:ui:session:"
    try:
        # Someone who can write to Redis (no password) mints a record naming the admin key's id.
        forged = {"key_id": admin_id, "csrf": "x", "expires": 4102444800, "sig": "0" * 64}
        for record in ({"key_id": admin_id, "csrf": "x"}, forged, "not json"):
            session_id = "forged-session"
            store.set(prefix + hashlib.sha256(session_id.encode()).hexdigest(), json.dumps(record))
            api.cookies.set(COOKIE, session_id)
            response = api.get("/v1/rationale-jobs")
            assert response.status_code == 401 and error_of(response)["code"] == "invalid_session"
            assert api.get("/ui/jobs").headers["location"].startswith("/ui/login")
        # A real session's record copied under a session id the attacker chose does not verify either.
        api.cookies.clear()
        login(api, admin_key)
        real = api.cookies.get(COOKIE)
        assert api.get("/v1/rationale-jobs").status_code == 200
        raw = store.get(prefix + hashlib.sha256(real.encode()).hexdigest())  # type: ignore[union-attr]
        record = json.loads(raw)  # type: ignore[arg-type]
        assert set(record) == {"key_id", "csrf", "expires", "sig"}
        store.set(prefix + hashlib.sha256(b"copied").hexdigest(), raw)  # type: ignore[arg-type]
        api.cookies.clear()
        api.cookies.set(COOKIE, "copied")
        assert api.get("/v1/rationale-jobs").status_code == 401
        # ... nor one whose expiry was pushed out.
        record["expires"] += 3600
        store.set(prefix + hashlib.sha256(real.encode()).hexdigest(), json.dumps(record))
        api.cookies.clear()
        api.cookies.set(COOKIE, real)
        assert api.get("/v1/rationale-jobs").status_code == 401
    finally:
        store.close()


def test_the_dashboard_honours_the_read_scopes(api: TestClient, settings: Settings) -> None:
    login(api, make_key(settings.database_url, ("infer",), name="inferer"))
    for path in ("/ui/jobs", "/ui/teachers", "/ui/training"):
        page = api.get(path)
        assert page.status_code == 403 and "scope" in page.text, path
    for path in ("/ui/models", "/ui/playground"):
        assert api.get(path).status_code == 200, path
    api.cookies.clear()
    login(api, make_key(settings.database_url, ("jobs:read",), name="reader"))
    assert api.get("/ui/jobs").status_code == 200 and api.get("/ui/teachers").status_code == 200
    assert api.get("/ui/training").status_code == 403 and api.get("/ui/playground").status_code == 403
