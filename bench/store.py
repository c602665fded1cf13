"""Rationale write throughput: batched idempotent upserts vs. row-at-a-time ORM inserts, same run.

    python bench/store.py --quick

Runs against DATABASE_URL (or the embedded PostgreSQL) in a scratch database that is dropped afterwards.
The baseline is what a naive worker does: one ORM object added and committed per rationale. The
measured path is `distillery.store.rationales.upsert_rationales` committing once per 1000-row chunk,
as the worker stores a chunk. Last line: `rationale_writes_per_s=<n>`.
"""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from distillery.config import get_settings
from distillery.records import Example
from distillery.store import examples as ex_store
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.store.migrate import scratch_database
from distillery.store.rationales import upsert_rationales
from distillery.teachers.base import TeacherSpec
from distillery.teachers.registry import upsert_teacher
from distillery_launcher.embedded import running_services

CHUNK = 1000
TEXT = (
    "Let's think step by step. The question asks which surface produces the most heat when rubbed. "
    "Friction between dry surfaces is larger than between wet or oily ones, because water, oil and lotion "
    "lubricate the skin. More friction turns more of the motion into heat, so dry palms warm fastest."
)


def setup(url: str, n_examples: int, n_teachers: int) -> tuple[str, list[int], list[int]]:
    """A dataset, teachers and a job to hang rationales on; (job id, example row ids, teacher ids)."""
    examples = [Example(f"q{i}", f"Question {i}?", ("yes", "no", "maybe"), i % 3) for i in range(n_examples)]
    with session_scope(url) as session:
        ex_store.import_examples(session, "bench", "train", examples, source="bench")
        dataset = ex_store.find_dataset(session, "bench")
        teachers = [
            upsert_teacher(session, TeacherSpec(name=f"t{i}", base_url="http://127.0.0.1:9/v1", model="m")).id
            for i in range(n_teachers)
        ]
        job = m.RationaleJob(dataset_id=dataset.id, split="train", kind="generate", status="running")
        session.add(job)
        session.flush()
        ids = [row_id for row_id, _ in ex_store.iter_examples(session, "bench", "train")]
        return job.id, ids, teachers


def rows_for(job_id: str, example_ids: list[int], teacher_ids: list[int], sample_index: int) -> list[dict]:
    return [
        {
            "job_id": job_id,
            "example_id": ex_id,
            "teacher_id": t_id,
            "sample_index": sample_index,
            "text": TEXT,
            "finish_reason": "stop",
            "prompt_tokens": 412,
            "completion_tokens": 71,
            "latency_ms": 812.5,
            "template_version": "cot-tf-v1",
            "incontext_ids": ["Mercury_7220990", "MCAS_2000_4_6"],
            "truncated": False,
            "agrees_with_gold": None,
            "duplicate": False,
        }
        for ex_id in example_ids
        for t_id in teacher_ids
    ]


def baseline(url: str, rows: list[dict]) -> float:
    """Row-at-a-time ORM inserts, one commit per rationale; rows/s."""
    started = time.perf_counter()
    for row in tqdm(rows, desc="baseline (ORM, row at a time)", unit="row", leave=False):
        with session_scope(url) as session:
            session.add(m.Rationale(**row))
    return len(rows) / (time.perf_counter() - started)


def batched(url: str, rows: list[dict]) -> tuple[float, int]:
    """upsert_rationales, one transaction per 1000-row chunk; (rows/s, rows inserted)."""
    inserted = 0
    started = time.perf_counter()
    for start in tqdm(range(0, len(rows), CHUNK), desc="batched upserts", unit="chunk", leave=False):
        with session_scope(url) as session:
            inserted += upsert_rationales(session, rows[start : start + CHUNK])
    return len(rows) / (time.perf_counter() - started), inserted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about half a minute)")
    args = parser.parse_args()
    n_examples, n_teachers = (2500, 4) if args.quick else (10000, 4)
    n_baseline = 500 if args.quick else 2000

    with running_services(get_settings()) as urls, scratch_database(urls.database_url) as url:
        job_id, example_ids, teacher_ids = setup(url, n_examples, n_teachers)
        base_rows = rows_for(job_id, example_ids[: n_baseline // n_teachers], teacher_ids, sample_index=1)
        main_rows = rows_for(job_id, example_ids, teacher_ids, sample_index=0)
        base_rate = baseline(url, base_rows)
        rate, inserted = batched(url, main_rows)
        assert inserted == len(main_rows), (inserted, len(main_rows))
        # Re-delivery of everything: every row conflicts, nothing is written twice.
        redo_rate, again = batched(url, main_rows)
        assert again == 0, again

    print(
        f"rows: baseline {len(base_rows)}, batched {len(main_rows)} "
        f"({n_teachers} teachers x {n_examples} examples)"
    )
    print(f"baseline_orm_row_at_a_time_per_s={base_rate:.0f}")
    print(f"batched_upsert_per_s={rate:.0f}")
    print(f"redelivery_noop_per_s={redo_rate:.0f}")
    print(f"ratio_batched_vs_baseline={rate / base_rate:.1f}")
    print(f"rationale_writes_per_s={rate:.0f}")


if __name__ == "__main__":
    main()
