"""`distillery data`: import and inspect datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from distillery.config import get_settings
from distillery.datasets import SPLITS, DatasetError, dataset_file, load_jsonl
from distillery.records import Example
from distillery.store import examples as ex_store
from distillery.store.db import session_scope
from distillery_launcher.cli.common import fail, services

app = typer.Typer(help="Import and inspect multiple-choice datasets.", no_args_is_help=True)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        fail(f"--split '{split}' is not accepted (accepted: {', '.join(SPLITS)})")


def split_examples(
    dataset: str, split: str, limit: int | None = None, param: str = "DATASET"
) -> list[Example]:
    """The split from the datasets folder (or vendored sample), else from the database; `param` names
    the dataset argument in the error."""
    _check_split(split)
    settings = get_settings()
    try:
        examples = load_jsonl(dataset_file(dataset, split, settings.datasets_dir))
    except DatasetError as exc:
        fail(str(exc))
    except FileNotFoundError:
        with services(settings) as urls, session_scope(urls.database_url) as session:
            examples = [ex for _, ex in ex_store.load_examples(session, dataset, split)]
        if not examples:
            fail(f"{param} '{dataset}' has no '{split}' split in {settings.datasets_dir} or in the database")
    return examples[:limit] if limit else examples


@app.command("import")
def import_file(
    path: Path = typer.Argument(..., help="JSON Lines file in the ../shared/datasets format."),
    name: str = typer.Option(..., "--name", help="Dataset name to store the examples under."),
    split: str = typer.Option("train", "--split", help=f"One of {', '.join(SPLITS)}."),
) -> None:
    """Validate PATH whole, then store it (idempotent: a re-import changes nothing)."""
    _check_split(split)
    try:
        examples = load_jsonl(path)
    except FileNotFoundError as exc:
        fail(str(exc))
    except DatasetError as exc:
        fail(f"{path} rejected, nothing imported.\n{exc}")
    with services() as urls, session_scope(urls.database_url) as session:
        result = ex_store.import_examples(session, name, split, examples, source=str(path))
    typer.echo(
        f"{name}/{split}: {len(examples)} examples "
        f"({result.inserted} new, {result.updated} updated, {result.unchanged} unchanged)"
    )


@app.command("import-shared")
def import_shared(
    names: list[str] = typer.Argument(..., help="Dataset names, e.g. arc pubmedqa."),
    splits: str = typer.Option("train,dev", help="Comma-separated splits."),
) -> None:
    """Import named datasets from the shared datasets folder (or the vendored samples)."""
    settings = get_settings()
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    for split in wanted:
        _check_split(split)
    jobs = []
    for name in names:
        for split in wanted:
            try:
                path = dataset_file(name, split, settings.datasets_dir)
                jobs.append((name, split, path, load_jsonl(path)))
            except (FileNotFoundError, DatasetError) as exc:
                fail(f"{name}/{split}: {exc}")
    with services() as urls, session_scope(urls.database_url) as session:
        for name, split, path, examples in jobs:
            r = ex_store.import_examples(session, name, split, examples, source=str(path))
            typer.echo(f"{name}/{split}: {len(examples)} examples ({r.inserted} new, {r.updated} updated)")


@app.command("list")
def list_datasets() -> None:
    """Stored datasets with their example counts per split."""
    with services() as urls, session_scope(urls.database_url) as session:
        rows = ex_store.split_counts(session)
    if not rows:
        typer.echo("no datasets imported yet (try: distillery data import-shared arc)")
    for name, split, count in rows:
        typer.echo(f"{name:<12} {split:<6} {count:>7}")


@app.command("export-lm-eval")
def export_lm_eval(
    dataset: str = typer.Argument(..., help="Dataset name (e.g. arc, obqa)."),
    split: str = typer.Option("dev", "--split", help=f"One of {', '.join(SPLITS)}."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the task YAML and its JSONL."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N questions only."),
) -> None:
    """Write DATASET's split as an lm-evaluation-harness task that loads offline.

    Run it with: lm_eval --include_path DIR --tasks TASK --model hf --model_args pretrained=MODEL_DIR
    """
    from distillery.lm_eval_export import export_task

    examples = split_examples(dataset, split, limit)
    if output.exists() and not output.is_dir():
        fail(f"--output '{output}' exists and is not a folder")
    task = export_task(examples, dataset, split, output)
    typer.echo(f"{task.name}: {task.n} questions -> {task.yaml_path} (documents {task.docs_path})")
    typer.echo(
        f"run: lm_eval --include_path {output} --tasks {task.name} --model hf "
        "--model_args pretrained=MODEL_DIR",
        err=True,
    )
