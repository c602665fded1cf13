"""The rationale-job and teacher REST API against real PostgreSQL and Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from jobs_support import count_rows, import_arc, make_key
from sqlalchemy import update

from distillery.config import Settings
from distillery.datasets import load_jsonl, sample_file
from distillery.queue import QUEUE_RATIONALES, TASK_START_JOB
from distillery.store import examples as ex_store
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.store.db import session_scope
from distillery.teachers import registry
from distillery.teachers.base import TeacherSpec

TEACHERS = ("smol", "gemma")


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    from distillery_gateway.app import create_app

    import_arc(settings.database_url, 24)
    tiny = load_jsonl(sample_file("arc", "dev"))[:3]
    with session_scope(settings.database_url) as session:
        ex_store.import_examples(session, "tiny", "train", tiny)
        for name, style in zip(TEACHERS, ("chat", "completion"), strict=True):
            registry.upsert_teacher(
                session,
                TeacherSpec(name=name, base_url="http://127.0.0.1:9/v1", model=name, api_style=style),
            )
    app = create_app(settings=settings, database_url=settings.database_url, redis_url=settings.redis_url)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {make_key(settings.database_url, ('jobs:write',))}"
        yield client


def queued_messages(redis_url: str) -> list[dict]:
    client = redis_lib.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in client.lrange(QUEUE_RATIONALES, 0, -1)]
    finally:
        client.close()


def valid_body(**changes: object) -> dict:
    body = {
        "dataset": "arc",
        "split": "train",
        "limit": 24,
        "teachers": list(TEACHERS),
        "in_context": {"strategy": "random", "k": 2},
        "samples_per_example": 1,
        "generation": {"max_tokens": 64, "temperature": 0.0},
    }
    body.update(changes)
    return body


# (changes to a valid body, the field the 422 must name)
MALFORMED = {
    "missing dataset": ({"dataset": None}, "dataset"),
    "empty dataset name": ({"dataset": ""}, "dataset"),
    "unknown dataset": ({"dataset": "nope"}, "dataset"),
    "unknown split": ({"split": "validation"}, "split"),
    "empty selection": ({"split": "dev"}, "split"),
    "no teachers": ({"teachers": []}, "teachers"),
    "teachers not a list": ({"teachers": "smol"}, "teachers"),
    "unknown teacher": ({"teachers": ["smol", "ghost"]}, "teachers"),
    "repeated teacher": ({"teachers": ["smol", "smol"]}, "teachers"),
    "limit zero": ({"limit": 0}, "limit"),
    "limit not a number": ({"limit": "ten"}, "limit"),
    "limit and ids": ({"ids": ["Mercury_SC_415702"]}, "ids"),
    "empty ids": ({"limit": None, "ids": []}, "ids"),
    "unknown ids": ({"limit": None, "ids": ["Mercury_SC_415702", "no-such-id"]}, "ids"),
    "unknown strategy": ({"in_context": {"strategy": "mmr", "k": 2}}, "in_context.strategy"),
    "negative k": ({"in_context": {"strategy": "random", "k": -1}}, "in_context.k"),
    "k with strategy none": ({"in_context": {"strategy": "none", "k": 2}}, "in_context.k"),
    "k larger than the pool": ({"dataset": "tiny", "limit": None, "in_context": {"k": 3}}, "in_context.k"),
    "zero samples": ({"samples_per_example": 0}, "samples_per_example"),
    "zero max_tokens": ({"generation": {"max_tokens": 0}}, "generation.max_tokens"),
    "temperature too high": ({"generation": {"temperature": 5}}, "generation.temperature"),
    "top_p zero": ({"generation": {"top_p": 0}}, "generation.top_p"),
    "unknown generation field": ({"generation": {"max_new_tokens": 64}}, "generation.max_new_tokens"),
    "unknown top-level field": ({"teacher": "smol"}, "teacher"),
}


@pytest.mark.parametrize("changes,field", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_job_request_is_422_naming_the_field_and_writes_nothing(
    api: TestClient, settings: Settings, changes: dict, field: str
) -> None:
    body = {k: v for k, v in valid_body(**changes).items() if v is not None}
    response = api.post("/v1/rationale-jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    named = {error["param"], *(d["field"] for d in error.get("details", []))}
    assert field in named, error
    assert field in error["message"]
    assert count_rows(settings.database_url, m.RationaleJob) == 0
    assert count_rows(settings.database_url, m.JobTeacher) == 0
    assert queued_messages(settings.redis_url) == []


def test_oversized_idempotency_key_is_422(api: TestClient, settings: Settings) -> None:
    response = api.post("/v1/rationale-jobs", json=valid_body(), headers={"Idempotency-Key": "k" * 201})
    assert response.status_code == 422
    assert "idempotency-key" in response.json()["error"]["param"].lower()
    assert count_rows(settings.database_url, m.RationaleJob) == 0


def test_valid_job_is_stored_queued_and_enqueued_once(api: TestClient, settings: Settings) -> None:
    response = api.post("/v1/rationale-jobs", json=valid_body())
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["total"] == 48
    assert [(t["teacher"], t["total"], t["done"]) for t in job["progress"]] == [
        ("smol", 24, 0),
        ("gemma", 24, 0),
    ]
    assert response.headers["location"] == f"/v1/rationale-jobs/{job['id']}"
    messages = queued_messages(settings.redis_url)
    assert [msg["headers"]["task"] for msg in messages] == [TASK_START_JOB]
    assert job["id"] in messages[0]["headers"]["argsrepr"]


def test_same_idempotency_key_twice_gives_one_job(api: TestClient, settings: Settings) -> None:
    headers = {"Idempotency-Key": "nightly-arc-1"}
    first = api.post("/v1/rationale-jobs", json=valid_body(), headers=headers)
    second = api.post("/v1/rationale-jobs", json=valid_body(), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert count_rows(settings.database_url, m.RationaleJob) == 1
    other = api.post("/v1/rationale-jobs", json=valid_body(limit=5), headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["param"] == "Idempotency-Key"
    assert count_rows(settings.database_url, m.RationaleJob) == 1


def test_auth_reads_need_the_read_scope_and_writes_need_the_jobs_scope(
    api: TestClient, settings: Settings
) -> None:
    reader = make_key(settings.database_url, ("jobs:read",), name="reader")
    admin = make_key(settings.database_url, ("admin",), name="admin")
    anonymous = {"Authorization": ""}
    assert api.get("/v1/rationale-jobs", headers=anonymous).status_code == 401
    assert api.post("/v1/rationale-jobs", json=valid_body(), headers=anonymous).status_code == 401
    as_reader = {"Authorization": f"Bearer {reader}"}
    assert api.get("/v1/rationale-jobs", headers=as_reader).status_code == 200
    assert api.get("/v1/teachers", headers=as_reader).status_code == 200
    denied = api.post("/v1/rationale-jobs", json=valid_body(), headers=as_reader)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_scope"
    assert (
        api.post(
            "/v1/teachers", json={"name": "x", "base_url": "http://h/v1", "model": "x"}, headers=as_reader
        ).status_code
        == 403
    )
    assert count_rows(settings.database_url, m.RationaleJob) == 0
    created = api.post("/v1/rationale-jobs", json=valid_body(), headers={"Authorization": f"Bearer {admin}"})
    assert created.status_code == 202


def test_list_get_and_unknown_job(api: TestClient) -> None:
    ids = [api.post("/v1/rationale-jobs", json=valid_body(limit=n)).json()["id"] for n in (1, 2, 3)]
    page = api.get("/v1/rationale-jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True
    rest = api.get("/v1/rationale-jobs", params={"limit": 2, "after": page["last_id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False
    assert api.get("/v1/rationale-jobs", params={"status": "queued"}).json()["data"]
    assert api.get("/v1/rationale-jobs", params={"status": "bogus"}).status_code == 422
    one = api.get(f"/v1/rationale-jobs/{ids[1]}").json()
    assert one["total"] == 4 and one["usage"]["total_tokens"] == 0
    missing = api.get("/v1/rationale-jobs/0123456789abcdef")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "job_not_found"


def test_cancel_queued_job_and_refuse_cancelling_a_finished_one(api: TestClient, settings: Settings) -> None:
    job_id = api.post("/v1/rationale-jobs", json=valid_body(limit=2)).json()["id"]
    cancelled = api.post(f"/v1/rationale-jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert api.post(f"/v1/rationale-jobs/{job_id}/cancel").json()["status"] == "cancelled"
    done_id = api.post("/v1/rationale-jobs", json=valid_body(limit=1)).json()["id"]
    with session_scope(settings.database_url) as session:
        session.execute(update(m.RationaleJob).where(m.RationaleJob.id == done_id).values(status="completed"))
    refused = api.post(f"/v1/rationale-jobs/{done_id}/cancel")
    assert refused.status_code == 409


def _store_rationales(database_url: str, job_id: str) -> None:
    """Rows as a worker would write them (flags varied for the filters)."""
    with session_scope(database_url) as session:
        job = session.get(m.RationaleJob, job_id)
        teachers = {t.name: t.id for t in registry.list_teachers(session)}
        rows = []
        for i, example_id in enumerate(job.params["example_ids"]):
            for name in TEACHERS:
                rows.append(
                    {
                        "job_id": job_id,
                        "example_id": example_id,
                        "teacher_id": teachers[name],
                        "text": f"{name} rationale {i}. The answer is (a).",
                        "finish_reason": "stop",
                        "prompt_tokens": 100,
                        "completion_tokens": 10 + i,
                        "latency_ms": 50.0,
                        "truncated": i % 2 == 1,
                        "agrees_with_gold": None if i == 0 else i % 3 == 0,
                    }
                )
        assert rat_store.upsert_rationales(session, rows) == len(rows)


def test_rationales_are_paginated_and_filtered(api: TestClient, settings: Settings) -> None:
    job = api.post("/v1/rationale-jobs", json=valid_body(limit=6)).json()
    _store_rationales(settings.database_url, job["id"])
    url = f"/v1/rationale-jobs/{job['id']}/rationales"
    seen, after = [], None
    while True:
        page = api.get(url, params={"limit": 5, **({"after": after} if after else {})}).json()
        seen += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(seen) == 12 and len({r["id"] for r in seen}) == 12
    smol = api.get(url, params={"teacher": "smol", "limit": 100}).json()["data"]
    assert len(smol) == 6 and {r["teacher"] for r in smol} == {"smol"}
    truncated = api.get(url, params={"truncated": "true", "limit": 100}).json()["data"]
    assert len(truncated) == 6 and all(r["truncated"] for r in truncated)
    agreeing = api.get(url, params={"agrees_with_gold": "true", "limit": 100}).json()["data"]
    assert len(agreeing) == 2 * 1  # i == 3 only (i == 0 states nothing)
    first_id = seen[0]["example_id"]
    by_example = api.get(url, params={"example_id": first_id}).json()["data"]
    assert {r["teacher"] for r in by_example} == set(TEACHERS)
    assert api.get(url, params={"teacher": "ghost"}).status_code == 422
    assert api.get(url, params={"limit": 0}).status_code == 422


def test_export_streams_the_exchange_format(api: TestClient, settings: Settings) -> None:
    job = api.post("/v1/rationale-jobs", json=valid_body(limit=3)).json()
    _store_rationales(settings.database_url, job["id"])
    response = api.get(f"/v1/rationale-jobs/{job['id']}/export", params={"format": "jsonl"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) == 6
    assert set(lines[0]) == {"id", "teacher", "rationale", "truncated", "agrees_with_gold"}
    only = api.get(f"/v1/rationale-jobs/{job['id']}/export", params={"teacher": "gemma"}).text.splitlines()
    assert {json.loads(line)["teacher"] for line in only} == {"gemma"}
    bad_format = api.get(f"/v1/rationale-jobs/{job['id']}/export", params={"format": "csv"})
    assert bad_format.status_code == 422 and bad_format.json()["error"]["param"] == "format"
    assert api.get(f"/v1/rationale-jobs/{job['id']}/export", params={"teacher": "ghost"}).status_code == 422


def test_events_stream_ends_with_the_final_state(api: TestClient, settings: Settings) -> None:
    job = api.post("/v1/rationale-jobs", json=valid_body(limit=2)).json()
    api.post(f"/v1/rationale-jobs/{job['id']}/cancel")
    with api.stream("GET", f"/v1/rationale-jobs/{job['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            line.split(":", 1)[1].strip() for line in response.iter_lines() if line.startswith("event:")
        ]
    assert events == ["progress", "end"]
    assert api.get("/v1/rationale-jobs/0123456789abcdef/events").status_code == 404


def test_teachers_register_list_update_and_stats(api: TestClient, settings: Settings) -> None:
    body = {"name": "phi", "base_url": "http://127.0.0.1:9/v1", "model": "phi", "params": {"max_tokens": 128}}
    assert api.post("/v1/teachers", json=body).status_code == 403  # a jobs:write key: admin only
    admin = make_key(settings.database_url, ("admin",), name="admin")
    api.headers["Authorization"] = f"Bearer {admin}"
    created = api.post("/v1/teachers", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["prefix"] == "rationale (phi): "
    again = api.post("/v1/teachers", json={**body, "max_concurrency": 2})
    assert again.status_code == 200 and again.json()["max_concurrency"] == 2
    names = [t["name"] for t in api.get("/v1/teachers").json()["data"]]
    assert names == sorted(["phi", *TEACHERS])
    assert api.get("/v1/teachers/phi").json()["params"]["max_tokens"] == 128
    for bad, field in (
        ({"name": "no base", "model": "m"}, "name"),
        ({"name": "nobase", "model": "m"}, "base_url"),
        ({"name": "nomodel", "base_url": "http://h/v1"}, "model"),
        ({**body, "backend": "ollama"}, "backend"),
        ({**body, "params": {"max_tokens": 0}}, "params.max_tokens"),
        ({**body, "params": {"max_new_tokens": 5}}, "params.max_new_tokens"),
        ({**body, "prefix": "predict: "}, "prefix"),
    ):
        response = api.post("/v1/teachers", json=bad)
        assert response.status_code == 422, (bad, response.text)
        error = response.json()["error"]
        assert field in {error["param"], *(d["field"] for d in error.get("details", []))}, error
    assert api.get("/v1/teachers").json()["data"][0]["name"] == "gemma"
    job = api.post("/v1/rationale-jobs", json=valid_body(limit=4)).json()
    _store_rationales(settings.database_url, job["id"])
    stats = api.get("/v1/teachers/smol/stats").json()
    assert stats["teacher"] == "smol" and stats["count"] == 4
    assert stats["truncated_pct"] == 50.0
    assert api.get("/v1/teachers/ghost/stats").status_code == 404
