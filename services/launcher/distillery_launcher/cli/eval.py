"""`distillery eval MODEL`: accuracy of a student on a dataset split, with per-question predictions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distillery_launcher.cli.common import fail, services
from distillery.config import get_settings
from distillery.datasets import SPLITS, DatasetError, dataset_file, load_jsonl
from distillery.records import Example


def _examples(dataset: str, split: str, limit: int | None) -> list[Example]:
    """The split from the datasets folder (or vendored sample), else from the database."""
    settings = get_settings()
    try:
        examples = load_jsonl(dataset_file(dataset, split, settings.datasets_dir))
    except DatasetError as exc:
        fail(str(exc))
    except FileNotFoundError:
        from distillery.store.db import session_scope
        from distillery.store.examples import load_examples

        with services(settings) as urls, session_scope(urls.database_url) as session:
            examples = [ex for _, ex in load_examples(session, dataset, split)]
        if not examples:
            fail(
                f"--dataset '{dataset}' has no '{split}' split in {settings.datasets_dir} or in the database"
            )
    return examples[:limit] if limit else examples


def _model_dir(model: str) -> Path:
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
            f"MODEL '{model}' is not a known name ({', '.join(KNOWN_MODELS)}), an HF model directory, "
            "or a registered model id/name"
        )
    return resolve_model(found, progress=lambda line: typer.echo(line, err=True))


def eval_command(
    model: str = typer.Argument(..., help="Registry id/name, known model name, or HF model directory."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset name (e.g. arc, pubmedqa)."),
    split: str = typer.Option("dev", "--split", help=f"One of {', '.join(SPLITS)}."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N questions only."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    max_input_tokens: int = typer.Option(512, "--max-input-tokens", min=8),
    likelihood: bool = typer.Option(
        True, "--likelihood/--no-likelihood", help="Also score options by likelihood."
    ),
    calibrate: bool = typer.Option(
        True, "--calibrate/--no-calibrate", help="Calibrate against a content-free prompt."
    ),
    explain: int = typer.Option(
        0, "--explain", min=0, help="Ask for explanations of N questions (teacher prefixes)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Predictions JSONL (default: beside the metrics)."
    ),
) -> None:
    """Generate an answer per question, map it to an option, report accuracy and the letter distribution."""
    if split not in SPLITS:
        fail(f"--split '{split}' is not accepted (accepted: {', '.join(SPLITS)})")
    examples = _examples(dataset, split, limit)
    path = _model_dir(model)

    from tqdm import tqdm
    from transformers import AutoTokenizer

    from distillery.distill.encoding import StudentEncoder
    from distillery.distill.evaluate import EvalOptions, evaluate, load_for_eval
    from distillery.distill.export import STUDENT_INFO
    from distillery.rationales.prompts import teacher_prefix

    info_file = path / STUDENT_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    prefixes = info.get("teacher_prefixes") or {
        name: teacher_prefix(name) for name in ("flan-t5-xl", "llama-2-7b-chat")
    }
    student, seq2seq = load_for_eval(path)
    encoder = StudentEncoder(
        AutoTokenizer.from_pretrained(str(path)), seq2seq, info.get("max_input_tokens", max_input_tokens)
    )
    options = EvalOptions(batch_size, max_new_tokens, likelihood, calibrate and likelihood, explain)
    with tqdm(total=len(examples), unit="q", desc=f"eval {dataset}/{split}") as bar:
        result = evaluate(student, encoder, examples, options, prefixes, progress=bar.update)
    target = output or get_settings().artifacts / "eval" / f"{path.name}-{dataset}-{split}.jsonl"
    result.write_predictions(target)
    typer.echo(
        json.dumps({"model": str(path), "dataset": dataset, "split": split, **result.metrics}, indent=2)
    )
    typer.echo(f"predictions: {target}", err=True)
