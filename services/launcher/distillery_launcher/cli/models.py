"""`distillery models`: turn the PyPI-shipped models into HF-format directories, list them, export them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from distillery.config import get_settings
from distillery_launcher.cli.common import fail

app = typer.Typer(
    help="Offline models: convert the PyPI-shipped GGUF models to HF format (once), list and export them.",
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


EXPORT_FORMATS = ("gguf",)
_VERSIONED = re.compile(r"^(?P<name>.+):v(?P<version>\d+)$")


def _model_dir(model: str) -> Path:
    """The HF directory of MODEL: a directory, a known name, or a registered student (NAME[:vN] or id)."""
    from distillery.modelhub import canonical_name, resolve_model

    if canonical_name(model) is not None or Path(model).expanduser().is_dir():
        try:
            return resolve_model(model, get_settings(), progress=lambda line: typer.echo(line, err=True))
        except ValueError as exc:
            fail(str(exc))
    from distillery.store import registry
    from distillery.store.db import session_factory
    from distillery_launcher.cli.common import services

    wanted = _VERSIONED.match(model)
    name, version = (wanted["name"], int(wanted["version"])) if wanted else (model, None)
    with services() as urls, session_factory(urls.database_url)() as session:
        row = registry.get_model(session, model)
        if row is None:
            rows = registry.list_models(session, name)  # newest version first
            row = next((r for r in rows if version is None or r.version == version), None)
        if row is None:
            fail(
                f"MODEL '{model}' is not a directory, a known model name (`distillery models list`) "
                "or a registered student (NAME, NAME:vN or its id)"
            )
        return Path(row.path)


@app.command()
def export(
    model: str = typer.Argument(
        ..., help="A registered student (NAME, NAME:vN, id), a known model name or an HF directory."
    ),
    format_: str = typer.Option("gguf", "--format", help=f"Export format ({', '.join(EXPORT_FORMATS)})."),
    outtype: str = typer.Option("f16", "--outtype", help="GGUF weight type: f16, q8_0, q4_k_m (or f32)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Directory to write (default: ./<model>-<outtype>-gguf)."
    ),
) -> None:
    """Write MODEL as a GGUF file for llama.cpp, with an Ollama Modelfile beside it."""
    from distillery.export import OUTTYPES, ExportError, export_gguf
    from distillery_launcher.cli.common import require_choice

    require_choice("--format", format_, EXPORT_FORMATS)
    require_choice("--outtype", outtype, OUTTYPES)
    source = _model_dir(model)
    target = out or Path.cwd() / f"{source.name}-{outtype}-gguf"
    try:
        result = export_gguf(source, target, outtype, progress=lambda line: typer.echo(line, err=True))
    except ExportError as exc:
        fail(f"MODEL '{model}': {exc}")
    typer.echo(json.dumps(result.to_json(), indent=2))
