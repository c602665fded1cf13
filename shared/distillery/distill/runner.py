"""One training run, start to finish: data -> train (resumable) -> export -> evaluate -> register.

Used by the trainer service (Celery task), by `distillery train --local` and by the experiments runner.
Everything lives under `<artifacts>/runs/<run_id>/`: `train.arrow` (the encoded tasks), `checkpoints/`
(HF Trainer checkpoints, the resume points), `model/` (the exported student), `predictions-<split>.jsonl`.
A run interrupted anywhere (kill -9 included) is picked up again from its last complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sqlalchemy import select
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from distillery.config import Settings
from distillery.distill.checks import ConfigError, ResolvedRun, locate_student, resolve_run
from distillery.distill.collator import MultiTaskCollator
from distillery.distill.config import TrainConfig
from distillery.distill.encoding import StudentEncoder
from distillery.distill.evaluate import EvalOptions, EvalResult, evaluate
from distillery.distill.export import export_model, merged
from distillery.distill.tasks import build_dataset
from distillery.distill.trainer import DistillTrainer, load_student, precision, training_arguments, with_lora
from distillery.modelhub import resolve_model
from distillery.rationales.prompts import ANSWER_PREFIX, TEMPLATE_VERSION
from distillery.records import Example
from distillery.store import models as m
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery.store.registry import register_model

log = logging.getLogger(__name__)

CHILD_STOP_TIMEOUT_S = 30.0

PROGRESS_INTERVAL_S = 2.0
CURVE_KEYS = ("loss", "learning_rate", "grad_norm", "epoch")


class RunCancelled(Exception):
    """The run was asked to stop; its checkpoints stay."""


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def dataset(self) -> Path:
        return self.root / "train.arrow"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    def predictions(self, split: str) -> Path:
        return self.root / f"predictions-{split}.jsonl"


def run_paths(settings: Settings, run_id: str) -> RunPaths:
    return RunPaths(settings.artifacts / "runs" / run_id)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last); half-written ones are removed."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")),
        key=lambda p: int(p.name.rsplit("-", 1)[1]) if p.name.rsplit("-", 1)[1].isdigit() else -1,
    )
    while found:
        newest = found.pop()
        if (newest / "trainer_state.json").is_file():
            return newest
        # A crash while saving: this checkpoint cannot be resumed from, the one before can.
        shutil.rmtree(newest, ignore_errors=True)
    return None


def _checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def curve_point(step: int, logs: dict) -> dict:
    """A loss-curve point of the run row from one Trainer log entry."""
    point = {"step": step}
    for key, value in logs.items():
        if key in CURVE_KEYS or key.startswith("loss_"):
            point[key] = float(f"{float(value):.6g}")
    return point


def checkpoint_curve(checkpoint: Path) -> list[dict]:
    """The loss curve up to a checkpoint, from its trainer_state.json (what a resumed run continues)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [curve_point(int(e["step"]), e) for e in state.get("log_history", []) if "loss" in e]


class ProgressCallback(TrainerCallback):
    """Writes step/total and loss-curve points to the run row; stops training when a cancel is asked."""

    def __init__(self, database_url: str, run_id: str, on_progress: Callable[[int, int], None] | None = None):
        self.database_url = database_url
        self.run_id = run_id
        self.on_progress = on_progress
        self.pending: list[dict] = []
        self.last_flush = 0.0
        self.cancelled = False

    def _flush(self, state, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < PROGRESS_INTERVAL_S:
            return
        self.last_flush = now
        with session_scope(self.database_url) as session:
            run_store.record_progress(session, self.run_id, state.global_step, state.max_steps, self.pending)
            self.cancelled = run_store.status_of(session, self.run_id) == "cancelling"
        self.pending = []

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._flush(state, force=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.pending.append(curve_point(state.global_step, logs))
        self._flush(state)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._flush(state, force=True)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._flush(state)
            if self.on_progress is not None:
                self.on_progress(state.global_step, state.max_steps)
        if self.cancelled:
            control.should_training_stop = True
            control.should_save = True  # keep the work done so far

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._flush(state, force=True)


def _eval_examples(session, run: ResolvedRun) -> list[Example]:
    cfg = run.config
    stmt = (
        select(m.Example)
        .where(m.Example.dataset_id == run.dataset_id, m.Example.split == cfg.eval.split)
        .order_by(m.Example.id)
    )
    if cfg.eval.limit is not None:
        stmt = stmt.limit(cfg.eval.limit)
    return [
        Example(r.external_id, r.question, tuple(r.options), r.answer, r.context)
        for r in session.scalars(stmt)
    ]


def eval_options(cfg: TrainConfig) -> EvalOptions:
    e = cfg.eval
    return EvalOptions(e.batch_size, e.max_new_tokens, e.likelihood, e.calibrate, e.explain)


def execute_run(
    database_url: str,
    run_id: str,
    settings: Settings,
    progress_bar: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> str:
    """Run (or resume, or skip if finished) training run `run_id`; returns its final status.

    Errors in the data or the config end the run as `failed` with the error recorded; a crash of the
    process leaves it `running`, to be resumed by whoever runs it next.
    """
    if not _is_main_process():
        # Other ranks of a torchrun/accelerate launch only train; rank 0 owns the run row.
        return _execute(database_url, run_id, settings, progress_bar, on_progress)
    with run_store.run_lock(database_url, run_id) as mine:
        if not mine:
            log.info("run %s is being trained by another process; skipping", run_id)
            return "locked"
        return _execute(database_url, run_id, settings, progress_bar, on_progress)


def execute_run_in_process(
    database_url: str, run_id: str, settings: Settings, progress_bar: bool = False
) -> str:
    """`execute_run` in a fresh (spawned) process; returns the run's final status.

    A grid of many runs in one process keeps growing: the allocator holds on to the arenas of every
    model, optimizer and batch it has seen. A process per run hands all of it back when the run ends.
    A process that dies without finishing its run (killed, out of memory) leaves it `failed` with the
    exit code, to be retried by the next invocation.
    """
    context = multiprocessing.get_context("spawn")
    child = context.Process(
        target=execute_run, args=(database_url, run_id, settings, progress_bar), name=f"run-{run_id}"
    )
    child.start()
    try:
        child.join()
    except KeyboardInterrupt:
        child.join()  # Ctrl-C reached the child too: it records the cancel itself
        raise
    except BaseException:
        # The parent is going (SIGTERM arrives as SystemExit): the run must not outlive it, nor stay
        # `running` in the database; it is `failed` now and the next invocation resumes it.
        child.terminate()
        child.join(CHILD_STOP_TIMEOUT_S)
        if child.is_alive():
            child.kill()
            child.join()
        _record_exit(database_url, run_id, child.exitcode)
        raise
    return _record_exit(database_url, run_id, child.exitcode)


def _record_exit(database_url: str, run_id: str, exitcode: int | None) -> str:
    """The run's status once its process has gone; `failed` if it went without finishing the run."""
    with session_scope(database_url) as session:
        status = run_store.status_of(session, run_id) or "missing"
        if exitcode != 0 and status not in run_store.FINISHED:
            error = f"the training process exited with code {exitcode}"
            run_store.finish_run(session, run_id, "failed", error=error)
            status = "failed"
    return status


def _execute(
    database_url: str,
    run_id: str,
    settings: Settings,
    progress_bar: bool,
    on_progress: Callable[[int, int], None] | None,
) -> str:
    main = _is_main_process()
    paths = run_paths(settings, run_id)
    with session_scope(database_url) as session:
        row = run_store.get_run(session, run_id)
        if row is None:
            raise KeyError(f"no training run {run_id}")
        if row.status == "cancelling":
            run_store.finish_run(session, run_id, "cancelled")
            return "cancelled"
        if row.status in run_store.FINISHED:
            return row.status
        try:
            cfg = TrainConfig.model_validate(row.config)
            run = resolve_run(session, cfg)
            student = locate_student(session, cfg.student)
        except (ValueError, ConfigError) as exc:
            run_store.finish_run(session, run_id, "failed", error=str(exc))
            return "failed"
        if main:
            run_store.mark_running(session, run_id, str(paths.checkpoints))
    log.info("run %s: %s of %s on %s/%s", run_id, cfg.method, cfg.student, cfg.dataset, cfg.split)
    try:
        metrics, output_dir, model_id = _train_and_evaluate(
            database_url, run_id, run, str(student), settings, paths, progress_bar, on_progress
        )
    except RunCancelled:
        with session_scope(database_url) as session:
            run_store.finish_run(session, run_id, "cancelled")
        return "cancelled"
    except KeyboardInterrupt:
        # Ctrl-C of a local run is a cancel, not a crash: no trainer should pick it up again by itself.
        if main:
            with session_scope(database_url) as session:
                run_store.finish_run(session, run_id, "cancelled", error="interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        log.exception("run %s failed", run_id)
        if main:
            with session_scope(database_url) as session:
                run_store.finish_run(session, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    if not main:
        return "completed"
    with session_scope(database_url) as session:
        if model_id:
            metrics["model_id"] = model_id
        run_store.finish_run(session, run_id, "completed", metrics=metrics, output_dir=output_dir)
    log.info("run %s completed", run_id)
    return "completed"


def _train_and_evaluate(
    database_url: str,
    run_id: str,
    run: ResolvedRun,
    student: str,
    settings: Settings,
    paths: RunPaths,
    progress_bar: bool,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[dict, str | None, str | None]:
    cfg, hp = run.config, run.config.hyperparameters
    main = _is_main_process()
    model_path = resolve_model(student, settings)
    seq2seq = bool(getattr(AutoConfig.from_pretrained(str(model_path)), "is_encoder_decoder", False))
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    encoder = StudentEncoder(tokenizer, seq2seq, hp.max_input_tokens, hp.max_target_tokens)
    metrics: dict = {"tasks": run.task_names, "weights": run.weights}
    output_dir: str | None = None
    model_id: str | None = None

    if cfg.trains:
        args = training_arguments(cfg, paths.checkpoints, progress_bar=progress_bar and main)
        with (
            args.main_process_first(desc="encode the training tasks"),
            session_scope(database_url) as session,
        ):
            dataset = build_dataset(session, run, encoder, paths.dataset)
        metrics["train_examples"] = len(dataset)
        metrics["train_tokens_per_epoch"] = int(sum(dataset["num_tokens"]))
        model = load_student(model_path, seq2seq)
        if cfg.lora is not None:
            model = with_lora(model, cfg.lora, seq2seq)
        callback = ProgressCallback(database_url, run_id, on_progress)
        trainer = DistillTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=MultiTaskCollator(tokenizer.pad_token_id),
            task_names=run.task_names,
            weights=run.weights,
            causal=not seq2seq,
            callbacks=[callback],
        )
        resume = last_checkpoint(paths.checkpoints)
        if resume is not None and main:
            log.info("run %s: resuming from %s", run_id, resume.name)
            with session_scope(database_url) as session:
                run_store.reset_curve(session, run_id, _checkpoint_step(resume), checkpoint_curve(resume))
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if callback.cancelled:
            raise RunCancelled(run_id)
        if not main:
            return metrics, None, None
        curve = [p for p in trainer.state.log_history if "loss" in p]
        runtime = result.metrics.get("train_runtime") or 0.0
        metrics.update(
            {
                "steps": trainer.state.global_step,
                "final_loss": curve[-1]["loss"] if curve else None,
                "train_runtime_s": round(runtime, 2),
                "precision": precision(cfg),
                "resumed_from_step": _checkpoint_step(resume) if resume else None,
            }
        )
        if resume is None and runtime:
            tokens = metrics["train_tokens_per_epoch"] * trainer.state.epoch
            metrics["train_tokens_per_s"] = round(tokens / runtime, 1)
        info = {
            "run_id": run_id,
            "method": cfg.method,
            "base_model": cfg.student,
            "answer_prefix": ANSWER_PREFIX,
            "teacher_prefixes": {t.name: t.prefix for t in run.teachers},
            "template_version": TEMPLATE_VERSION,
        }
        eval_model = export_model(trainer.model, tokenizer, encoder, paths.model, info)
        output_dir = str(paths.model)
        del trainer
    else:
        eval_model = merged(load_student(model_path, seq2seq))

    if cfg.eval.split is not None:
        with session_scope(database_url) as session:
            examples = _eval_examples(session, run)
        if torch.cuda.is_available():
            eval_model = eval_model.to("cuda")
        with tqdm(
            total=len(examples),
            unit="q",
            desc=f"eval {cfg.dataset}/{cfg.eval.split}",
            disable=not progress_bar,
        ) as bar:
            result: EvalResult = evaluate(
                eval_model,
                encoder,
                examples,
                eval_options(cfg),
                {t.name: t.prefix for t in run.teachers},
                progress=bar.update,
            )
        result.write_predictions(paths.predictions(cfg.eval.split))
        metrics["eval"] = {"split": cfg.eval.split, **result.metrics}
        metrics["predictions"] = str(paths.predictions(cfg.eval.split))

    if output_dir is not None:
        with session_scope(database_url) as session:
            existing = run_store.run_model(session, run_id)
            if existing is None:
                existing = register_model(
                    session,
                    cfg.registry_name(),
                    output_dir,
                    base_model=cfg.student,
                    training_run_id=run_id,
                    metrics=metrics.get("eval", {}),
                )
            else:
                existing.metrics = metrics.get("eval", {})
            model_id = existing.id
    if cfg.trains and not hp.keep_checkpoints:
        # The exported, evaluated model is the result; optimizer states are GBs no one resumes from.
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    return metrics, output_dir, model_id


def main(argv: list[str] | None = None) -> None:
    """`python -m distillery.distill.runner RUN_ID`, also the entry point under
    `torchrun --nproc_per_node N -m distillery.distill.runner RUN_ID` (rank 0 owns the run row)."""
    import argparse

    from distillery.config import get_settings

    parser = argparse.ArgumentParser(prog="python -m distillery.distill.runner", description=main.__doc__)
    parser.add_argument("run_id")
    args = parser.parse_args(argv)
    settings = get_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    status = execute_run(settings.database_url, args.run_id, settings)
    raise SystemExit(0 if status in ("completed", "cancelled", "locked") else 1)


if __name__ == "__main__":
    main()
