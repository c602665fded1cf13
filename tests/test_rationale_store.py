"""Rationale storage against a real PostgreSQL: precomputed-teacher import, export round trip, upserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from distillery.config import Settings
from distillery.datasets import SAMPLES_DIR, dataset_file, load_jsonl
from distillery.rationales.checks import agrees_with_gold, is_truncated
from distillery.store import examples as ex_store
from distillery.store import models as m
from distillery.store.db import get_engine, session_scope
from distillery.store.rationales import (
    RationaleFileError,
    dump_line,
    export_lines,
    export_pages,
    import_rationale_file,
    record_failure,
    teacher_stats,
    upsert_rationales,
)

PAPER_TEACHERS = ("flan-t5-xl", "llama-2-7b-chat")


def rationale_file(settings: Settings, dataset: str, split: str) -> Path:
    """The shared release file when ../shared is there, else the vendored sample lines."""
    shared = settings.rationales_dir / dataset / f"{split}.jsonl"
    return shared if shared.is_file() else SAMPLES_DIR / "rationales" / dataset / f"{split}.jsonl"


def read_lines(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def import_dataset(database_url: str, settings: Settings, dataset: str = "arc", split: str = "train") -> int:
    path = dataset_file(dataset, split, settings.datasets_dir)
    examples = load_jsonl(path)
    with session_scope(database_url) as session:
        ex_store.import_examples(session, dataset, split, examples, source=str(path))
    return len(examples)


def count(database_url: str, model: type, *where) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


@pytest.fixture
def arc_train(settings: Settings) -> tuple[str, int, Path]:
    """ARC train stored (all 1117 when ../shared is there): (database url, examples, rationale file)."""
    n = import_dataset(settings.database_url, settings)
    return settings.database_url, n, rationale_file(settings, "arc", "train")


def test_import_arc_train_creates_two_precomputed_teachers(arc_train: tuple[str, int, Path]) -> None:
    url, n, path = arc_train
    if path.is_relative_to(SAMPLES_DIR):
        assert n == 200
    else:
        assert n == 1117  # the acceptance figure: 2 x 1117 rationales
    with session_scope(url) as session:
        summary = import_rationale_file(session, path, "arc", "train")
    assert summary.inserted == summary.lines == 2 * n
    assert summary.teachers == {"flan-t5-xl": n, "llama-2-7b-chat": n}
    assert summary.created_job
    with session_scope(url) as session:
        teachers = session.scalars(select(m.Teacher).order_by(m.Teacher.name)).all()
        assert [(t.name, t.backend) for t in teachers] == [(t, "precomputed") for t in PAPER_TEACHERS]
        # The student-side prefixes of the official TinyLLM code.
        assert {t.name: t.prefix for t in teachers} == {
            "flan-t5-xl": "explain: ",
            "llama-2-7b-chat": "rationale: ",
        }
        job = session.get(m.RationaleJob, summary.job_id)
        assert (job.kind, job.status, job.split, job.total) == ("import", "completed", "train", 2 * n)
        assert sorted((jt.total, jt.done) for jt in job.teachers) == [(n, n), (n, n)]
        per_teacher = dict(
            session.execute(
                select(m.Teacher.name, func.count()).join(m.Rationale).group_by(m.Teacher.name)
            ).all()
        )
    assert per_teacher == {"flan-t5-xl": n, "llama-2-7b-chat": n}


def test_reimport_of_the_same_file_changes_nothing(arc_train: tuple[str, int, Path]) -> None:
    url, n, path = arc_train
    with session_scope(url) as session:
        first = import_rationale_file(session, path, "arc", "train")
    with session_scope(url) as session:
        again = import_rationale_file(session, path, "arc", "train")
    assert again.job_id == first.job_id
    assert (again.inserted, again.unchanged, again.created_job) == (0, 2 * n, False)
    assert count(url, m.Rationale) == 2 * n
    assert count(url, m.RationaleJob) == 1
    assert count(url, m.Teacher) == 2


def test_file_with_bad_lines_is_rejected_whole_naming_each_line(
    arc_train: tuple[str, int, Path], tmp_path: Path
) -> None:
    url, _, path = arc_train
    good = path.read_text(encoding="utf-8").splitlines()[:6]
    bad = tmp_path / "bad.jsonl"
    lines = [
        *good[:2],
        '{"id": "Mercury_SC_415702", "teacher": "flan-t5-xl", "rationale": ',  # 3: broken JSON
        json.dumps({"id": "no-such-question", "teacher": "flan-t5-xl", "rationale": "x."}),  # 4
        *good[2:4],
        json.dumps({"id": json.loads(good[0])["id"], "teacher": "flan-t5-xl"}),  # 7: no rationale
        json.dumps({**json.loads(good[0]), "truncated": "yes"}),  # 8: flag not a boolean
        json.dumps({**json.loads(good[0]), "teacher": "has space"}),  # 9: not a teacher name
        "[1, 2]",  # 10: not an object
        *good[4:],
    ]
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RationaleFileError) as caught, session_scope(url) as session:
        import_rationale_file(session, bad, "arc", "train")
    where = {(p.line, p.path) for p in caught.value.problems}
    assert where == {(line, str(bad)) for line in (3, 4, 7, 8, 9, 10)}
    message = str(caught.value)
    assert f"{bad}:3: invalid JSON" in message
    assert f"{bad}:4: unknown id 'no-such-question'" in message
    assert "missing required field 'rationale'" in message
    assert "'truncated' must be true, false or null" in message
    for model in (m.Rationale, m.RationaleJob, m.Teacher, m.JobTeacher):
        assert count(url, model) == 0, f"{model.__tablename__} was written"


def test_import_needs_the_dataset_and_says_how_to_get_it(settings: Settings) -> None:
    path = rationale_file(settings, "arc", "train")
    expected = "distillery data import-shared arc"
    with pytest.raises(RationaleFileError, match=expected), session_scope(settings.database_url) as session:
        import_rationale_file(session, path, "arc", "train")


def test_import_refuses_to_reuse_a_live_teacher_name(arc_train: tuple[str, int, Path]) -> None:
    from distillery.teachers.base import TeacherSpec
    from distillery.teachers.registry import upsert_teacher

    url, _, path = arc_train
    with session_scope(url) as session:
        upsert_teacher(session, TeacherSpec(name="flan-t5-xl", base_url="http://127.0.0.1:9/v1", model="x"))
    with pytest.raises(RationaleFileError, match="registered with backend 'openai'"), session_scope(url) as s:
        import_rationale_file(s, path, "arc", "train")
    assert count(url, m.Rationale) == 0
    # A teacher map imports the same file under other names.
    with session_scope(url) as session:
        renamed = {"flan-t5-xl": "flan-t5-xl-paper"}
        summary = import_rationale_file(session, path, "arc", "train", renamed)
    assert set(summary.teachers) == {"flan-t5-xl-paper", "llama-2-7b-chat"}


def test_export_round_trips_into_the_precomputed_import(
    arc_train: tuple[str, int, Path], tmp_path: Path
) -> None:
    url, n, path = arc_train
    original = read_lines(path)
    with session_scope(url) as session:
        first = import_rationale_file(session, path, "arc", "train")
        exported = list(export_lines(session, first.job_id))
    # Same lines, same order, same flags as the released file.
    assert exported == original

    out = tmp_path / "export.jsonl"
    out.write_text("".join(dump_line(line) + "\n" for line in exported), encoding="utf-8")
    renamed = {"flan-t5-xl": "flan-copy", "llama-2-7b-chat": "llama-copy"}
    with session_scope(url) as session:
        second = import_rationale_file(session, out, "arc", "train", teacher_map=renamed)
        assert second.job_id != first.job_id and second.inserted == 2 * n
        again = list(export_lines(session, second.job_id, ["flan-copy", "llama-copy"]))
        only_llama = list(export_lines(session, second.job_id, ["llama-copy"]))
    back = {v: k for k, v in renamed.items()}
    assert [{**line, "teacher": back[line["teacher"]]} for line in again] == original
    assert len(only_llama) == n and {line["teacher"] for line in only_llama} == {"llama-copy"}


def test_a_paged_export_reads_the_same_lines_and_holds_no_connection_between_pages(
    arc_train: tuple[str, int, Path],
) -> None:
    url, _, path = arc_train
    with session_scope(url) as session:
        job_id = import_rationale_file(session, path, "arc", "train").job_id
        whole = list(export_lines(session, job_id))
        reordered = list(export_lines(session, job_id, ["llama-2-7b-chat", "flan-t5-xl"]))
    pool = get_engine(url).pool
    pages = export_pages(url, job_id, page=7)
    first = next(pages)
    assert pool.checkedout() == 0  # a reader that stops here keeps no connection
    assert [first, *pages] == whole
    assert list(export_pages(url, job_id, ["llama-2-7b-chat", "flan-t5-xl"], page=7)) == reordered


def test_export_of_unknown_job_or_teacher_is_a_lookup_error(arc_train: tuple[str, int, Path]) -> None:
    url, _, path = arc_train
    with session_scope(url) as session:
        job_id = import_rationale_file(session, path, "arc", "train").job_id
        with pytest.raises(LookupError, match="no rationale job"):
            export_lines(session, "nope")
        with pytest.raises(LookupError, match="its teachers: flan-t5-xl, llama-2-7b-chat"):
            export_lines(session, job_id, ["gpt-9"])


def test_flags_missing_from_the_file_are_computed(arc_train: tuple[str, int, Path], tmp_path: Path) -> None:
    url, _, path = arc_train
    lines = read_lines(path)[:40]
    bare = tmp_path / "bare.jsonl"
    bare.write_text(
        "".join(
            json.dumps({"id": x["id"], "teacher": x["teacher"], "rationale": x["rationale"]}) + "\n"
            for x in lines
        )
    )
    with session_scope(url) as session:
        job_id = import_rationale_file(session, bare, "arc", "train").job_id
        examples = {ex.id: ex for _, ex in ex_store.iter_examples(session, "arc", "train")}
        exported = list(export_lines(session, job_id))
    for line in exported:
        assert line["truncated"] == is_truncated(line["rationale"])
        assert line["agrees_with_gold"] == agrees_with_gold(line["rationale"], examples[line["id"]])


def test_repeated_lines_become_samples_and_exact_repeats_are_flagged(
    arc_train: tuple[str, int, Path], tmp_path: Path
) -> None:
    url, _, path = arc_train
    line = read_lines(path)[0]
    other = {**line, "rationale": "A different explanation."}
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in (line, other, line)))
    with session_scope(url) as session:
        job_id = import_rationale_file(session, f, "arc", "train").job_id
        rows = session.execute(
            select(m.Rationale.sample_index, m.Rationale.duplicate)
            .where(m.Rationale.job_id == job_id)
            .order_by(m.Rationale.sample_index)
        ).all()
    assert [tuple(r) for r in rows] == [(0, False), (1, False), (2, True)]


def _job_rows(session, n: int, sample_index: int = 0) -> list[dict]:
    job = session.scalars(select(m.RationaleJob)).first()
    teacher = session.scalars(select(m.Teacher)).first()
    ids = session.scalars(select(m.Example.id).order_by(m.Example.id).limit(n)).all()
    return [
        {
            "job_id": job.id,
            "example_id": ex_id,
            "teacher_id": teacher.id,
            "sample_index": sample_index,
            "text": f"Rationale {ex_id}.",
            "finish_reason": "stop",
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "latency_ms": 400.0,
            "template_version": "cot-tf-v1",
            "incontext_ids": ["a", "b"],
        }
        for ex_id in ids
    ]


def test_upsert_rationales_inserts_once_and_counts_only_new_rows(
    arc_train: tuple[str, int, Path], tmp_path: Path
) -> None:
    url, _, path = arc_train
    # A job and a teacher to hang rows on: import one line.
    one = tmp_path / "one.jsonl"
    one.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with session_scope(url) as session:
        import_rationale_file(session, one, "arc", "train")
    with session_scope(url) as session:
        rows = _job_rows(session, 30, sample_index=1)
        rows[3]["latency_ms"] = 400  # an int among floats
        rows[4]["incontext_ids"] = None
        assert upsert_rationales(session, rows[:10]) == 10
        # Re-delivery of a chunk that overlaps what is stored: only the missing rows are added.
        assert upsert_rationales(session, rows) == 20
        assert upsert_rationales(session, rows) == 0
        assert upsert_rationales(session, []) == 0
        with pytest.raises(ValueError, match="unknown rationale column"):
            upsert_rationales(session, [{**rows[0], "colour": "red"}])
    assert count(url, m.Rationale, m.Rationale.sample_index == 1) == 30
    with session_scope(url) as session:
        stats = {s["teacher"]: s for s in teacher_stats(session)}
    timed = stats["flan-t5-xl"]
    assert timed["count"] == 31
    assert timed["mean_completion_tokens"] == 20.0
    assert timed["tokens_per_s"] == 50.0  # 20 tokens in 0.4 s


def test_record_failure_keeps_the_latest_error_per_item(arc_train: tuple[str, int, Path]) -> None:
    url, _, path = arc_train
    with session_scope(url) as session:
        import_rationale_file(session, path, "arc", "train")
    with session_scope(url) as session:
        row = _job_rows(session, 1)[0]
        key = (row["job_id"], row["example_id"], row["teacher_id"], 3)
        record_failure(session, *key, error="HTTP 500", attempts=1)
        record_failure(session, *key, error="timed out", attempts=5)
    with session_scope(url) as session:
        failures = session.scalars(select(m.RationaleFailure)).all()
    assert [(f.error, f.attempts, f.sample_index) for f in failures] == [("timed out", 5, 3)]


def test_teacher_stats_match_the_file_flags(arc_train: tuple[str, int, Path]) -> None:
    url, n, path = arc_train
    lines = read_lines(path)
    with session_scope(url) as session:
        import_rationale_file(session, path, "arc", "train")
        stats = {s["teacher"]: s for s in teacher_stats(session)}
        only = teacher_stats(session, "llama-2-7b-chat")
    for teacher in PAPER_TEACHERS:
        mine = [x for x in lines if x["teacher"] == teacher]
        s = stats[teacher]
        assert s["count"] == n and s["backend"] == "precomputed"
        assert s["truncated_pct"] == round(100 * sum(x["truncated"] for x in mine) / n, 2)
        assert s["agrees_pct"] == round(100 * sum(x["agrees_with_gold"] is True for x in mine) / n, 2)
        assert s["disagrees_pct"] == round(100 * sum(x["agrees_with_gold"] is False for x in mine) / n, 2)
        assert s["mean_chars"] == pytest.approx(sum(len(x["rationale"]) for x in mine) / n, abs=0.06)
        assert s["tokens_per_s"] is None  # precomputed: no timings
    assert [s["teacher"] for s in only] == ["llama-2-7b-chat"]
    # The release's own figures for ARC train (../shared/rationales/README.md).
    if n == 1117:
        assert stats["llama-2-7b-chat"]["truncated_pct"] == pytest.approx(89.3, abs=0.05)
        assert stats["flan-t5-xl"]["truncated_pct"] == pytest.approx(1.4, abs=0.05)


def test_cli_imports_rationales_and_shows_stats(settings: Settings) -> None:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    env["DISTILLERY_HOME"] = str(settings.home)
    cli = [sys.executable, "-m", "distillery_launcher.cli.main", "teachers"]
    path = rationale_file(settings, "arc", "dev")
    n = len(read_lines(path)) // 2

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=300)

    # The dataset is not stored yet: the command imports it from the shared folder first.
    done = run("import-rationales", str(path), "--dataset", "arc", "--split", "dev")
    assert done.returncode == 0, done.stderr
    assert f"{2 * n} rationales ({2 * n} new, 0 already stored)" in done.stdout
    wrong = run("import-rationales", str(path), "--dataset", "arc", "--split", "valid")
    assert wrong.returncode != 0 and "accepted: train, dev, test" in wrong.stderr
    stats = run("stats")
    assert stats.returncode == 0, stats.stderr
    assert "flan-t5-xl" in stats.stdout and "llama-2-7b-chat" in stats.stdout
    added = run("add", "local-smol", "--base-url", "http://127.0.0.1:8100/v1", "--model", "smollm2-135m")
    assert added.returncode == 0, added.stderr
    bad = run("add", "x", "--backend", "vllm", "--base-url", "http://h/v1", "--model", "m")
    assert bad.returncode != 0 and "--backend" in bad.stderr and "openai, tgi, precomputed" in bad.stderr
    listed = run("list")
    assert "local-smol" in listed.stdout and "precomputed" in listed.stdout


def test_import_into_a_named_job_reuses_it_and_never_touches_generation_jobs(
    arc_train: tuple[str, int, Path],
) -> None:
    url, n, path = arc_train
    with session_scope(url) as session:
        first = import_rationale_file(session, path, "arc", "train", job_id="paper-arc-train")
    with session_scope(url) as session:
        again = import_rationale_file(session, path, "arc", "train", job_id="paper-arc-train")
    assert (first.job_id, first.inserted, first.created_job) == ("paper-arc-train", 2 * n, True)
    assert (again.job_id, again.inserted, again.created_job) == ("paper-arc-train", 0, False)
    with session_scope(url) as session:
        dataset_id = session.scalar(select(m.Dataset.id))
        session.add(m.RationaleJob(id="gen1", kind="generate", dataset_id=dataset_id, split="train"))
    with pytest.raises(ValueError, match="is a generate job"), session_scope(url) as session:
        import_rationale_file(session, path, "arc", "train", job_id="gen1")
    assert count(url, m.Rationale, m.Rationale.job_id == "gen1") == 0
