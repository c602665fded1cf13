"""`distillery worker`: a Celery worker on the `rationales` queue (foreground; Ctrl-C stops it)."""

from __future__ import annotations

import sys

import typer

from distillery.queue import QUEUE_RATIONALES
from distillery_launcher.cli.common import LOG_LEVELS, require_choice, run_service

POOLS = ("threads", "prefork", "solo")


def worker(
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, max=256, help="Tasks run at once."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help=f"One of {', '.join(LOG_LEVELS)}."),
    pool: str = typer.Option(
        "threads", "--pool", help=f"One of {', '.join(POOLS)}; teacher calls wait on I/O, so threads suit."
    ),
) -> None:
    """Run a rationale worker against DATABASE_URL / REDIS_URL (or the embedded servers)."""
    require_choice("--loglevel", loglevel, LOG_LEVELS, ignore_case=True)
    require_choice("--pool", pool, POOLS)
    argv = [sys.executable, "-m", "distillery_worker", "--concurrency", str(concurrency)]
    argv += ["--loglevel", loglevel.upper(), "--pool", pool]
    run_service(argv, f"worker on queue '{QUEUE_RATIONALES}' ({pool} pool, concurrency {concurrency})")
