"""`distillery trainer`: the trainer service, a Celery worker on queue `train` (one run at a time)."""

from __future__ import annotations

import sys

import typer

from distillery.queue import QUEUE_TRAIN
from distillery_launcher.cli.common import LOG_LEVELS, require_choice, run_service


def trainer(
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help=f"One of {', '.join(LOG_LEVELS)}."),
    hostname: str | None = typer.Option(None, "--hostname", help="Celery node name (default trainer@host)."),
) -> None:
    """Run the trainer against DATABASE_URL / REDIS_URL (or the embedded servers); Ctrl-C stops it.

    A run interrupted by a crash is resumed from its last checkpoint when a trainer starts again.
    """
    require_choice("--loglevel", loglevel, LOG_LEVELS, ignore_case=True)
    argv = [sys.executable, "-m", "distillery_trainer", "--loglevel", loglevel.upper()]
    argv += ["--hostname", hostname or "trainer@%h"]
    run_service(argv, f"trainer on queue '{QUEUE_TRAIN}' (one run at a time)")
