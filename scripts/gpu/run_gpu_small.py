"""Run the `gpu-small` experiments preset on an offline GPU host: no PostgreSQL, no Redis, no Celery.

The host needs Python >= 3.11 with torch, transformers (and accelerate, which its Trainer needs), numpy
and pydantic >= 2; peft only for LoRA configurations (gpu-small has none), matplotlib only for the PNG
plots. It needs none of distillery's other dependencies and none of its model packages: the student
comes as a converted HF directory, the data as JSON Lines, and distillery's own source comes along.

On the machine with the repository (its venv active):

    python scripts/gpu/export_student.py --model smollm2-135m --out /tmp/gpu-ship --shared ../shared

/tmp/gpu-ship then holds model/ (safetensors cut into parts of at most 60 MiB), parts.json,
join_parts.py, this script, distillery/ (the package source, picked up from beside this script before
any installed copy), shared/{datasets,rationales}/ for the preset's datasets (OBQA, ARC, RiddleSense:
keep the folder outside the repository, RiddleSense must never enter it) and vendor/ (this machine's
pydantic, used only where the host has none and its Python is the same minor version). Copy the folder
to the host, then there:

    cd gpu-ship
    python join_parts.py                                  # rebuilds model/*.safetensors, checks SHA-256
    python run_gpu_small.py --model model --shared shared --out report

report/ gets results.json (every configuration's metrics, per-question correctness and the paired
comparisons against label fine-tuning), results.md (the experiments report: accuracy table, paired
McNemar tests and bootstrap CIs, training table), the PNG plots when matplotlib is there, and
predictions/<dataset>-<configuration>.jsonl. Progress goes to stdout.

Each configuration of the preset (inference-only, label-ft, tinyllm with both paper teachers) is built
by `distillery.distill.experiments.plan`, its training rows by `distill.multitask` (the builder the
database path uses), trained by `distill.trainer.DistillTrainer` with `MultiTaskCollator`, and scored by
`distill.evaluate` on the same dev questions as every other configuration of its dataset. Nothing is
checkpointed: an interrupted run starts over. A CPU smoke run of the same path:

    python run_gpu_small.py --model model --shared shared --out /tmp/smoke --device cpu --precision fp32 \\
        --limit-train 8 --limit-eval 8 --max-steps 2 --datasets arc
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
# Beside this script: the distillery source and the vendored pydantic an export ships with it.
if (HERE / "distillery" / "__init__.py").is_file():
    sys.path.insert(0, str(HERE))
if (HERE / "vendor").is_dir():
    sys.path.append(str(HERE / "vendor"))  # last: whatever the host has installed wins

# Nothing is ever fetched from a hub.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")

NEEDED = ("torch", "transformers", "accelerate", "numpy", "pydantic")

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

    from distillery.distill.config import TrainConfig
    from distillery.distill.encoding import StudentEncoder
    from distillery.distill.experiments import Experiment, Preset
    from distillery.distill.multitask import ResolvedRun
    from distillery.rationales.exchange import RationaleLine
    from distillery.records import Example


def missing_modules(names: Sequence[str] = NEEDED) -> list[str]:
    """The modules of `names` that do not import here (pydantic 1 counts as missing)."""
    import importlib

    missing = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # an incompatible build fails with more than ImportError
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        if name == "pydantic" and not str(getattr(module, "VERSION", "2")).startswith("2"):
            missing.append(f"pydantic (found {module.VERSION}, need 2.x)")
    return missing


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="the student as an HF model directory")
    parser.add_argument(
        "--shared", type=Path, required=True, help="folder with datasets/<name>/ and rationales/<name>/"
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder (created)")
    parser.add_argument("--preset", default="gpu-small", help="experiments preset (default gpu-small)")
    parser.add_argument("--datasets", help="comma-separated subset of the preset's datasets")
    parser.add_argument("--limit-train", type=int, help="train on the first N questions (default: all)")
    parser.add_argument("--limit-eval", type=int, help="score the first N dev questions (default: all)")
    parser.add_argument("--max-steps", type=int, help="stop training after N optimiser steps")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), help="training precision (default: preset's)"
    )
    parser.add_argument("--student-name", help="the student's name in the report (default: from parts.json)")
    parser.add_argument("--export-models", type=Path, help="also write each trained student to DIR/<config>/")
    args = parser.parse_args(argv)
    for flag in ("limit_train", "limit_eval", "max_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json (run join_parts.py first?)")
    if args.precision is None and args.device == "cpu":
        args.precision = "fp32"  # bf16 is far slower than fp32 on CPUs
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetData:
    """A dataset's training and eval questions and its paper rationales, as read from the files."""

    name: str
    train: list[Example]
    evals: list[Example]
    rationales: list[RationaleLine]  # of the train split; `example_row` indexes `train`
    lines: list[str]  # what was read, for the report

    @property
    def teachers(self) -> set[str]:
        return {line.teacher for line in self.rationales}


def load_data(name: str, shared: Path, eval_split: str) -> DatasetData:
    """The dataset's train and eval splits and the paper's train rationales, read as the store reads them."""
    from distillery.datasets import dataset_file, load_jsonl
    from distillery.distill.experiments import rationale_path
    from distillery.rationales.exchange import ImportTarget, parse_rationale_file

    datasets_dir = shared / "datasets"
    train_path = dataset_file(name, "train", datasets_dir)
    eval_path = dataset_file(name, eval_split, datasets_dir)
    train, evals = load_jsonl(train_path), load_jsonl(eval_path)
    lines = [f"{name}/train: {len(train)} examples ({train_path})"]
    lines.append(f"{name}/{eval_split}: {len(evals)} examples ({eval_path})")
    for path in (train_path, eval_path):
        if shared.resolve() not in path.resolve().parents:
            log(f"WARNING: {name}: {path} is distillery's vendored sample, not a file of --shared {shared}")
    rationales: list[RationaleLine] = []
    found = rationale_path(name, shared / "rationales")
    if found is None:
        lines.append(f"{name}: no paper rationales found; no TinyLLM configuration is planned")
    else:
        target = ImportTarget(name, "train", 0, {ex.id: (i, ex) for i, ex in enumerate(train)}, {})
        rationales = parse_rationale_file(found.read_bytes(), str(found), target)
        lines.append(f"{name}/train rationales: {len(rationales)} lines ({found})")
    return DatasetData(name, train, evals, rationales, lines)


def resolve_offline(cfg: TrainConfig, data: DatasetData) -> ResolvedRun:
    """`checks.resolve_run` for a config over files: its teachers as tasks, the questions it uses."""
    from distillery.distill.multitask import ConfigError, ResolvedRun, rationale_passes, teacher_tasks

    if cfg.rationale_jobs:
        raise ConfigError("rationale_jobs", "rationale jobs live in the database; the offline run has none")
    if cfg.eval.select_every is not None:
        raise ConfigError("eval.select_every", "model selection is not supported by the offline run")
    train_examples = min(len(data.train), cfg.limit or len(data.train))
    eval_examples = min(len(data.evals), cfg.eval.limit or len(data.evals))
    if not cfg.uses_teachers:
        return ResolvedRun(cfg, 0, (), (), train_examples, eval_examples, cfg.student)
    ids = {name: i for i, name in enumerate(sorted(data.teachers), start=1)}
    usable = {name: 0 for name in ids}
    for line in data.rationales:
        usable[line.teacher] += rationale_passes(line.truncated, line.agrees, cfg.filters)
    names = cfg.teachers if cfg.teachers is not None else [n for n in sorted(ids) if usable[n]]
    if not names:
        raise ConfigError("teachers", f"no usable rationales for {data.name}/train")
    for name in names:
        if not usable.get(name):
            raise ConfigError("teachers", f"teacher '{name}' has no usable rationales for {data.name}/train")
    missing = set(cfg.alphas) - set(names)
    if missing:
        raise ConfigError("alphas", f"names {sorted(missing)} are not teachers of this run ({names})")
    teachers = teacher_tasks(cfg, [(name, ids[name], None) for name in names])
    return ResolvedRun(cfg, 0, (), teachers, train_examples, eval_examples, cfg.student)


def training_rows(run: ResolvedRun, data: DatasetData, encoder: StudentEncoder) -> list[dict[str, Any]]:
    """The run's training rows, as `distill.tasks.encode_rows` builds them from the database."""
    from distillery.distill.multitask import (
        add_rationale,
        encode_row,
        example_tasks,
        rationale_passes,
        taught_teachers,
    )

    cfg = run.config
    teachers = taught_teachers(run)
    by_name = {t.name: t for t in teachers}
    texts: dict[tuple[int, int], list[str]] = {}
    for line in data.rationales:  # file order: a teacher's samples for an example in order
        teacher = by_name.get(line.teacher)
        if teacher is not None and rationale_passes(line.truncated, line.agrees, cfg.filters):
            add_rationale(
                texts.setdefault((line.example_row, teacher.teacher_id), []), line.text, cfg.filters
            )
    rows = []
    for i, example in enumerate(data.train[: run.train_examples]):
        found = [(t, texts.get((i, t.teacher_id), [])) for t in teachers]
        rows.append(encode_row(example.id, example_tasks(example, cfg, found), encoder))
    return rows


# --- one configuration --------------------------------------------------------------------------------


def _progress_callback(label: str) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here (pyproject)
        """Prints each logged loss; keeps the Trainer from writing checkpoints (nothing resumes this run)."""

        def __init__(self) -> None:
            self.started = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                parts = [
                    f"{k}={float(v):.4g}" for k, v in logs.items() if k == "loss" or k.startswith("loss_")
                ]
                step, elapsed = f"{state.global_step}/{state.max_steps}", time.monotonic() - self.started
                log(f"  {label}: step {step} {' '.join(parts)} ({elapsed:.0f} s)")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            control.should_save = False

    return Progress()


def train(
    exp: Experiment, run: ResolvedRun, encoder: StudentEncoder, rows: list[dict[str, Any]], model_dir: Path
) -> tuple[nn.Module, list[dict[str, float]], dict[str, Any]]:
    """`runner._train` without the database: the trained model, its loss curve and training metrics."""
    from transformers.trainer_callback import PrinterCallback

    from distillery.distill.collator import MultiTaskCollator
    from distillery.distill.trainer import (
        DistillTrainer,
        curve_point,
        load_student,
        precision,
        training_arguments,
        with_lora,
        with_schedule,
    )

    cfg = exp.config
    with tempfile.TemporaryDirectory(prefix="gpu-small-") as work:
        args = with_schedule(training_arguments(cfg, Path(work) / "checkpoints"), cfg, len(rows))
        model: nn.Module = load_student(model_dir, encoder.seq2seq)
        if cfg.lora is not None:
            model = with_lora(model, cfg.lora, encoder.seq2seq)
        trainer = DistillTrainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=MultiTaskCollator(encoder.tokenizer.pad_token_id),
            task_names=run.task_names,
            weights=run.weights,
            causal=not encoder.seq2seq,
            callbacks=[_progress_callback(exp.key)],
        )
        trainer.remove_callback(PrinterCallback)  # the progress callback prints the losses
        result = trainer.train()
    curve = [curve_point(int(e["step"]), e) for e in trainer.state.log_history if "loss" in e]
    runtime = result.metrics.get("train_runtime") or 0.0
    tokens = sum(r["num_tokens"] for r in rows)
    metrics: dict[str, Any] = {
        "train_examples": len(rows),
        "lr_scheduler": str(args.lr_scheduler_type.value),
        "train_tokens_per_epoch": tokens,
        "steps": trainer.state.global_step,
        "final_loss": curve[-1]["loss"] if curve else None,
        "train_runtime_s": round(runtime, 2),
        "precision": precision(cfg),
        "resumed_from_step": None,
    }
    if runtime:
        metrics["train_tokens_per_s"] = round(tokens * (trainer.state.epoch or 0.0) / runtime, 1)
    trained: nn.Module = trainer.model
    del trainer
    return trained, curve, metrics


def run_experiment(
    exp: Experiment, data: DatasetData, model_dir: Path, out: Path, export_dir: Path | None
) -> dict[str, Any]:
    """Train (unless inference-only) and evaluate one configuration -> its results.json entry."""
    import torch

    from distillery.distill.encoding import load_encoder
    from distillery.distill.evaluate import eval_options, evaluate
    from distillery.distill.experiments import experiment_result
    from distillery.distill.export import export_model, merged
    from distillery.distill.trainer import load_student
    from distillery.rationales.prompts import ANSWER_PREFIX, TEMPLATE_VERSION

    cfg, hp = exp.config, exp.config.hyperparameters
    run = resolve_offline(cfg, data)
    encoder = load_encoder(model_dir, hp.max_input_tokens, hp.max_target_tokens)
    metrics: dict[str, Any] = {"tasks": run.task_names, "weights": run.weights}
    curve: list[dict[str, float]] = []
    started = time.monotonic()
    model: PreTrainedModel
    if cfg.trains:
        rows = training_rows(run, data, encoder)
        tasks = sum(len(r["task_ids"]) for r in rows)
        log(f"{exp.key}: training on {len(rows)} questions ({tasks} tasks: {', '.join(run.task_names)})")
        trained, curve, found = train(exp, run, encoder, rows, model_dir)
        metrics.update(found)
        if export_dir is not None:
            info = {
                "run_id": f"offline-{exp.key}",
                "method": cfg.method,
                "base_model": cfg.student,
                "answer_prefix": ANSWER_PREFIX,
                "answer_format": cfg.answer_format,
                "teacher_prefixes": {t.name: t.prefix for t in run.teachers},
                "template_version": TEMPLATE_VERSION,
            }
            model = export_model(trained, encoder.tokenizer, encoder, export_dir / _slug(exp), info)
        else:
            model = merged(trained)
            model.config.use_cache = True  # as `export_model` leaves it: the Trainer may have turned it off
    else:
        model = merged(load_student(model_dir, encoder.seq2seq))
    if torch.cuda.is_available():
        model = model.to("cuda")
    examples = data.evals[: run.eval_examples]
    done = [0]

    def progress(n: int) -> None:
        before, done[0] = done[0], done[0] + n
        if done[0] == len(examples) or before * 10 // len(examples) != done[0] * 10 // len(examples):
            log(f"  {exp.key}: scored {done[0]}/{len(examples)} {cfg.eval.split} questions")

    prefixes = {t.name: t.prefix for t in run.teachers}
    result = evaluate(model, encoder, examples, eval_options(cfg), prefixes, progress=progress)
    predictions = out / "predictions" / f"{_slug(exp)}.jsonl"
    result.write_predictions(predictions)
    metrics["eval"] = {"split": cfg.eval.split, **result.metrics}
    metrics["predictions"] = str(predictions)
    metrics["wall_s"] = round(time.monotonic() - started, 1)
    del model
    return {
        **experiment_result(exp, metrics, curve, f"offline-{exp.key}", "completed"),
        "wall_s": metrics["wall_s"],
    }


def _slug(exp: Experiment) -> str:
    return f"{exp.dataset}-{exp.label}".replace("/", "_").replace(" ", "_")


def failed_result(exp: Experiment, error: str) -> dict[str, Any]:
    from distillery.distill.experiments import experiment_result

    return experiment_result(exp, {}, [], f"offline-{exp.key}", "failed", error)


# --- the grid and the report --------------------------------------------------------------------------


def configure(args: argparse.Namespace) -> tuple[Preset, list[str]]:
    """The preset with the command line's overrides (noted in the report), and the datasets to run."""
    from distillery.distill.experiments import PRESETS

    if args.preset not in PRESETS:
        raise SystemExit(f"--preset {args.preset!r}: unknown (accepted: {', '.join(PRESETS)})")
    preset = PRESETS[args.preset]
    names = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else []
    unknown = sorted(set(names) - set(preset.datasets))
    if unknown:
        raise SystemExit(
            f"--datasets {unknown}: not datasets of preset {preset.name} {list(preset.datasets)}"
        )
    hyper = dict(preset.hyperparameters)
    overrides = []
    if args.max_steps is not None:
        hyper["max_steps"] = args.max_steps
        overrides.append(f"max_steps={args.max_steps}")
    if args.precision is not None and args.precision != hyper.get("precision"):
        hyper["precision"] = args.precision
        overrides.append(f"precision={args.precision}")
    train_limit, eval_limit = preset.train_limit, preset.eval_limit
    if args.limit_train is not None:
        train_limit = args.limit_train
        overrides.append(f"first {train_limit} training questions")
    if args.limit_eval is not None:
        eval_limit = args.limit_eval
        overrides.append(f"first {eval_limit} {preset.eval_split} questions")
    if names and names != list(preset.datasets):
        overrides.append(f"datasets {', '.join(names)}")
    notes = preset.notes
    if overrides:
        notes = (
            *notes,
            "Overridden on the command line (the notes above describe the full preset): "
            + "; ".join(overrides)
            + ".",
        )
    notes = (*notes, "Run offline by scripts/gpu/run_gpu_small.py (JSON Lines data, no database).")
    preset = replace(
        preset, train_limit=train_limit, eval_limit=eval_limit, hyperparameters=hyper, notes=notes
    )
    return preset, names or list(preset.datasets)


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    import distillery

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "distillery": str(Path(distillery.__file__).resolve().parent),
        "device": device,
    }
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
        found["bf16"] = torch.cuda.is_bf16_supported()
    return found


def write_report(
    out: Path,
    preset: Preset,
    student: str,
    data_lines: list[str],
    results: list[dict[str, Any]],
    minutes: float,
    env: dict[str, Any],
) -> None:
    """results.json, results.md and (with matplotlib) the PNG plots of the experiments report."""
    from distillery.distill.report import markdown, paired_comparisons, plots

    body = {
        "preset": preset.name,
        "student": student,
        "minutes": round(minutes, 2),
        "data": data_lines,
        "environment": env,
        "results": results,
        "paired_vs_label_ft": paired_comparisons(results, baseline="label-ft"),
    }
    partial = out / "results.json.partial"
    partial.write_text(json.dumps(body, indent=2) + "\n")
    partial.replace(out / "results.json")
    text = markdown(results, preset, student, data_lines, minutes)
    lines = ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "## Wall time per configuration (s, training + evaluation)", ""]
    lines += [f"- {r['key']}: {r.get('wall_s', '-')} ({r['status']})" for r in results]
    (out / "results.md").write_text(text + "\n".join(lines) + "\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed: no PNG plots")
        return
    plots(results, out)


def student_label(args: argparse.Namespace) -> str:
    """The student's name for the report: --student-name, else what parts.json says was exported."""
    if args.student_name:
        return str(args.student_name)
    manifest = args.model.resolve().parent / "parts.json"
    if manifest.is_file():
        name = json.loads(manifest.read_text()).get("model")
        if name:
            return f"{name} ({args.model})"
    return str(args.model)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    missing = missing_modules()
    if missing:
        print("run_gpu_small.py needs these Python modules: " + "; ".join(missing), file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no GPU (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    from distillery.distill.experiments import plan, save_results

    started = time.monotonic()
    preset, names = configure(args)
    env = environment(args.device)
    log(f"distillery from {env['distillery']}; torch {env['torch']} on {env.get('gpu', 'cpu')}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = {name: load_data(name, args.shared, preset.eval_split) for name in names}
    data_lines = [line for d in data.values() for line in d.lines]
    for line in data_lines:
        log(line)
    student = student_label(args)
    teachers_of = {name: d.teachers for name, d in data.items()}
    grid = plan(preset, names, str(args.model.resolve()), teachers_of=teachers_of)
    log(f"preset {preset.name}: {len(grid)} configurations: {', '.join(e.key for e in grid)}")
    results: list[dict[str, Any]] = []
    for i, exp in enumerate(grid, start=1):
        log(f"[{i}/{len(grid)}] {exp.key} ({exp.config.method})")
        try:
            result = run_experiment(exp, data[exp.dataset], args.model, out, args.export_models)
        except Exception as exc:
            traceback.print_exc()
            result = failed_result(exp, f"{type(exc).__name__}: {exc}")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        results.append(result)
        save_results(results, out, preset, data_lines, student)
        acc = result.get("accuracy")
        shown = "-" if acc is None else f"{100 * acc:.1f}%"
        lik = result.get("likelihood_accuracy")
        shown += "" if lik is None else f" (acc_norm {100 * lik:.1f}%)"
        log(f"{exp.key}: {result['status']} accuracy {shown}")
    minutes = (time.monotonic() - started) / 60
    write_report(out, preset, student, data_lines, results, minutes, env)
    for c in (c for c in json.loads((out / "results.json").read_text())["paired_vs_label_ft"]):
        low, high = c["ci95"]
        log(
            f"{c['dataset']} {c['score']}: {c['a']} - {c['b']} = {100 * c['difference']:+.1f} points "
            f"[{100 * low:+.1f}, {100 * high:+.1f}], McNemar p {c['mcnemar_p']:.3g}"
        )
    log(f"report: {out / 'results.md'} ({minutes:.1f} min)")
    return 0 if all(r["status"] == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
