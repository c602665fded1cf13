"""The training-run REST API on real PostgreSQL and Redis (no trainer here: runs stay queued)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from distillery import apikeys
from distillery.config import Settings
from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.modelhub import resolve_model
from distillery.queue import QUEUE_TRAIN, TASK_TRAIN
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.store.examples import import_examples
from distillery.store.rationales import import_rationale_file


def _key(database_url: str, scopes: tuple[str, ...]) -> str:
    with session_scope(database_url) as session:
        return apikeys.create_key(session, "test", scopes).key


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    from distillery_gateway.app import create_app

    with session_scope(settings.database_url) as session:
        for split in ("train", "dev"):
            import_examples(session, "arc", split, load_jsonl(sample_file("arc", split)))
        import_examples(session, "pubmedqa", "train", load_jsonl(sample_file("pubmedqa", "train"))[:5])
        import_rationale_file(session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", "arc", "train")
    # The gateway also serves a student; the tiny one keeps its start-up cheap.
    settings = settings.model_copy(update={"default_model": str(resolve_model("tiny-causal"))})
    app = create_app(settings=settings, database_url=settings.database_url, redis_url=settings.redis_url)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {_key(settings.database_url, ('train:write',))}"
        yield client


def queued(redis_url: str) -> list[dict]:
    client = redis_lib.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in client.lrange(QUEUE_TRAIN, 0, -1)]
    finally:
        client.close()


def run_rows(database_url: str) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(m.TrainingRun)) or 0


def body(**changes: object) -> dict:
    base = {
        "student": "tiny-causal",
        "method": "tinyllm",
        "dataset": "arc",
        "split": "train",
        "teachers": ["flan-t5-xl", "llama-2-7b-chat"],
        "alphas": {"flan-t5-xl": 0.5, "llama-2-7b-chat": 1.0},
        "hyperparameters": {"batch_size": 2, "max_steps": 2},
        "eval": {"split": "dev", "limit": 4},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"student": "no-such-model"}, "student"),
        ({"method": "distil-magic"}, "method"),
        ({"alphas": {"flan-t5-xl": -0.1}}, "alphas.flan-t5-xl"),
        ({"alpha": -1}, "alpha"),
        ({"split": "validation"}, "split"),
        ({"split": "test"}, "split"),
        ({"dataset": "nope"}, "dataset"),
        ({"eval": {"split": "test"}}, "eval.split"),
        ({"teachers": ["nobody"], "alphas": {}}, "teachers"),
        ({"dataset": "pubmedqa", "teachers": None, "alphas": {}, "eval": {"split": None}}, "teachers"),
        ({"rationale_jobs": ["f" * 32]}, "rationale_jobs"),
        ({"alphas": {"someone-else": 1.0}}, "alphas"),
        ({"method": "label_ft", "lora": {"r": 8}}, "lora"),
        ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_request_is_422_naming_the_field_and_writes_nothing(
    api: TestClient, settings: Settings, changes: dict, field: str
) -> None:
    response = api.post("/v1/training-runs", json=body(**changes))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert error["type"] == "invalid_request_error"
    assert field.split(".")[0] in error["message"]
    assert run_rows(settings.database_url) == 0
    assert queued(settings.redis_url) == []


def test_valid_run_is_stored_queued_and_enqueued_once(api: TestClient, settings: Settings) -> None:
    response = api.post("/v1/training-runs", json=body(), headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["object"] == "training_run" and run["status"] == "queued"
    assert run["config"]["alphas"] == {"flan-t5-xl": 0.5, "llama-2-7b-chat": 1.0}
    assert response.headers["Location"] == f"/v1/training-runs/{run['id']}"
    again = api.post("/v1/training-runs", json=body(), headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == run["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    conflict = api.post("/v1/training-runs", json=body(limit=3), headers={"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409
    messages = queued(settings.redis_url)
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == TASK_TRAIN
    assert messages[0]["headers"]["argsrepr"] == repr([run["id"]])
    assert run_rows(settings.database_url) == 1


def test_list_get_cancel_and_unknown_run(api: TestClient) -> None:
    first = api.post("/v1/training-runs", json=body()).json()
    second = api.post("/v1/training-runs", json=body(method="label_ft", teachers=None, alphas={})).json()
    listing = api.get("/v1/training-runs").json()
    assert listing["object"] == "list" and {r["id"] for r in listing["data"]} == {first["id"], second["id"]}
    page = api.get("/v1/training-runs", params={"limit": 1}).json()
    assert [r["id"] for r in page["data"]] == [second["id"]] and page["has_more"] is True
    assert page["first_id"] == page["last_id"] == second["id"]
    rest = api.get("/v1/training-runs", params={"limit": 1, "after": page["last_id"]}).json()
    assert [r["id"] for r in rest["data"]] == [first["id"]] and rest["has_more"] is False
    shown = api.get(f"/v1/training-runs/{first['id']}").json()
    assert shown["step"] == 0 and shown["total_steps"] == 0 and shown["loss_curve"] == []
    cancelled = api.post(f"/v1/training-runs/{first['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert api.get("/v1/training-runs", params={"status": "cancelled"}).json()["data"][0]["id"] == first["id"]
    missing = api.get("/v1/training-runs/" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_reads_need_the_read_scope_and_writes_need_the_train_scope(
    api: TestClient, settings: Settings
) -> None:
    no_key = api.get("/v1/training-runs", headers={"Authorization": ""})
    assert no_key.status_code == 401
    inferer = {"Authorization": f"Bearer {_key(settings.database_url, ('infer',))}"}
    assert api.get("/v1/training-runs", headers=inferer).status_code == 403
    reader = {"Authorization": f"Bearer {_key(settings.database_url, ('train:read',))}"}
    assert api.get("/v1/training-runs", headers=reader).status_code == 200
    refused = api.post("/v1/training-runs", json=body(), headers=reader)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert run_rows(settings.database_url) == 0 and queued(settings.redis_url) == []


def test_events_stream_ends_with_the_final_state(api: TestClient) -> None:
    run = api.post("/v1/training-runs", json=body()).json()
    api.post(f"/v1/training-runs/{run['id']}/cancel")
    with api.stream("GET", f"/v1/training-runs/{run['id']}/events") as response:
        assert response.status_code == 200
        text = response.read().decode()
    events = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("event:")]
    assert events == ["progress", "end"]
    last = json.loads([line for line in text.splitlines() if line.startswith("data:")][-1][5:])
    assert last["status"] == "cancelled" and last["id"] == run["id"]
    assert api.get("/v1/training-runs/" + "0" * 32 + "/events").status_code == 404
