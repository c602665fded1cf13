"""The reconciler recovers jobs whose queue messages were lost (real worker processes, real teacher).

Losing messages is done as Redis does it on a restart without them: the broker's keys (the queue and the
unacked deliveries) are deleted. The visibility timeout stays at its default hour, so only the reconciler
can bring the job back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from jobs_support import Stack, count_rows, import_arc, rationale_keys

from distillery.config import Settings
from distillery.queue import QUEUE_RATIONALES
from distillery.store import models as m

SMOL = "smollm2-135m"
FAST_RECONCILER = {"DISTILLERY_RECONCILE_STALL_S": "3", "DISTILLERY_RECONCILE_INTERVAL_S": "1"}


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    import_arc(settings.database_url, 8)
    with Stack(settings, tmp_path) as s:
        yield s


def submit(stack: Stack, teacher_server: str, limit: int) -> dict:
    stack.register("smol", teacher_server, SMOL, "chat", timeout_s=300, max_concurrency=1)
    return stack.submit(
        dataset="arc", limit=limit, teachers=["smol"], generation={"max_tokens": 16, "temperature": 0.0}
    )


def lose_broker_messages(redis_url: str) -> int:
    """Delete the rationales queue and the unacked deliveries, as a Redis restart without them would."""
    client = redis.Redis.from_url(redis_url)
    keys = [k for k in client.scan_iter() if k.startswith((QUEUE_RATIONALES.encode(), b"unacked"))]
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


def assert_complete(stack: Stack, job_id: str, items: int) -> None:
    view = stack.wait(job_id, timeout=600)
    assert view["status"] == "completed", view
    keys = rationale_keys(stack.settings.database_url, job_id)
    assert len(keys) == items, "missing rationales"
    assert len(set(keys)) == items, "duplicate rationales"
    assert count_rows(stack.settings.database_url, m.RationaleFailure) == 0


@pytest.mark.slow
def test_a_job_stranded_in_queued_starts(
    stack: Stack, teacher_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submit(stack, teacher_server, 2)
    assert lose_broker_messages(stack.settings.redis_url) >= 1  # its start_job message
    for name, value in FAST_RECONCILER.items():
        monkeypatch.setenv(name, value)
    worker = stack.worker(concurrency=2)
    assert_complete(stack, job["id"], 2)
    assert "stranded in queued" in worker.log_text()


@pytest.mark.slow
def test_lost_chunks_of_a_running_job_are_sent_again(
    stack: Stack, teacher_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submit(stack, teacher_server, 6)
    first = stack.worker(concurrency=1, chunk_size=1)
    stack.wait(job["id"], timeout=300, until=lambda v: v["done"] >= 1)
    first.kill9()
    assert stack.job(job["id"])["done"] < 6
    assert lose_broker_messages(stack.settings.redis_url) >= 1
    for name, value in FAST_RECONCILER.items():
        monkeypatch.setenv(name, value)
    second = stack.worker(concurrency=2, chunk_size=1)
    assert_complete(stack, job["id"], 6)
    assert "sending its missing chunks again" in second.log_text()
