"""The `distillery` command line."""

from __future__ import annotations

import logging

import typer

from distillery import __version__
from distillery.cli import data, db, models, services, up
from distillery.config import get_settings

app = typer.Typer(
    help="Distil several teacher LLMs into one small student (TinyLLM) and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(db.app, name="db")
app.add_typer(services.app, name="services")
app.add_typer(models.app, name="models")
app.command("up")(up.up)


@app.callback()
def main() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
