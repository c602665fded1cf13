"""`distillery db`: schema migrations."""

from __future__ import annotations

import typer

from distillery.store import migrate
from distillery_launcher.cli.common import services

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the schema to REVISION (default: the newest)."""
    with services(migrate=False) as urls:
        migrate.upgrade(urls.database_url, revision)
        typer.echo(f"schema at {migrate.current_revision(urls.database_url)}")


@app.command()
def current() -> None:
    """Print the schema revision."""
    with services(migrate=False) as urls:
        typer.echo(migrate.current_revision(urls.database_url) or "empty (run: distillery db upgrade)")
