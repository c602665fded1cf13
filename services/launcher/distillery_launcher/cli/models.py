"""`distillery models`: turn the PyPI-shipped models into HF-format directories and list them."""

from __future__ import annotations

import json

import typer

from distillery_launcher.cli.common import fail
from distillery.config import get_settings

app = typer.Typer(
    help="Offline models: convert the PyPI-shipped GGUF models to HF format (once) and list them.",
    no_args_is_help=True,
)


@app.command()
def resolve(
    name: str = typer.Argument(..., help="A known name (see `distillery models list`) or an HF directory."),
) -> None:
    """Print the HF-format directory of NAME, converting or building it first if needed."""
    from distillery.modelhub import resolve_model

    try:
        path = resolve_model(name, get_settings(), progress=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        fail(str(exc))
    typer.echo(str(path))


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Known model names, whether each is converted yet, and where it lives."""
    from distillery.modelhub import list_models

    rows = list_models(get_settings())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "ready  " if r["converted"] else "not yet"
        typer.echo(f"{r['name']:<{width}}  {state}  {r['path']}")
        typer.echo(f"{'':<{width}}  {r['description']}")
