"""The paper's table at a size a machine can run: baselines, TinyLLM, ablations and an alpha sweep.

For each dataset: the student inference-only, label fine-tuning, LoRA on labels, TinyLLM with both
paper teachers, TinyLLM without each teacher (and without in-context examples when a rationale job
generated with in_context.strategy=none is given); on the sweep datasets, TinyLLM for each alpha.

Every configuration is an ordinary training run whose idempotency key is a hash of its config, so a
second invocation skips finished configurations, resumes an interrupted one from its checkpoint and
retries failed ones. All configurations of a dataset evaluate on the same first N questions of the
eval split (paired comparison).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from distillery.config import Settings
from distillery.datasets import dataset_file, load_jsonl
from distillery.distill.config import TrainConfig
from distillery.distill.runner import execute_run_in_process
from distillery.store import models as m
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery.store.examples import import_examples
from distillery.store.rationales import import_rationale_file

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
    hyperparameters: dict
    lora: dict = field(default_factory=lambda: {"r": 16, "alpha": 32})
    lora_learning_rate: float = 2e-4
    eval: dict = field(default_factory=dict)
    filters: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()


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


def plan(
    preset: Preset,
    datasets: list[str],
    student: str | None = None,
    no_incontext_jobs: dict[str, str] | None = None,
) -> list[Experiment]:
    """The grid of `preset` for `datasets` (inference-only, label-ft, lora, tinyllm, ablations, sweep)."""
    student = student or preset.student
    out: list[Experiment] = []
    for dataset in datasets:

        def cfg(method: str, dataset: str = dataset, **extra: object) -> TrainConfig:
            hyper = {**preset.hyperparameters, **extra.pop("hyper", {})}  # type: ignore[arg-type]
            body = {
                "student": student,
                "method": method,
                "dataset": dataset,
                "limit": preset.train_limit,
                "hyperparameters": hyper,
                "filters": preset.filters,
                "eval": {"split": preset.eval_split, "limit": preset.eval_limit, **preset.eval},
                "model_name": f"exp-{preset.name}-{dataset}-{method}",
                **extra,
            }
            return TrainConfig.model_validate(body)

        teachers = list(PAPER_TEACHERS)
        out.append(Experiment(dataset, "inference-only", cfg("inference_only")))
        out.append(Experiment(dataset, "label-ft", cfg("label_ft")))
        out.append(
            Experiment(
                dataset,
                "lora",
                cfg("lora", lora=preset.lora, hyper={"learning_rate": preset.lora_learning_rate}),
            )
        )
        out.append(
            Experiment(
                dataset, "tinyllm", cfg("tinyllm", teachers=teachers, alpha=preset.alpha), preset.alpha
            )
        )
        for teacher in teachers:
            rest = [t for t in teachers if t != teacher]
            out.append(
                Experiment(dataset, f"w/o {teacher}", cfg("tinyllm", teachers=rest, alpha=preset.alpha))
            )
        job = (no_incontext_jobs or {}).get(dataset)
        if job:
            out.append(
                Experiment(
                    dataset, "w/o in-context", cfg("tinyllm", rationale_jobs=[job], alpha=preset.alpha)
                )
            )
        if dataset in preset.sweep_datasets:
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
    lines = []
    for dataset in datasets:
        with session_scope(database_url) as session:
            for split in splits:
                path = dataset_file(dataset, split, settings.datasets_dir)
                result = import_examples(session, dataset, split, load_jsonl(path), source=str(path))
                lines.append(f"{dataset}/{split}: {result.inserted} new examples ({path})")
        for base in (settings.rationales_dir, Path(__file__).resolve().parents[1] / "data" / "rationales"):
            path = base / dataset / "train.jsonl"
            if path.is_file():
                with session_scope(database_url) as session:
                    summary = import_rationale_file(session, path, dataset, "train")
                lines.append(
                    f"{dataset}/train rationales: {summary.inserted} new of {summary.lines} ({path})"
                )
                break
        else:
            lines.append(f"{dataset}: no paper rationales found; TinyLLM configurations will be refused")
    return lines


def _result(exp: Experiment, row: m.TrainingRun) -> dict:
    metrics = row.metrics or {}
    ev = metrics.get("eval") or {}
    return {
        "key": exp.key,
        "dataset": exp.dataset,
        "label": exp.label,
        "method": exp.config.method,
        "alpha": exp.alpha,
        "run_id": row.id,
        "status": row.status,
        "error": row.error,
        "n": ev.get("n"),
        "accuracy": ev.get("accuracy"),
        "stderr": ev.get("stderr"),
        "likelihood_accuracy": ev.get("likelihood_accuracy"),
        "calibrated_accuracy": ev.get("calibrated_accuracy"),
        "letter_distribution": ev.get("letter_distribution"),
        "gold_distribution": ev.get("gold_distribution"),
        "train_examples": metrics.get("train_examples"),
        "steps": metrics.get("steps"),
        "train_runtime_s": metrics.get("train_runtime_s"),
        "train_tokens_per_s": metrics.get("train_tokens_per_s"),
        "loss_curve": row.loss_curve or [],
        "model_id": metrics.get("model_id"),
    }


def run_grid(
    database_url: str,
    settings: Settings,
    experiments: list[Experiment],
    on_result: Callable[[dict], None] | None = None,
    on_start: Callable[[Experiment, str, bool], None] | None = None,
) -> list[dict]:
    """Run every experiment not finished yet (resuming interrupted ones); results in plan order."""
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
            result = _result(exp, run_store.get_run(session, run_id))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def save_results(
    results: list[dict], out_dir: Path, preset: Preset, data_lines: list[str], student: str | None = None
) -> Path:
    """results.json so far (written after every configuration, atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    body = {"preset": preset.name, "student": student, "data": data_lines, "results": results}
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(body, indent=2) + "\n")
    partial.replace(path)
    return path
