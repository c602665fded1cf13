"""Failure handling of the rationale pipeline with real worker processes and the real teacher server.

Faults come from a real HTTP proxy in front of the teacher (500s, hangs, a dead teacher) and from
`kill -9` of a worker; every test checks the stored rows, not timings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_support import FaultProxy, Faults, Stack, count_rows, import_arc, rationale_keys, wait_until
from sqlalchemy import delete, select, update

from distillery.config import Settings
from distillery.datasets import SAMPLES_DIR
from distillery.queue import TASK_RUN_CHUNK
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.store.db import session_scope

SMOL = "smollm2-135m"


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    ids = import_arc(settings.database_url, 24)
    with Stack(settings, tmp_path) as s:
        s.ids = ids
        yield s


def small_job(stack: Stack, teachers: list[str], limit: int, **extra: object) -> dict:
    body = {
        "dataset": "arc",
        "limit": limit,
        "teachers": teachers,
        "in_context": {"strategy": "random", "k": 1},
        "generation": {"max_tokens": 24, "temperature": 0.0},
        **extra,
    }
    return stack.submit(**body)


@pytest.mark.slow
def test_transient_500s_and_timeouts_are_retried_and_a_rerun_only_fills_gaps(
    stack: Stack, teacher_server: str, tmp_path: Path
) -> None:
    # Seed rationales for the demonstrations: the paper's, imported as precomputed teachers.
    source = SAMPLES_DIR / "rationales" / "arc" / "train.jsonl"
    seed_file = tmp_path / "seeds.jsonl"
    seed_file.write_text(
        "".join(
            line + "\n" for line in source.read_text().splitlines() if json.loads(line)["id"] in stack.ids
        )
    )
    with session_scope(stack.settings.database_url) as session:
        rat_store.import_rationale_file(session, seed_file, "arc", "train")
        seeds = [
            text
            for _, text in session.execute(
                select(m.Example.external_id, m.Rationale.text)
                .join(m.Example, m.Example.id == m.Rationale.example_id)
                .join(m.Teacher, m.Teacher.id == m.Rationale.teacher_id)
                .where(m.Teacher.backend == "precomputed")
            )
        ]
    # The timeout must outlast a real generation on a busy machine (the server works through calls one
    # at a time, abandoned ones included) and fall short of the injected hang.
    faults = Faults(errors_first=3, hang_first=1, hang_s=150)
    with FaultProxy(teacher_server, faults) as proxy:
        stack.register("smol", proxy.url, SMOL, "chat", timeout_s=60, max_concurrency=1)
        job = small_job(stack, ["smol"], 6)
        stack.worker(concurrency=2, max_retries=6, retry_backoff_max=2, item_attempts=2, chunk_size=3)
        view = stack.wait(job["id"], timeout=600)
        assert view["status"] == "completed", view
        assert view["done"] == 6 and view["failed"] == 0
        assert count_rows(stack.settings.database_url, m.RationaleFailure) == 0
        assert faults.calls >= 6 + 3 + 1
        # The demonstrations carried the seed rationale of the pool example they show.
        demo_texts = [
            msg["content"]
            for body in faults.bodies
            for msg in body.get("messages", [])
            if msg["role"] == "assistant"
        ]
        assert demo_texts and all(any(seed.strip() in text for seed in seeds) for text in demo_texts)

        # Re-delivery of a chunk after losing two rows: exactly two new teacher calls, job complete again.
        with session_scope(stack.settings.database_url) as session:
            chunk_ids = session.get(m.RationaleJob, job["id"]).params["example_ids"][:3]
            teacher_id = session.scalar(select(m.Teacher.id).where(m.Teacher.name == "smol"))
            session.execute(
                delete(m.Rationale).where(
                    m.Rationale.job_id == job["id"], m.Rationale.example_id.in_(chunk_ids[:2])
                )
            )
            session.execute(
                update(m.JobTeacher)
                .where(m.JobTeacher.job_id == job["id"])
                .values(done=m.JobTeacher.done - 2)
            )
            session.execute(
                update(m.RationaleJob).where(m.RationaleJob.id == job["id"]).values(status="running")
            )
        before = faults.calls
        celery = stack_celery(stack)
        celery.send_task(TASK_RUN_CHUNK, args=[job["id"], teacher_id, chunk_ids])
        view = stack.wait(job["id"], timeout=300)
        assert view["status"] == "completed" and view["done"] == 6
        assert faults.calls - before == 2
        keys = rationale_keys(stack.settings.database_url, job["id"])
        assert len(keys) == len(set(keys)) == 6


def stack_celery(stack: Stack):
    from distillery.queue import make_celery

    return make_celery(stack.settings.redis_url)


def test_dead_teacher_ends_completed_with_errors_and_keeps_the_other_teachers_rationales(
    stack: Stack, teacher_server: str
) -> None:
    with FaultProxy(teacher_server, Faults(always_fail=True)) as proxy:
        stack.register("smol", teacher_server, SMOL, "chat", timeout_s=900)
        stack.register("broken", proxy.url, SMOL, "chat", timeout_s=10)
        job = small_job(stack, ["smol", "broken"], 4)
        stack.worker(concurrency=4, max_retries=1, retry_backoff_max=1, item_attempts=2)
        view = stack.wait(job["id"], timeout=600)
    assert view["status"] == "completed_with_errors", view
    progress = {t["teacher"]: (t["done"], t["failed"]) for t in view["progress"]}
    assert progress == {"smol": (4, 0), "broken": (0, 4)}
    assert view["error_count"] == 4
    assert all("HTTP 500" in e["error"] and e["teacher"] == "broken" for e in view["errors"])
    assert all(e["attempts"] >= 2 for e in view["errors"])
    smol = stack.http.get(f"/v1/rationale-jobs/{job['id']}/rationales", params={"teacher": "smol"}).json()
    assert len(smol["data"]) == 4 and all(r["text"] for r in smol["data"])
    assert count_rows(stack.settings.database_url, m.Rationale) == 4


@pytest.mark.slow
def test_cancel_mid_job_stops_teacher_calls_and_keeps_stored_rationales(
    stack: Stack, teacher_server: str
) -> None:
    faults = Faults()
    with FaultProxy(teacher_server, faults) as proxy:
        stack.register("smol", proxy.url, SMOL, "chat", timeout_s=900, max_concurrency=1)
        job = small_job(stack, ["smol"], 24)
        stack.worker(concurrency=2, chunk_size=4)
        stack.wait(job["id"], timeout=600, until=lambda v: v["done"] >= 2)
        response = stack.http.post(f"/v1/rationale-jobs/{job['id']}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        # A call the worker had already sent may still finish and be stored; nothing new starts.
        wait_until(lambda: faults.forwarded == faults.calls, 120, 0.2, "in-flight calls")
        time.sleep(1.0)
        calls = faults.calls
        stored = count_rows(stack.settings.database_url, m.Rationale)
        time.sleep(8.0)
        assert faults.calls == calls
        assert count_rows(stack.settings.database_url, m.Rationale) == stored
    view = stack.job(job["id"])
    assert view["status"] == "cancelled"
    assert 2 <= stored < 24 and view["done"] == stored


@pytest.mark.slow
def test_worker_killed_mid_job_loses_nothing_and_duplicates_nothing(
    stack: Stack, teacher_server: str
) -> None:
    stack.register("smol", teacher_server, SMOL, "chat", timeout_s=900, max_concurrency=1)
    stack.register("gemma", teacher_server, "gemma3-270m", "completion", timeout_s=900, max_concurrency=1)
    job = small_job(stack, ["smol", "gemma"], 8)
    # A short visibility timeout so that the tasks the dead worker held come back within the test.
    env = {"chunk_size": 2, "visibility_timeout": 30, "restore_interval": 2, "slot_lease_s": 6}
    first = stack.worker(concurrency=2, **env)
    stack.wait(job["id"], timeout=600, until=lambda v: v["done"] >= 3)
    first.kill9()
    partial = stack.job(job["id"])
    assert partial["status"] == "running" and partial["done"] < 16
    stack.worker(concurrency=2, **env)
    view = stack.wait(job["id"], timeout=900)
    assert view["status"] == "completed", view
    keys = rationale_keys(stack.settings.database_url, job["id"])
    assert len(keys) == 16, "missing rationales"
    assert len(set(keys)) == 16, "duplicate rationales"
    assert count_rows(stack.settings.database_url, m.RationaleFailure) == 0
    assert [(t["done"], t["failed"]) for t in view["progress"]] == [(8, 0), (8, 0)]


@pytest.mark.slow
def test_slow_teacher_does_not_hold_back_the_other_teachers_chunks(stack: Stack, teacher_server: str) -> None:
    with FaultProxy(teacher_server, Faults(delay_s=4)) as proxy:
        stack.register("slow", proxy.url, SMOL, "chat", timeout_s=900, max_concurrency=1)
        stack.register(
            "fast",
            str(SAMPLES_DIR / "rationales" / "arc" / "train.jsonl"),
            "flan-t5-xl",
            backend="precomputed",
        )
        job = small_job(stack, ["slow", "fast"], 6)
        # Two worker slots and one-example chunks queued slow, fast, slow, fast...: without handing back
        # the chunks of the saturated slow teacher, both slots would sit on slow chunks.
        stack.worker(concurrency=2, chunk_size=1, defer_after_s=1)

        def teacher(view: dict, name: str) -> dict:
            return next(t for t in view["progress"] if t["teacher"] == name)

        view = stack.wait(job["id"], timeout=600, until=lambda v: teacher(v, "fast")["done"] == 6)
        # Deferred slow chunks let the fast ones through at once; queued behind them, fast would finish
        # only about one example per slow call.
        assert teacher(view, "slow")["done"] <= 2
        view = stack.wait(job["id"], timeout=600)
    assert view["status"] == "completed", view
    assert teacher(view, "slow")["done"] == 6
