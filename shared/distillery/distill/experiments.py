"""The paper's table at a size a machine can run: baselines, TinyLLM, ablations and an alpha sweep.

For each dataset: the student inference-only, label fine-tuning, LoRA on labels, TinyLLM with both
paper teachers, TinyLLM without each teacher (and without in-context examples when a rationale job
generated with in_context.strategy=none is given); on the sweep datasets, TinyLLM for each alpha.

Every configuration is an ordinary training run whose idempotency key is a hash of its config, so a
second invocation skips finished configurations, resumes an interrupted one from its checkpoint and
retries failed ones. All configurations of a dataset evaluate on the same first N questions of the
eval split (paired comparison).

The store and the runner are imported where they are used: the grid itself (`PRESETS`, `plan`,
`experiment_result`, `save_results`) imports without SQLAlchemy, for the offline GPU run
(`scripts/gpu/run_gpu_small.py`) on a host without PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillery.datasets import dataset_file, load_jsonl
from distillery.distill.config import DEFAULT_ALPHA, TrainConfig

if TYPE_CHECKING:
    from distillery.config import Settings
    from distillery.store import models as m

log = logging.getLogger(__name__)

PAPER_TEACHERS = ("flan-t5-xl", "llama-2-7b-chat")


@dataclass(frozen=True)
class Preset:
    """Sizes and hyper-parameters of one experiment grid; every choice is written into the report."""

    name: str
    description: str
    student: str
    datasets: tuple[str, ...]
    train_limit: int | None
    eval_split: str
    eval_limit: int | None
    alpha: float
    alpha_sweep: tuple[float, ...]
    sweep_datasets: tuple[str, ...]
    hyperparameters: dict[str, Any]
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 16, "alpha": 32})
    lora_learning_rate: float = 2e-4
    eval: dict[str, Any] = field(default_factory=dict[str, Any])
    filters: dict[str, Any] = field(default_factory=dict[str, Any])
    notes: tuple[str, ...] = ()
    answer_format: str = "option_text"
    # The grid's columns to plan (None: all of them); labels as in `Experiment.label`.
    configurations: tuple[str, ...] | None = None


# A configuration is short: one checkpoint (at the end, if at all), gone once the model is exported.
ONE_FINAL_CHECKPOINT = {"save_steps": 100_000, "save_total_limit": 1, "keep_checkpoints": False}

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="Every configuration of the grid for a few steps on a tiny random model (plumbing only).",
        student="tiny-causal",
        datasets=("arc",),
        train_limit=8,
        eval_split="dev",
        eval_limit=8,
        alpha=0.5,
        alpha_sweep=(0.1, 2.0),
        sweep_datasets=("arc",),
        hyperparameters={
            "batch_size": 4,
            "max_steps": 2,
            "max_input_tokens": 64,
            "max_target_tokens": 24,
            "save_steps": 1000,
            "logging_steps": 1,
            "keep_checkpoints": False,
        },
        eval={"batch_size": 8, "max_new_tokens": 12},
        notes=("Accuracies of a random tiny model are noise: this preset only proves the pipeline.",),
    ),
    "cpu-small": Preset(
        name="cpu-small",
        description="SmolLM2-135M-Instruct, fp32 on 2 CPU cores, within an hour: slices of ARC and PubMedQA.",
        student="smollm2-135m",
        datasets=("arc", "pubmedqa"),
        train_limit=32,
        eval_split="dev",
        eval_limit=40,
        alpha=0.5,
        alpha_sweep=(0.01, 0.1, 1.0, 2.0, 3.0),
        sweep_datasets=("arc",),
        hyperparameters={
            "batch_size": 8,
            "epochs": 1,
            "learning_rate": 1e-4,
            "max_input_tokens": 128,
            "max_target_tokens": 32,
            # One checkpoint, at the end: a configuration is short, an interrupted one starts over.
            "save_steps": 1000,
            "save_total_limit": 1,
            "keep_checkpoints": False,
            "logging_steps": 1,
            "precision": "fp32",
        },
        eval={"batch_size": 20, "max_new_tokens": 12},
        notes=(
            "Budget (idle 2-core machine): a three-task TinyLLM step of 8 questions takes ~45 s in fp32, a "
            "label step ~13 s; 15 trainings of 4 steps (~32 min), 17 evaluations of 40 questions with "
            "generation + option likelihood + calibration (~55 s each), loading/export ~15 s a run: ~47 min.",
            "32 training examples per dataset (the first of the train split), 1 epoch = 4 steps of 8; task "
            "inputs capped at 128 content tokens (PubMedQA abstracts are cut), rationales at 32 tokens.",
            "The same first 40 dev questions for every configuration of a dataset (paired); standard "
            "errors are about 7-8 points, so differences between methods are inside the noise.",
            "alpha sweep (the paper's 0.01, 0.1, 0.5, 1, 2, 3) on ARC only.",
            "lr 1e-4 for full fine-tuning (5e-5 barely moves the model in 4 steps); LoRA r 16 at 2e-4.",
            "A busy machine (other jobs on the 2 cores) stretches every figure above proportionally.",
        ),
    ),
    "cpu-evidence": Preset(
        name="cpu-evidence",
        description="SmolLM2-135M-Instruct on OpenBookQA, fp32 on 2 CPU cores, one invocation of at most "
        "120 min: 304 training questions, every configuration scored on the same 500 dev questions.",
        student="smollm2-135m",
        datasets=("obqa",),
        train_limit=304,
        eval_split="dev",
        eval_limit=500,
        alpha=DEFAULT_ALPHA,
        alpha_sweep=(),
        sweep_datasets=(),
        hyperparameters={
            "batch_size": 8,
            "epochs": 1,
            "learning_rate": 1e-4,
            "lr_scheduler": "constant",
            "max_input_tokens": 96,
            "max_target_tokens": 32,
            **ONE_FINAL_CHECKPOINT,
            "logging_steps": 2,
            "precision": "fp32",
        },
        filters={"shuffle_options": True},
        eval={"batch_size": 25, "max_new_tokens": 12, "calibrate": False},
        notes=(
            "OpenBookQA: the first 304 training questions (1 epoch = 38 steps of 8, constant lr 1e-4, LoRA "
            "r 16 at 2e-4), options shuffled (seeded), the gold option's text as the answer target.",
            "Every configuration answers the same 500 dev questions (the whole OBQA dev split): paired "
            "comparisons by exact McNemar test and bootstrap CI; a binomial standard error is ~2 points.",
            "TinyLLM with both paper teachers (FLAN-T5-xl, LLaMA-2-7b-chat rationales) at alpha 0.5, and "
            "without each teacher; no alpha sweep (time).",
            "Generation (12 new tokens: OBQA options are a few words) and lm-eval acc/acc_norm; no "
            "calibrated score (it doubles the likelihood pass).",
            "Budget, measured (2 cores, one invocation: 68.6 min): training label-ft 5.4 min (8.6 s a step "
            "of 8), LoRA 3.0 min, TinyLLM (3 tasks) 15.4 min, each w/o (2 tasks) 7-7.5 min; each evaluation "
            "of 500 questions (generation + likelihood) 4-6 min; loading/export under a minute a run.",
        ),
    ),
    "gpu-small": Preset(
        name="gpu-small",
        description="SmolLM2-135M-Instruct on one H200 in bf16, at most ~8 min of GPU compute: the full "
        "OBQA, ARC and RiddleSense train sets, inference-only / label fine-tuning / TinyLLM.",
        student="smollm2-135m",
        datasets=("obqa", "arc", "riddle"),
        train_limit=None,
        eval_split="dev",
        eval_limit=None,
        alpha=DEFAULT_ALPHA,
        alpha_sweep=(),
        sweep_datasets=(),
        configurations=("inference-only", "label-ft", "tinyllm"),
        hyperparameters={
            "batch_size": 32,
            "epochs": 1,
            "learning_rate": 1e-4,
            "lr_scheduler": "auto",
            "max_input_tokens": 256,
            "max_target_tokens": 96,
            **ONE_FINAL_CHECKPOINT,
            "logging_steps": 10,
            "precision": "bf16",
        },
        eval=dict(batch_size=128, max_new_tokens=16, calibrate=False),
        notes=(
            "Full train sets (OBQA 4,957, ARC 1,117, RiddleSense 3,510 questions), 1 epoch of batch 32, "
            "bf16; every configuration of a dataset answers its whole dev split (paired).",
            "Sized (an estimate, not a measurement) at ~300 optimiser steps per method over the three "
            "datasets, each well under a second for a 135M student on an H200, plus ~3,600 dev answers.",
        ),
    ),
    "paper": Preset(
        name="paper",
        description="Full-size grid for a GPU: full splits, paper hyper-parameters, bf16, full alpha sweep.",
        student="flan-t5-base",
        datasets=("obqa", "arc", "piqa", "riddle", "pubmedqa", "bioasq"),
        train_limit=None,
        eval_split="dev",
        eval_limit=None,
        alpha=0.5,
        alpha_sweep=(0.01, 0.1, 1.0, 2.0, 3.0),
        sweep_datasets=("arc", "pubmedqa"),
        hyperparameters={
            "batch_size": 8,
            "grad_accum": 2,
            "epochs": 1,
            "learning_rate": 5e-5,
            "max_input_tokens": 1024,
            "max_target_tokens": 256,
            "save_steps": 500,
            "logging_steps": 20,
            "precision": "auto",
        },
        eval={"batch_size": 64, "max_new_tokens": 32},
        notes=(
            "Student: a FLAN-T5 directory given with --student (none ships offline); batch 16 = 8 x 2.",
            "The paper evaluates on held-out test splits; the shared data holds train/dev, so dev here.",
        ),
    ),
}


@dataclass(frozen=True)
class Experiment:
    """One configuration of the grid (one training run)."""

    dataset: str
    label: str  # column of the table: inference-only, label-ft, lora, tinyllm, w/o <teacher>, alpha=<a>
    config: TrainConfig
    alpha: float | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.label}"

    def idempotency_key(self) -> str:
        """Content-addressed: the same configuration is the same run, whoever asks for it."""
        digest = hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:40]
        return f"experiment:{digest}"


def rationale_file(dataset: str, settings: Settings) -> Path | None:
    """The paper rationales of `dataset` that `prepare_data` imports: the shared copy, else the packaged."""
    return rationale_path(dataset, settings.rationales_dir)


def rationale_path(dataset: str, rationales_dir: Path) -> Path | None:
    """`rationales_dir/<dataset>/train.jsonl`, else the packaged copy, else None."""
    for base in (rationales_dir, Path(__file__).resolve().parents[1] / "data" / "rationales"):
        path = base / dataset / "train.jsonl"
        if path.is_file():
            return path
    return None


def rationale_teachers(datasets: list[str], settings: Settings) -> dict[str, set[str]]:
    """Per dataset, the teachers its paper rationales come from (PIQA: FLAN-T5 only, no LLaMA ones)."""
    found: dict[str, set[str]] = {}
    for dataset in datasets:
        path = rationale_file(dataset, settings)
        names: set[str] = set()
        if path is not None:
            with path.open(encoding="utf-8") as fh:
                names = {json.loads(line)["teacher"] for line in fh if line.strip()}
        found[dataset] = names
    return found


def plan(
    preset: Preset,
    datasets: list[str],
    student: str | None = None,
    no_incontext_jobs: dict[str, str] | None = None,
    teachers_of: Mapping[str, Collection[str]] | None = None,
) -> list[Experiment]:
    """The grid of `preset` for `datasets` (inference-only, label-ft, lora, tinyllm, ablations, sweep).

    `teachers_of` (dataset -> teachers with rationales for it, see `rationale_teachers`) leaves a teacher
    out of the cells of a dataset it has no rationales for: TinyLLM there uses the others, its `w/o`
    cell is not planned (the report shows n/a), and with no teacher at all no TinyLLM cell is planned.
    """
    student = student or preset.student
    out: list[Experiment] = []
    for dataset in datasets:
        out += _dataset_grid(preset, dataset, student, no_incontext_jobs, teachers_of)
    wanted = preset.configurations
    return out if wanted is None else [e for e in out if e.label in wanted]


def _dataset_grid(
    preset: Preset,
    dataset: str,
    student: str,
    no_incontext_jobs: dict[str, str] | None,
    teachers_of: Mapping[str, Collection[str]] | None,
) -> list[Experiment]:
    """The cells of one dataset, in table order."""
    out: list[Experiment] = []

    def cfg(method: str, **extra: Any) -> TrainConfig:
        hyper = {**preset.hyperparameters, **extra.pop("hyper", {})}
        body = {
            "student": student,
            "method": method,
            "dataset": dataset,
            "limit": preset.train_limit,
            "hyperparameters": hyper,
            "filters": preset.filters,
            "eval": {"split": preset.eval_split, "limit": preset.eval_limit, **preset.eval},
            "model_name": f"exp-{preset.name}-{dataset}-{method}",
            "answer_format": preset.answer_format,
            **extra,
        }
        return TrainConfig.model_validate(body)

    teachers = [t for t in PAPER_TEACHERS if teachers_of is None or t in teachers_of.get(dataset, ())]
    out.append(Experiment(dataset, "inference-only", cfg("inference_only")))
    out.append(Experiment(dataset, "label-ft", cfg("label_ft")))
    out.append(
        Experiment(
            dataset,
            "lora",
            cfg("lora", lora=preset.lora, hyper={"learning_rate": preset.lora_learning_rate}),
        )
    )
    if not teachers:
        return out
    out.append(
        Experiment(dataset, "tinyllm", cfg("tinyllm", teachers=teachers, alpha=preset.alpha), preset.alpha)
    )
    for teacher in teachers if len(teachers) > 1 else []:
        rest = [t for t in teachers if t != teacher]
        out.append(Experiment(dataset, f"w/o {teacher}", cfg("tinyllm", teachers=rest, alpha=preset.alpha)))
    job = (no_incontext_jobs or {}).get(dataset)
    if job:
        out.append(
            Experiment(dataset, "w/o in-context", cfg("tinyllm", rationale_jobs=[job], alpha=preset.alpha))
        )
    if dataset in preset.sweep_datasets and preset.alpha_sweep:
        for alpha in preset.alpha_sweep:
            if alpha != preset.alpha:
                out.append(
                    Experiment(
                        dataset, f"alpha={alpha:g}", cfg("tinyllm", teachers=teachers, alpha=alpha), alpha
                    )
                )
    return out


def prepare_data(
    database_url: str, settings: Settings, datasets: list[str], splits: tuple[str, ...]
) -> list[str]:
    """Import the datasets' splits and the paper's rationales for them (idempotent) -> report lines."""
    from distillery.store.db import session_scope
    from distillery.store.examples import import_examples
    from distillery.store.rationales import import_rationale_file

    lines = []
    for dataset in datasets:
        with session_scope(database_url) as session:
            for split in splits:
                path = dataset_file(dataset, split, settings.datasets_dir)
                result = import_examples(session, dataset, split, load_jsonl(path), source=str(path))
                lines.append(f"{dataset}/{split}: {result.inserted} new examples ({path})")
        rationales = rationale_file(dataset, settings)
        if rationales is not None:
            with session_scope(database_url) as session:
                summary = import_rationale_file(session, rationales, dataset, "train")
            lines.append(
                f"{dataset}/train rationales: {summary.inserted} new of {summary.lines} ({rationales})"
            )
        else:
            lines.append(f"{dataset}: no paper rationales found; no TinyLLM configuration is planned")
    return lines


def per_question(predictions: str | None) -> dict[str, list[Any]]:
    """Question ids and per-question correctness (generation, and lm-eval acc_norm when scored) of a run's
    predictions file: what the report's paired comparisons are computed from."""
    path = Path(predictions) if predictions else None
    if path is None or not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out: dict[str, list[Any]] = {
        "question_ids": [r["id"] for r in rows],
        "correct": [bool(r["correct"]) for r in rows],
    }
    if rows and "acc_norm_predicted" in rows[0]:
        out["acc_norm_correct"] = [r["acc_norm_predicted"] == r["gold"] for r in rows]
    return out


def _result(exp: Experiment, row: m.TrainingRun) -> dict[str, Any]:
    return experiment_result(exp, row.metrics or {}, row.loss_curve or [], row.id, row.status, row.error)


def experiment_result(
    exp: Experiment,
    metrics: dict[str, Any],
    loss_curve: list[dict[str, Any]],
    run_id: str,
    status: str,
    error: str | None = None,
) -> dict[str, Any]:
    """One configuration's entry of results.json (what the report reads), from its run's metrics."""
    ev = metrics.get("eval") or {}
    return {
        **per_question(metrics.get("predictions")),
        "key": exp.key,
        "dataset": exp.dataset,
        "label": exp.label,
        "method": exp.config.method,
        "alpha": exp.alpha,
        "run_id": run_id,
        "status": status,
        "error": error,
        "n": ev.get("n"),
        "accuracy": ev.get("accuracy"),
        "stderr": ev.get("stderr"),
        "likelihood_accuracy": ev.get("likelihood_accuracy"),
        "calibrated_accuracy": ev.get("calibrated_accuracy"),
        "letter_distribution": ev.get("letter_distribution"),
        "gold_distribution": ev.get("gold_distribution"),
        "train_examples": metrics.get("train_examples"),
        "steps": metrics.get("steps"),
        "selected_step": metrics.get("selected_step"),
        "selection": metrics.get("selection"),
        "train_runtime_s": metrics.get("train_runtime_s"),
        "train_tokens_per_s": metrics.get("train_tokens_per_s"),
        "loss_curve": loss_curve,
        "model_id": metrics.get("model_id"),
    }


def run_grid(
    database_url: str,
    settings: Settings,
    experiments: list[Experiment],
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[Experiment, str, bool], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every experiment not finished yet (resuming interrupted ones); results in plan order."""
    from distillery.distill.runner import execute_run_in_process
    from distillery.store import runs as run_store
    from distillery.store.db import session_scope

    results = []
    for exp in experiments:
        with session_scope(database_url) as session:
            row, created = run_store.create_run(
                session, exp.config.model_dump(mode="json"), exp.idempotency_key()
            )
            if row.status in ("failed", "cancelled"):
                run_store.requeue(session, row.id)
            run_id, done = row.id, row.status == "completed"
        if not done:
            if on_start is not None:
                on_start(exp, run_id, created)
            execute_run_in_process(database_url, run_id, settings, progress_bar=True)
        with session_scope(database_url) as session:
            finished = run_store.get_run(session, run_id)
            if finished is None:
                raise KeyError(f"no training run {run_id}")
            result = _result(exp, finished)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def save_results(
    results: list[dict[str, Any]],
    out_dir: Path,
    preset: Preset,
    data_lines: list[str],
    student: str | None = None,
) -> Path:
    """results.json so far (written after every configuration, atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    body = {"preset": preset.name, "student": student, "data": data_lines, "results": results}
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(body, indent=2) + "\n")
    partial.replace(path)
    return path
