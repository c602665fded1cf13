"""`distillery eval MODEL`: accuracy of a student on a dataset split, with per-question predictions;
with `--compare OTHER`, both models on the same questions and their paired statistics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from distillery.config import get_settings
from distillery.datasets import SPLITS
from distillery.rationales.prompts import ANSWER_FORMATS
from distillery.records import Example
from distillery_launcher.cli.common import fail, require_choice, services
from distillery_launcher.cli.data import split_examples

if TYPE_CHECKING:
    from distillery.distill.evaluate import EvalOptions, EvalResult

# Per-question prediction key of each score compared with `--compare`, and its name in the output.
PAIRED_SCORES = {
    "accuracy": "predicted",
    "acc": "acc_predicted",
    "acc_norm": "acc_norm_predicted",
    "calibrated_accuracy": "calibrated_predicted",
}


def _model_dir(model: str, param: str = "MODEL") -> Path:
    """A known name, an HF dir, or a registry id/name -> the model directory (converted if needed)."""
    from distillery.distill.checks import locate_student
    from distillery.modelhub import resolve_model

    found = locate_student(None, model)
    if found is None:
        from distillery.store.db import session_scope

        with services() as urls, session_scope(urls.database_url) as session:
            found = locate_student(session, model)
    if found is None:
        from distillery.modelhub import KNOWN_MODELS

        fail(
            f"{param} '{model}' is not a known name ({', '.join(KNOWN_MODELS)}), an HF model directory, "
            "or a registered model id/name"
        )
    return resolve_model(found, progress=lambda line: typer.echo(line, err=True))


def _evaluate(
    path: Path,
    examples: list[Example],
    options: EvalOptions,
    max_input_tokens: int,
    label: str,
    answer_format: str | None = None,
) -> EvalResult:
    """The student at `path` evaluated on `examples`, prompted as its trainer prompted it."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from distillery.distill.encoding import StudentEncoder
    from distillery.distill.evaluate import evaluate, load_for_eval
    from distillery.distill.export import STUDENT_INFO
    from distillery.rationales.prompts import teacher_prefix

    info_file = path / STUDENT_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    prefixes = info.get("teacher_prefixes") or {
        name: teacher_prefix(name) for name in ("flan-t5-xl", "llama-2-7b-chat")
    }
    # As trained unless asked: the export records it; a model exported before the choice had `(b) text`.
    chosen = answer_format or info.get("answer_format", "letter_text")
    options = replace(options, answer_format="option_text" if chosen == "option_text" else "letter_text")
    student, seq2seq = load_for_eval(path)
    encoder = StudentEncoder(
        AutoTokenizer.from_pretrained(str(path)),
        seq2seq,
        info.get("max_input_tokens", max_input_tokens),
        use_chat_template=bool(info.get("chat_template", True)),
    )
    with tqdm(total=len(examples), unit="q", desc=label) as bar:
        return evaluate(student, encoder, examples, options, prefixes, progress=bar.update)


def paired_statistics(a: list[dict], b: list[dict]) -> dict:
    """For each score both prediction lists carry: the paired table, McNemar p and bootstrap CI (A - B)."""
    from distillery.distill.stats import compare

    if [row["id"] for row in a] != [row["id"] for row in b]:
        raise ValueError("paired statistics need both models' predictions on the same questions")
    out = {}
    for name, key in PAIRED_SCORES.items():
        if a and key in a[0] and key in b[0]:
            out[name] = compare(
                [row[key] == row["gold"] for row in a], [row[key] == row["gold"] for row in b]
            )
    return out


def eval_command(
    model: str = typer.Argument(..., help="Registry id/name, known model name, or HF model directory."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset name (e.g. arc, pubmedqa)."),
    split: str = typer.Option("dev", "--split", help=f"One of {', '.join(SPLITS)}."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N questions only."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    max_input_tokens: int = typer.Option(512, "--max-input-tokens", min=8),
    likelihood: bool = typer.Option(
        True, "--likelihood/--no-likelihood", help="Also score options by log-likelihood (acc, acc_norm)."
    ),
    calibrate: bool = typer.Option(
        True, "--calibrate/--no-calibrate", help="Calibrate against a content-free prompt."
    ),
    explain: int = typer.Option(
        0, "--explain", min=0, help="Ask for explanations of N questions (teacher prefixes)."
    ),
    compare: str | None = typer.Option(
        None,
        "--compare",
        help="A second model (same forms as MODEL), evaluated on the same questions; reports the paired "
        "table, exact McNemar p and bootstrap 95 % CI of MODEL minus it.",
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Predictions JSONL (default: beside the metrics)."
    ),
    answer_format: str | None = typer.Option(
        None,
        "--answer-format",
        help="Form of the options scored by likelihood: option_text or letter_text (default: as the "
        "model was trained, from its export; letter_text for other models).",
    ),
) -> None:
    """Generate an answer per question, map it to an option, report accuracy, acc, acc_norm and the
    letter distribution."""
    from distillery.distill.evaluate import EvalOptions

    if split not in SPLITS:
        fail(f"--split '{split}' is not accepted (accepted: {', '.join(SPLITS)})")
    examples = split_examples(dataset, split, limit, param="--dataset")
    path = _model_dir(model)
    other = _model_dir(compare, "--compare") if compare else None
    if answer_format is not None:
        require_choice("--answer-format", answer_format, list(ANSWER_FORMATS))
    options = EvalOptions(batch_size, max_new_tokens, likelihood, calibrate and likelihood, explain)
    result = _evaluate(path, examples, options, max_input_tokens, f"eval {dataset}/{split}", answer_format)
    target = output or get_settings().artifacts / "eval" / f"{path.name}-{dataset}-{split}.jsonl"
    result.write_predictions(target)
    report: dict = {"model": str(path), "dataset": dataset, "split": split, **result.metrics}
    if other is not None:
        second = _evaluate(other, examples, options, max_input_tokens, f"eval {other.name}", answer_format)
        other_target = target.with_name(f"{target.stem}-compare-{other.name}.jsonl")
        second.write_predictions(other_target)
        report["compare"] = {
            "model": str(other),
            **second.metrics,
            "paired": paired_statistics(result.predictions, second.predictions),
        }
        typer.echo(f"predictions of {other.name}: {other_target}", err=True)
    typer.echo(json.dumps(report, indent=2))
    typer.echo(f"predictions: {target}", err=True)
