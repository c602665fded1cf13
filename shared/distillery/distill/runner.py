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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from distillery.config import Settings
from distillery.distill.checks import ConfigError, ResolvedRun, resolve_run
from distillery.distill.collator import MultiTaskCollator
from distillery.distill.config import TrainConfig
from distillery.distill.encoding import StudentEncoder, load_encoder
from distillery.distill.evaluate import eval_options, evaluate, option_scores
from distillery.distill.export import export_model, merged
from distillery.distill.tasks import build_dataset
from distillery.distill.trainer import (
    SELECTION_METRIC,
    DistillTrainer,
    curve_point,
    load_student,
    precision,
    training_arguments,
    with_lora,
    with_schedule,
)
from distillery.modelhub import resolve_model
from distillery.rationales.prompts import ANSWER_PREFIX, TEMPLATE_VERSION
from distillery.records import Example
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery.store.examples import split_query, to_record
from distillery.store.registry import register_model

log = logging.getLogger(__name__)

CHILD_STOP_TIMEOUT_S = 30.0

PROGRESS_INTERVAL_S = 2.0


class RunCancelled(Exception):
    """The run was asked to stop; its checkpoints stay."""


class RunLockLost(Exception):
    """This process lost the run's lock while training: it stopped, and leaves the run to its new owner."""


@dataclass(frozen=True)
class RunPaths:
    """Where a run keeps its files (see the module docstring)."""

    root: Path
    dataset: Path
    checkpoints: Path
    model: Path

    def predictions(self, split: str) -> Path:
        return self.root / f"predictions-{split}.jsonl"


def run_paths(settings: Settings, run_id: str) -> RunPaths:
    root = settings.artifacts / "runs" / run_id
    return RunPaths(
        root, dataset=root / "train.arrow", checkpoints=root / "checkpoints", model=root / "model"
    )


def last_checkpoint(folder: Path, clean: bool = True) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last); half-written ones are removed
    when `clean` (rank 0 only: the other ranks of a torchrun launch read the same folder)."""
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
        if clean:
            shutil.rmtree(newest, ignore_errors=True)
    return None


def _checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def agree_on_cancel(cancelled: bool, device: torch.device) -> bool:
    """Rank 0's cancel flag on every rank of a distributed run (one broadcast); `cancelled` when alone.

    Only rank 0 reads the run row; without this the other ranks would go on into the next step's
    all-reduce and wait there until the collective timeout. Every rank calls it at every step end.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return cancelled
    flag = torch.tensor([1 if cancelled else 0], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def checkpoint_curve(checkpoint: Path) -> list[dict[str, float]]:
    """The loss curve up to a checkpoint, from its trainer_state.json (what a resumed run continues)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [curve_point(int(e["step"]), e) for e in state.get("log_history", []) if "loss" in e]


class ProgressCallback(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here (pyproject)
    """Writes step/total and loss-curve points to the run row; stops training when a cancel is asked."""

    def __init__(
        self,
        database_url: str,
        run_id: str,
        on_progress: Callable[[int, int], None] | None = None,
        holds_lock: Callable[[], bool] | None = None,
    ):
        self.database_url = database_url
        self.run_id = run_id
        self.on_progress = on_progress
        self.holds_lock = holds_lock  # checked after every step: a fenced-off trainer stops at once
        self.pending: list[dict[str, float]] = []
        self.last_flush = 0.0
        self.cancelled = False
        self.lock_lost = False

    def _flush(self, state: TrainerState, force: bool = False) -> None:
        now = time.monotonic()
        if self.lock_lost or (not force and now - self.last_flush < PROGRESS_INTERVAL_S):
            return
        self.last_flush = now
        with session_scope(self.database_url) as session:
            run_store.record_progress(session, self.run_id, state.global_step, state.max_steps, self.pending)
            self.cancelled = run_store.status_of(session, self.run_id) == "cancelling"
        self.pending = []

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self._flush(state, force=True)

    # At the start, at each checkpoint and at the end the row is brought up to date at once.
    on_train_begin = on_train_end = on_save

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.pending.append(curve_point(state.global_step, logs))
        self._flush(state)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.holds_lock is not None and not self.holds_lock():
            # The run's lock is gone (its connection dropped): another trainer may resume the run, so
            # this one stops before it writes a checkpoint or the run row again.
            self.lock_lost = True
            control.should_training_stop = True
            control.should_save = False
            return
        if state.is_world_process_zero:
            self._flush(state)
            if self.on_progress is not None:
                self.on_progress(state.global_step, state.max_steps)
        self.cancelled = agree_on_cancel(self.cancelled, args.device)
        if self.cancelled:
            control.should_training_stop = True
            control.should_save = True  # keep the work done so far


@dataclass(frozen=True)
class RunRequest:
    """Which run to execute and how to report on it: what `execute_run` was called with."""

    database_url: str
    run_id: str
    settings: Settings
    progress_bar: bool = False
    on_progress: Callable[[int, int], None] | None = None
    holds_lock: Callable[[], bool] | None = None  # fencing: False once this process lost the run's lock


@dataclass
class RunContext:
    """What the steps of a run share: the request, the resolved run, the student, and the results so far."""

    request: RunRequest
    run: ResolvedRun
    paths: RunPaths
    model_path: Path
    seq2seq: bool
    tokenizer: PreTrainedTokenizerBase
    encoder: StudentEncoder
    metrics: dict[str, Any]
    output_dir: str | None = None  # the exported model, once there is one
    model_id: str | None = None  # its registry entry

    @property
    def config(self) -> TrainConfig:
        return self.run.config


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
    request = RunRequest(database_url, run_id, settings, progress_bar, on_progress)
    if not _is_main_process():
        # Other ranks of a torchrun/accelerate launch only train; rank 0 owns the run row.
        return _execute(request)
    with run_store.run_lock(database_url, run_id) as lock:
        if not lock:
            log.info("run %s is being trained by another process; skipping", run_id)
            return "locked"
        return _execute(replace(request, holds_lock=lock.held))


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


def _finish(request: RunRequest, status: str, error: str | None = None, ctx: RunContext | None = None) -> str:
    """Record the run's final status (with the results of `ctx`, for a completed run); returns it."""
    with session_scope(request.database_url) as session:
        if ctx is None:
            run_store.finish_run(session, request.run_id, status, error=error)
        else:
            if ctx.model_id:
                ctx.metrics["model_id"] = ctx.model_id
            run_store.finish_run(
                session, request.run_id, status, metrics=ctx.metrics, output_dir=ctx.output_dir
            )
    return status


def _start(request: RunRequest) -> ResolvedRun | str:
    """The run resolved and marked running, or the status it ends with now (finished, cancelled, bad)."""
    with session_scope(request.database_url) as session:
        row = run_store.get_run(session, request.run_id)
        if row is None:
            raise KeyError(f"no training run {request.run_id}")
        if row.status == "cancelling":
            run_store.finish_run(session, request.run_id, "cancelled")
            return "cancelled"
        if row.status in run_store.FINISHED:
            return row.status
        try:
            run = resolve_run(session, TrainConfig.model_validate(row.config))
        except (ValueError, ConfigError) as exc:
            run_store.finish_run(session, request.run_id, "failed", error=str(exc))
            return "failed"
        if _is_main_process():
            checkpoints = run_paths(request.settings, request.run_id).checkpoints
            run_store.mark_running(session, request.run_id, str(checkpoints))
    return run


def _execute(request: RunRequest) -> str:
    started = _start(request)
    if isinstance(started, str):
        return started
    cfg, main = started.config, _is_main_process()
    log.info("run %s: %s of %s on %s/%s", request.run_id, cfg.method, cfg.student, cfg.dataset, cfg.split)
    try:
        ctx = _prepare(request, started)
        _run_steps(ctx)
    except RunCancelled:
        return _finish(request, "cancelled") if main else "cancelled"
    except RunLockLost:
        # Another trainer may own the run now: leave its row and its folder to it.
        log.error("run %s: lost the run's lock; stopped training without touching the run", request.run_id)
        return "lock-lost"
    except KeyboardInterrupt:
        # Ctrl-C of a local run is a cancel, not a crash: no trainer should pick it up again by itself.
        if main:
            _finish(request, "cancelled", error="interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        log.exception("run %s failed", request.run_id)
        if main:
            _finish(request, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    if not main:
        return "completed"
    _finish(request, "completed", ctx=ctx)
    log.info("run %s completed", request.run_id)
    return "completed"


# --- the steps of a run: prepare -> train -> export -> evaluate -> register ------------------------------


def _prepare(request: RunRequest, run: ResolvedRun) -> RunContext:
    """The student (converted on first use), its tokenizer and task encoder, the run's folders."""
    hp = run.config.hyperparameters
    model_path = resolve_model(run.student, request.settings)
    encoder = load_encoder(model_path, hp.max_input_tokens, hp.max_target_tokens)
    return RunContext(
        request=request,
        run=run,
        paths=run_paths(request.settings, request.run_id),
        model_path=model_path,
        seq2seq=encoder.seq2seq,
        tokenizer=encoder.tokenizer,
        encoder=encoder,
        metrics={"tasks": run.task_names, "weights": run.weights},
    )


def _run_steps(ctx: RunContext) -> None:
    """Train and export (or load the student as it is), evaluate, register; results go to `ctx`."""
    cfg = ctx.config
    if cfg.trains:
        trainer = _train(ctx)
        if not _is_main_process():
            return  # rank 0 exports, evaluates and registers
        eval_model = _export(ctx, trainer)
        del trainer
    else:
        eval_model = merged(load_student(ctx.model_path, ctx.seq2seq))
    if cfg.eval.split is not None:
        _evaluate(ctx, eval_model, cfg.eval.split)
    if ctx.output_dir is not None:
        _register(ctx, ctx.output_dir)
    if cfg.trains and not cfg.hyperparameters.keep_checkpoints:
        # The exported, evaluated model is the result; optimizer states are GBs no one resumes from.
        shutil.rmtree(ctx.paths.checkpoints, ignore_errors=True)


def _train(ctx: RunContext) -> DistillTrainer:
    """Train the student on the run's tasks, from its last checkpoint if it has one."""
    request, cfg, main = ctx.request, ctx.config, _is_main_process()
    args = training_arguments(cfg, ctx.paths.checkpoints, progress_bar=request.progress_bar and main)
    with (
        args.main_process_first(desc="encode the training tasks"),
        session_scope(request.database_url) as session,
    ):
        dataset = build_dataset(session, ctx.run, ctx.encoder, ctx.paths.dataset)
    ctx.metrics["train_examples"] = len(dataset)
    args = with_schedule(args, cfg, len(dataset))
    ctx.metrics["lr_scheduler"] = str(args.lr_scheduler_type.value)
    ctx.metrics["train_tokens_per_epoch"] = int(sum(dataset["num_tokens"]))
    model: nn.Module = load_student(ctx.model_path, ctx.seq2seq)
    if cfg.lora is not None:
        model = with_lora(model, cfg.lora, ctx.seq2seq)
    callback = ProgressCallback(request.database_url, request.run_id, request.on_progress, request.holds_lock)
    selection = _selection_examples(ctx)
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=selection,
        selector=_selector(ctx, selection) if selection else None,
        data_collator=MultiTaskCollator(ctx.tokenizer.pad_token_id),
        task_names=ctx.run.task_names,
        weights=ctx.run.weights,
        causal=not ctx.seq2seq,
        callbacks=[callback],
    )
    resume = _resume_point(ctx)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if callback.lock_lost:
        raise RunLockLost(request.run_id)
    if callback.cancelled:
        raise RunCancelled(request.run_id)
    if main:
        ctx.metrics.update(_training_metrics(ctx, trainer, result.metrics, resume))
    return trainer


def _selection_examples(ctx: RunContext) -> list[Example] | None:
    """The questions model selection scores the student on (None: no selection)."""
    ev = ctx.config.eval
    if ev.select_every is None:
        return None
    with session_scope(ctx.request.database_url) as session:
        if ev.select_split == "heldout":  # the training split's last questions, which training leaves out
            query = split_query(ctx.run.dataset_id, ctx.config.split, last=ev.select_limit)
        else:
            query = split_query(ctx.run.dataset_id, ev.select_split, ev.select_limit)
        examples = [to_record(row) for row in session.scalars(query)]
    if not examples:
        raise ConfigError(
            "eval.select_split", f"dataset {ctx.config.dataset!r} has no {ev.select_split} questions"
        )
    return examples


def _selector(ctx: RunContext, examples: list[Example]) -> Callable[[nn.Module], dict[str, float]]:
    """lm-eval acc_norm of the student being trained on the selection questions (no generation)."""
    cfg = ctx.config

    def score(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        hits = 0
        for start in range(0, len(examples), cfg.eval.batch_size):
            batch = examples[start : start + cfg.eval.batch_size]
            scored = option_scores(model, ctx.encoder, batch, answer_format=cfg.answer_format)
            hits += sum(s.acc_norm == e.answer for s, e in zip(scored, batch, strict=True))
        model.train(was_training)
        return {SELECTION_METRIC: hits / len(examples)}

    return score


def _resume_point(ctx: RunContext) -> Path | None:
    """The checkpoint to resume from, if any; the run row's step and loss curve are set back to it."""
    resume = last_checkpoint(ctx.paths.checkpoints, clean=_is_main_process())
    if resume is not None and _is_main_process():
        log.info("run %s: resuming from %s", ctx.request.run_id, resume.name)
        with session_scope(ctx.request.database_url) as session:
            run_store.reset_curve(
                session, ctx.request.run_id, _checkpoint_step(resume), checkpoint_curve(resume)
            )
    return resume


def _training_metrics(
    ctx: RunContext, trainer: DistillTrainer, result: dict[str, float], resume: Path | None
) -> dict[str, Any]:
    curve = [p for p in trainer.state.log_history if "loss" in p]
    runtime = result.get("train_runtime") or 0.0
    metrics: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "final_loss": curve[-1]["loss"] if curve else None,
        "train_runtime_s": round(runtime, 2),
        "precision": precision(ctx.config),
        "resumed_from_step": _checkpoint_step(resume) if resume else None,
    }
    best = trainer.state.best_model_checkpoint
    if ctx.config.eval.select_every is not None and best:
        # The exported model is this checkpoint's: the report names its step.
        metrics["selected_step"] = _checkpoint_step(Path(best))
        metrics["selection"] = {
            "split": ctx.config.eval.select_split,
            "limit": ctx.config.eval.select_limit,
            "every": ctx.config.eval.select_every,
            SELECTION_METRIC: trainer.state.best_metric,
        }
    if resume is None and runtime:
        # Throughput of a resumed run would count the epochs before the resume too.
        tokens = ctx.metrics["train_tokens_per_epoch"] * (trainer.state.epoch or 0.0)
        metrics["train_tokens_per_s"] = round(tokens / runtime, 1)
    return metrics


def _export(ctx: RunContext, trainer: DistillTrainer) -> PreTrainedModel:
    """Write the trained student (LoRA merged) to the run's `model/`; returns the model to evaluate."""
    cfg = ctx.config
    info = {
        "run_id": ctx.request.run_id,
        "method": cfg.method,
        "base_model": cfg.student,
        "answer_prefix": ANSWER_PREFIX,
        "answer_format": cfg.answer_format,
        "teacher_prefixes": {t.name: t.prefix for t in ctx.run.teachers},
        "template_version": TEMPLATE_VERSION,
    }
    model = export_model(trainer.model, ctx.tokenizer, ctx.encoder, ctx.paths.model, info)
    ctx.output_dir = str(ctx.paths.model)
    return model


def _evaluate(ctx: RunContext, model: PreTrainedModel, split: str) -> None:
    """Score the model on the eval split; predictions to `predictions-<split>.jsonl`, metrics to `ctx`."""
    cfg = ctx.config
    with session_scope(ctx.request.database_url) as session:
        rows = session.scalars(split_query(ctx.run.dataset_id, split, cfg.eval.limit))
        examples = [to_record(row) for row in rows]
    if torch.cuda.is_available():
        model = model.to("cuda")
    prefixes = {t.name: t.prefix for t in ctx.run.teachers}
    desc = f"eval {cfg.dataset}/{split}"
    with tqdm(total=len(examples), unit="q", desc=desc, disable=not ctx.request.progress_bar) as bar:
        result = evaluate(model, ctx.encoder, examples, eval_options(cfg), prefixes, progress=bar.update)
    result.write_predictions(ctx.paths.predictions(split))
    ctx.metrics["eval"] = {"split": split, **result.metrics}
    ctx.metrics["predictions"] = str(ctx.paths.predictions(split))


def _register(ctx: RunContext, output_dir: str) -> None:
    """The exported model as the next registry version of its name (once per run; a rerun updates it)."""
    cfg, run_id = ctx.config, ctx.request.run_id
    with session_scope(ctx.request.database_url) as session:
        existing = run_store.run_model(session, run_id)
        if existing is None:
            existing = register_model(
                session,
                cfg.registry_name(),
                output_dir,
                base_model=cfg.student,
                training_run_id=run_id,
                metrics=ctx.metrics.get("eval", {}),
            )
        else:
            existing.metrics = ctx.metrics.get("eval", {})
        ctx.model_id = existing.id


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
