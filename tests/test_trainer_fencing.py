"""Trainer fencing: a trainer that loses its run's lock (its PostgreSQL connection dropped, as on a
server restart or a proxy's idle timeout) stops within one step and leaves the run to its next owner.

A real run of the tiny random student (modelhub 'tiny-causal') on the vendored ARC sample, in this
process; the lock's connection is terminated with `pg_terminate_backend` from inside the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from test_trainer_service import run_body

from distillery.config import Settings, get_settings
from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.distill.config import TrainConfig
from distillery.distill.runner import execute_run, run_paths
from distillery.store import runs as run_store
from distillery.store.db import get_engine, session_scope
from distillery.store.examples import import_examples
from distillery.store.rationales import import_rationale_file

pytestmark = pytest.mark.slow

LOST_AT_STEP = 3


def tiny_run(settings: Settings) -> str:
    body = run_body()
    body["hyperparameters"] |= {"max_steps": 12, "save_steps": 1}
    config = TrainConfig.model_validate(body)
    with session_scope(settings.database_url) as session:
        import_examples(session, "arc", "train", load_jsonl(sample_file("arc", "train")))
        import_rationale_file(session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", "arc", "train")
        row, _ = run_store.create_run(session, config.model_dump(mode="json"))
        return row.id


def drop_lock_holders(database_url: str) -> int:
    """Terminate the connections holding an advisory lock in this database; how many there were."""
    with get_engine(database_url).connect() as conn:
        dropped = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).all()
        conn.commit()
    return len(dropped)


def test_a_trainer_that_loses_its_lock_stops_within_one_step(settings: Settings) -> None:
    settings = settings.model_copy(update={"model_dir": get_settings().models})
    run_id = tiny_run(settings)
    steps: list[int] = []
    dropped: list[int] = []

    def on_progress(step: int, total: int) -> None:
        steps.append(step)
        if step == LOST_AT_STEP:
            dropped.append(drop_lock_holders(settings.database_url))

    status = execute_run(settings.database_url, run_id, settings, on_progress=on_progress)

    assert dropped == [1]  # exactly our lock's connection
    assert status == "lock-lost"
    # It finished the step it was in when the lock went, and no other: nothing after it was written.
    assert steps == list(range(1, LOST_AT_STEP + 1))
    checkpoints = sorted(p.name for p in Path(run_paths(settings, run_id).checkpoints).glob("checkpoint-*"))
    assert checkpoints[-1] == f"checkpoint-{LOST_AT_STEP}", checkpoints
    with session_scope(settings.database_url) as session:
        row = run_store.get_run(session, run_id)
        assert row is not None and row.status == "running"  # left to the sweep, which re-queues it
        assert row.error is None
        assert not run_store.is_locked(session, run_id)
