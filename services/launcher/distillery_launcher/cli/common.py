"""What every CLI command shares: settings, the database URL (embedded or given), error exits."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import typer

from distillery.config import Settings, get_settings
from distillery_launcher.embedded import ServiceURLs, running_services

# Celery's log levels, as `--loglevel` takes them.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@contextmanager
def services(settings: Settings | None = None, migrate: bool = True) -> Iterator[ServiceURLs]:
    """The URLs of PostgreSQL and Redis: the configured ones, or embedded servers kept up meanwhile."""
    from distillery.store.migrate import upgrade

    with running_services(settings or get_settings()) as urls:
        if migrate:
            upgrade(urls.database_url)
        yield urls


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an actionable error to stderr and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def require_choice(option: str, value: str, accepted: Sequence[str], ignore_case: bool = False) -> None:
    """Exit with an error naming `option` and the accepted values unless `value` is one of them."""
    folded = [a.casefold() for a in accepted] if ignore_case else list(accepted)
    if (value.casefold() if ignore_case else value) not in folded:
        fail(f"{option} '{value}' is not accepted (accepted: {', '.join(accepted)})")


def run_service(argv: list[str], banner: str) -> NoReturn:
    """Run a service's process in the foreground against PostgreSQL and Redis; exit with its code.

    A child process rather than the service in this one: the embedded servers stay owned by this
    process and stop when the service does. Ctrl-C stops both.
    """
    with services() as urls:
        env = {**os.environ, "DATABASE_URL": urls.database_url, "REDIS_URL": urls.redis_url}
        typer.echo(banner, err=True)
        try:
            code = subprocess.call(argv, env=env)
        except KeyboardInterrupt:
            code = 130
    raise typer.Exit(code)
