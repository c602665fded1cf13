"""Celery wiring shared by every service: the app factory and the task signatures (the contract).

Services never import each other's task functions; the gateway enqueues by name with `send_task`.
"""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
from celery import Celery
from sqlalchemy.exc import InterfaceError, OperationalError

QUEUE_RATIONALES = "rationales"
QUEUE_TRAIN = "train"

# Task names and their arguments. Arguments are ids only, so re-delivery is harmless.
TASK_START_JOB = "distillery.rationales.start_job"  # (job_id: str)
TASK_RUN_CHUNK = "distillery.rationales.run_chunk"  # (job_id: str, teacher_id: int, example_ids: list[int])
TASK_FINISH_JOB = "distillery.rationales.finish_job"  # (job_id: str)
TASK_TRAIN = "distillery.train.run"  # (run_id: str)

# What a task retries: PostgreSQL, Redis or the broker out of reach for a while, a connection dropped
# or timed out. Anything else (a bug, bad data) would fail the same way again, so it fails at once.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def require_setting(value: str | None, name: str, service: str) -> str:
    """`value`, or a start-up error naming the missing setting and the command that provides it."""
    if not value:
        raise RuntimeError(
            f"the {service} needs {name}; set it, or start the {service} with `distillery {service}`"
        )
    return value


def make_celery(broker_url: str, name: str = "distillery") -> Celery:
    """A Celery app with at-least-once delivery settings (tasks must be idempotent)."""
    app = Celery(name, broker=broker_url, backend=broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=24 * 3600,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        # A task not acked within this window is re-delivered to another worker.
        broker_transport_options={"visibility_timeout": 3600},
        task_routes={
            "distillery.rationales.*": {"queue": QUEUE_RATIONALES},
            "distillery.train.*": {"queue": QUEUE_TRAIN},
        },
        task_default_queue=QUEUE_RATIONALES,
        worker_hijack_root_logger=False,
    )
    return app
