"""`distillery trainer`: the trainer service, a Celery worker on queue `train` (one run at a time)."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from distillery_launcher.cli.common import fail, services
from distillery.queue import QUEUE_TRAIN

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def trainer(
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help=f"One of {', '.join(LOG_LEVELS)}."),
    hostname: str | None = typer.Option(None, "--hostname", help="Celery node name (default trainer@host)."),
) -> None:
    """Run the trainer against DATABASE_URL / REDIS_URL (or the embedded servers); Ctrl-C stops it.

    A run interrupted by a crash is resumed from its last checkpoint when a trainer starts again.
    """
    if loglevel.upper() not in LOG_LEVELS:
        fail(f"--loglevel '{loglevel}' is not accepted (accepted: {', '.join(LOG_LEVELS)})")
    with services() as urls:
        env = {**os.environ, "DATABASE_URL": urls.database_url, "REDIS_URL": urls.redis_url}
        argv = [sys.executable, "-m", "distillery_trainer", "--loglevel", loglevel.upper()]
        argv += ["--hostname", hostname or "trainer@%h"]
        typer.echo(f"trainer on queue '{QUEUE_TRAIN}' (one run at a time)", err=True)
        # A child process: the embedded servers above stay owned by this process and stop with it.
        try:
            code = subprocess.call(argv, env=env)
        except KeyboardInterrupt:
            code = 130
    raise typer.Exit(code)
