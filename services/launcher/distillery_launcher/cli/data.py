"""`distillery data`: import and inspect datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from distillery_launcher.cli.common import fail, services
from distillery.config import get_settings
from distillery.datasets import SPLITS, DatasetError, dataset_file, load_jsonl
from distillery.store import examples as ex_store
from distillery.store.db import session_scope

app = typer.Typer(help="Import and inspect multiple-choice datasets.", no_args_is_help=True)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        fail(f"--split '{split}' is not accepted (accepted: {', '.join(SPLITS)})")


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
