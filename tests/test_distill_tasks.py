"""The multi-task dataset builder and the config checks, on real PostgreSQL with imported rationales."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update
from transformers import AutoTokenizer

from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.distill.checks import ConfigError, resolve_run
from distillery.distill.config import TrainConfig
from distillery.distill.encoding import StudentEncoder
from distillery.distill.tasks import build_dataset, iter_tasks, shuffled
from distillery.modelhub import resolve_model
from distillery.rationales.prompts import ANSWER_PREFIX, answer_target, parse_answer, student_input
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.store.examples import import_examples
from distillery.store.rationales import import_rationale_file

TEACHERS = ["flan-t5-xl", "llama-2-7b-chat"]


@pytest.fixture
def arc_db(clean_db: str) -> str:
    """ARC sample (train + dev) and the paper's two teachers' train rationales, imported."""
    with session_scope(clean_db) as session:
        for split in ("train", "dev"):
            import_examples(session, "arc", split, load_jsonl(sample_file("arc", split)))
        import_rationale_file(session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", "arc", "train")
    return clean_db


def _cfg(**overrides) -> TrainConfig:
    body = {"student": "tiny-causal", "method": "tinyllm", "dataset": "arc", "limit": 20, **overrides}
    return TrainConfig.model_validate(body)


def test_each_example_has_the_answer_task_and_one_task_per_teacher(arc_db: str):
    with session_scope(arc_db) as session:
        run = resolve_run(session, _cfg(filters={"drop_disagreeing": False}))
        assert run.task_names == ["answer", *TEACHERS]
        assert run.weights == [1.0, 0.5, 0.5]
        items = list(iter_tasks(session, run))
    examples = load_jsonl(sample_file("arc", "train"))[:20]
    assert [ex.id for ex, _ in items] == [ex.id for ex in examples]
    for example, tasks in items:
        assert [t.task_id for t in tasks] == [0, 1, 2]
        # Default: shuffled options (seeded per example), the gold option's text as the answer target.
        asked = shuffled(example, 42)
        assert tasks[0].input == student_input(asked, ANSWER_PREFIX)
        assert tasks[0].target == answer_target(asked, "option_text") == example.gold.strip()
        assert tasks[1].input.startswith("explain: ") and tasks[2].input.startswith("rationale: ")
        # Rationale tasks keep the original option order their rationales refer to; the lead-in is cleaned.
        assert tasks[1].input == student_input(example, "explain: ")
        assert not tasks[2].target.lower().startswith("let's think step by step")


def test_answer_format_and_option_order_are_configurable(arc_db: str):
    with session_scope(arc_db) as session:
        letter = list(
            iter_tasks(
                session,
                resolve_run(
                    session,
                    _cfg(method="label_ft", answer_format="letter_text", filters={"shuffle_options": False}),
                ),
            )
        )
        again = [t[0] for _, t in iter_tasks(session, resolve_run(session, _cfg(method="label_ft")))]
        once = [t[0] for _, t in iter_tasks(session, resolve_run(session, _cfg(method="label_ft")))]
    assert again == once  # the shuffle is seeded: the same order every time
    assert any(a.input != student_input(ex, ANSWER_PREFIX) for a, (ex, _) in zip(again, letter, strict=True))
    for example, tasks in letter:
        assert tasks[0].input == student_input(example, ANSWER_PREFIX)
        assert tasks[0].target == answer_target(example) == f"({example.gold_letter}) {example.gold.strip()}"
    for (example, _), answer in zip(letter, again, strict=True):
        # Evaluation reads both forms back to the gold option.
        asked = shuffled(example, 42)
        assert parse_answer(answer.target, asked.options) == asked.answer
        assert parse_answer(answer_target(example), example.options) == example.answer


def test_filters_drop_disagreeing_and_truncated_rationales(arc_db: str):
    with session_scope(arc_db) as session:
        llama = session.scalars(select(m.Teacher).where(m.Teacher.name == "llama-2-7b-chat")).one()
        scope = select(func.count()).select_from(m.Rationale).where(m.Rationale.teacher_id == llama.id)
        truncated = session.scalar(scope.where(m.Rationale.truncated.is_(True)))
        total = session.scalar(scope)
        # Make two rationales of the first examples state a wrong answer.
        first = session.scalars(select(m.Example.id).where(m.Example.split == "train").order_by(m.Example.id))
        wrong = list(first)[:2]
        session.execute(
            update(m.Rationale)
            .where(m.Rationale.teacher_id == llama.id, m.Rationale.example_id.in_(wrong))
            .values(agrees_with_gold=False)
        )
        disagreeing = session.scalar(scope.where(m.Rationale.agrees_with_gold.is_(False)))
    with session_scope(arc_db) as session:
        keep_all = list(
            iter_tasks(session, resolve_run(session, _cfg(limit=None, filters={"drop_disagreeing": False})))
        )
        default = list(iter_tasks(session, resolve_run(session, _cfg(limit=None))))
        no_trunc = list(
            iter_tasks(
                session,
                resolve_run(session, _cfg(limit=None, teachers=TEACHERS, filters={"drop_truncated": True})),
            )
        )

    def llama_tasks(items):
        return sum(1 for _, tasks in items for t in tasks if t.task_id == 2)

    assert llama_tasks(keep_all) == total
    assert disagreeing >= 2 and llama_tasks(default) == total - disagreeing
    assert all(2 not in [t.task_id for t in tasks] for _, tasks in default[:2])
    assert llama_tasks(no_trunc) <= total - truncated
    # Examples without a usable rationale still train the answer task.
    assert len(default) == len(keep_all) == len(no_trunc)


def test_alpha_zero_teacher_gets_no_tasks(arc_db: str):
    with session_scope(arc_db) as session:
        run = resolve_run(session, _cfg(alphas={"llama-2-7b-chat": 0.0}))
        assert run.weights == [1.0, 0.5, 0.0]
        ids = {t.task_id for _, tasks in iter_tasks(session, run) for t in tasks}
    assert ids == {0, 1}


def test_label_ft_builds_answer_tasks_only(arc_db: str):
    with session_scope(arc_db) as session:
        run = resolve_run(session, _cfg(method="label_ft"))
        assert run.task_names == ["answer"]
        assert all(len(tasks) == 1 for _, tasks in iter_tasks(session, run))


def test_dataset_file_is_written_once_and_reused(arc_db: str, tmp_path):
    encoder = StudentEncoder(AutoTokenizer.from_pretrained(resolve_model("tiny-causal")), False, 64, 24)
    path = tmp_path / "train.arrow"
    with session_scope(arc_db) as session:
        run = resolve_run(session, _cfg(limit=6))
        first = build_dataset(session, run, encoder, path)
    assert len(first) == 6 and first[0]["task_ids"] == [0, 1, 2]
    assert all(
        len(ids) == len(lab)
        for row in first
        for ids, lab in zip(row["input_ids"], row["labels"], strict=True)
    )
    with session_scope(arc_db) as session:
        # The stored rationales change; a resumed run still reads the file it started with.
        session.execute(update(m.Rationale).values(text="changed."))
        again = build_dataset(session, run, encoder, path)
    assert again["input_ids"] == first["input_ids"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"student": "no-such-model"}, "student"),
        ({"dataset": "nope"}, "dataset"),
        ({"split": "test"}, "split"),
        ({"eval": {"split": "test"}}, "eval.split"),
        ({"teachers": ["nobody"]}, "teachers"),
        ({"rationale_jobs": ["0" * 32]}, "rationale_jobs"),
        ({"alphas": {"nobody": 1.0}}, "alphas"),
    ],
)
def test_checks_name_the_field(arc_db: str, overrides: dict, field: str):
    with session_scope(arc_db) as session, pytest.raises(ConfigError) as info:
        resolve_run(session, _cfg(**overrides))
    assert info.value.field == field


def test_teacher_without_rationales_in_the_split_is_refused(arc_db: str):
    with session_scope(arc_db) as session, pytest.raises(ConfigError) as info:
        resolve_run(session, _cfg(split="dev", teachers=["flan-t5-xl"]))
    assert info.value.field == "teachers" and "no usable rationales" in info.value.message
