"""Checks of a training config against stored data, and what they resolve (teachers, prefixes, jobs).

Each problem is a `ConfigError` naming the request field and what is accepted, so the gateway answers
422 and the CLI exits with the same sentence, before anything is written or queued.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from distillery import modelhub
from distillery.distill.config import TrainConfig

# The pure records of a resolved run live in `multitask` (the offline GPU run needs them without a
# database); they are imported from here as before.
from distillery.distill.multitask import ConfigError as ConfigError
from distillery.distill.multitask import ResolvedRun as ResolvedRun
from distillery.distill.multitask import TeacherTask as TeacherTask
from distillery.distill.multitask import teacher_tasks
from distillery.store import models as m
from distillery.store.examples import find_dataset, split_size


def locate_student(session: Session | None, name: str) -> str | None:
    """What `resolve_model` should load for `name`: a known name, an HF dir, or a registered model's dir.

    Registered models are matched by id, then by name (its production version, else its newest).
    Returns None when nothing matches. Known names are not converted here (that can take minutes).
    """
    if modelhub.canonical_name(name) is not None:
        return name
    try:
        path = Path(name).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            return str(path.resolve())
    except (OSError, ValueError, RuntimeError):  # not a usable path (bad characters, unknown ~user)
        pass
    if session is None:
        return None
    row = session.get(m.Model, name)
    if row is None:
        row = session.scalars(
            select(m.Model)
            .where(m.Model.name == name)
            .order_by((m.Model.stage == "production").desc(), m.Model.version.desc())
            .limit(1)
        ).one_or_none()
    if row is not None and (Path(row.path) / "config.json").is_file():
        return row.path
    return None


def rationale_scope(dataset_id: int, split: str, job_ids: tuple[str, ...]) -> Select[m.Rationale]:
    """SELECT of the rationales a run may use (the dataset split, restricted to the jobs if any)."""
    stmt = (
        select(m.Rationale)
        .join(m.Example, m.Example.id == m.Rationale.example_id)
        .where(m.Example.dataset_id == dataset_id, m.Example.split == split)
    )
    if job_ids:
        stmt = stmt.where(m.Rationale.job_id.in_(job_ids))
    return stmt


def _without_heldout(cfg: TrainConfig, split_examples: int) -> int:
    """Training questions left once model selection holds out the split's last `select_limit`."""
    held = cfg.eval.select_limit
    left = split_examples - held
    if left < 1:
        raise ConfigError(
            "eval.select_limit",
            f"holding out {held} questions leaves none of the {split_examples} in {cfg.dataset}/{cfg.split} "
            "to train on; lower eval.select_limit",
        )
    if cfg.limit is not None and cfg.limit > left:
        raise ConfigError(
            "limit",
            f"training on {cfg.limit} questions would overlap the {held} held out for model selection "
            f"({cfg.dataset}/{cfg.split} has {split_examples}); at most {left}",
        )
    return left


def _usable_counts(
    session: Session, cfg: TrainConfig, dataset_id: int, job_ids: tuple[str, ...]
) -> dict[int, int]:
    scope = rationale_scope(dataset_id, cfg.split, job_ids).subquery()
    stmt = select(scope.c.teacher_id, func.count().label("usable")).group_by(scope.c.teacher_id)
    if cfg.filters.drop_truncated:
        stmt = stmt.where(scope.c.truncated.is_(False))
    if cfg.filters.drop_disagreeing:
        stmt = stmt.where(scope.c.agrees_with_gold.is_not(False))
    return {row.teacher_id: row.usable for row in session.execute(stmt)}


def resolve_run(session: Session, cfg: TrainConfig) -> ResolvedRun:
    """Check `cfg` against the database; raise ConfigError naming the first field that does not fit."""
    student = locate_student(session, cfg.student)
    if student is None:
        known = ", ".join(modelhub.KNOWN_MODELS)
        raise ConfigError(
            "student",
            f"unknown model '{cfg.student}' (accepted: {known}, an HF model directory, "
            "or a registered model id/name)",
        )
    dataset = find_dataset(session, cfg.dataset)
    if dataset is None:
        names = ", ".join(session.scalars(select(m.Dataset.name).order_by(m.Dataset.name))) or "none imported"
        raise ConfigError("dataset", f"unknown dataset '{cfg.dataset}' (accepted: {names})")
    splits = sorted(
        session.scalars(select(m.Example.split).where(m.Example.dataset_id == dataset.id).distinct())
    )
    train_examples = split_size(session, dataset.id, cfg.split)
    if cfg.trains and train_examples == 0:
        raise ConfigError(
            "split", f"dataset '{cfg.dataset}' has no '{cfg.split}' examples (accepted: {', '.join(splits)})"
        )
    eval_examples = 0
    if cfg.eval.split is not None:
        eval_examples = split_size(session, dataset.id, cfg.eval.split)
        if eval_examples == 0:
            raise ConfigError(
                "eval.split",
                f"dataset '{cfg.dataset}' has no '{cfg.eval.split}' examples (accepted: {', '.join(splits)})",
            )
    if cfg.trains and cfg.eval.select_every is not None and cfg.eval.select_split == "heldout":
        train_examples = _without_heldout(cfg, train_examples)
    if cfg.limit is not None:
        train_examples = min(train_examples, cfg.limit)
    if cfg.eval.limit is not None:
        eval_examples = min(eval_examples, cfg.eval.limit)

    job_ids = tuple(cfg.rationale_jobs)
    for job_id in job_ids:
        job = session.get(m.RationaleJob, job_id)
        if job is None:
            raise ConfigError("rationale_jobs", f"unknown rationale job '{job_id}'")
        if job.dataset_id != dataset.id or job.split != cfg.split:
            raise ConfigError(
                "rationale_jobs",
                f"job '{job_id}' holds rationales of another dataset/split, not {cfg.dataset}/{cfg.split}",
            )
    if not cfg.uses_teachers:
        return ResolvedRun(cfg, dataset.id, job_ids, (), train_examples, eval_examples, student)

    counts = _usable_counts(session, cfg, dataset.id, job_ids)
    where = f"{cfg.dataset}/{cfg.split}" + (f" in jobs {list(job_ids)}" if job_ids else "")
    if cfg.teachers is None:
        rows = list(
            session.scalars(select(m.Teacher).where(m.Teacher.id.in_(counts)).order_by(m.Teacher.name))
        )
        if not rows:
            raise ConfigError(
                "teachers",
                f"no usable rationales for {where}: "
                "generate a rationale job or import precomputed rationales",
            )
    else:
        rows = []
        for name in cfg.teachers:
            row = session.scalars(select(m.Teacher).where(m.Teacher.name == name)).one_or_none()
            if row is None:
                known = ", ".join(session.scalars(select(m.Teacher.name).order_by(m.Teacher.name))) or "none"
                raise ConfigError("teachers", f"unknown teacher '{name}' (registered: {known})")
            if not counts.get(row.id):
                raise ConfigError(
                    "teachers",
                    f"teacher '{name}' has no usable rationales for {where} (after filters "
                    f"drop_truncated={cfg.filters.drop_truncated}, "
                    f"drop_disagreeing={cfg.filters.drop_disagreeing})",
                )
            rows.append(row)
    missing = set(cfg.alphas) - {r.name for r in rows}
    if missing:
        raise ConfigError(
            "alphas", f"names {sorted(missing)} are not teachers of this run ({[r.name for r in rows]})"
        )

    teachers = teacher_tasks(cfg, [(row.name, row.id, row.prefix) for row in rows])
    return ResolvedRun(cfg, dataset.id, job_ids, teachers, train_examples, eval_examples, student)
