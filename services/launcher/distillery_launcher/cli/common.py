"""What every CLI command shares: settings, the database URL (embedded or given), error exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from distillery.config import Settings, get_settings
from distillery_launcher.embedded import ServiceURLs, running_services


@contextmanager
def services(settings: Settings | None = None, migrate: bool = True) -> Iterator[ServiceURLs]:
    """The URLs of PostgreSQL and Redis: the configured ones, or embedded servers kept up meanwhile."""
    from distillery.store.migrate import upgrade

    with running_services(settings or get_settings()) as urls:
        if migrate:
            upgrade(urls.database_url)
        yield urls


def fail(message: str, code: int = 2) -> None:
    """Print an actionable error to stderr and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
