"""`distillery worker`: a Celery worker on the `rationales` queue (foreground; Ctrl-C stops it)."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from distillery_launcher.cli.common import fail, services
from distillery.queue import QUEUE_RATIONALES

POOLS = ("threads", "prefork", "solo")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def worker(
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, max=256, help="Tasks run at once."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help=f"One of {', '.join(LOG_LEVELS)}."),
    pool: str = typer.Option(
        "threads", "--pool", help=f"One of {', '.join(POOLS)}; teacher calls wait on I/O, so threads suit."
    ),
) -> None:
    """Run a rationale worker against DATABASE_URL / REDIS_URL (or the embedded servers)."""
    if loglevel.upper() not in LOG_LEVELS:
        fail(f"--loglevel '{loglevel}' is not accepted (accepted: {', '.join(LOG_LEVELS)})")
    if pool not in POOLS:
        fail(f"--pool '{pool}' is not accepted (accepted: {', '.join(POOLS)})")
    with services() as urls:
        env = {**os.environ, "DATABASE_URL": urls.database_url, "REDIS_URL": urls.redis_url}
        argv = [sys.executable, "-m", "distillery_worker", "--concurrency", str(concurrency)]
        argv += ["--loglevel", loglevel.upper(), "--pool", pool]
        typer.echo(f"worker on queue '{QUEUE_RATIONALES}' ({pool} pool, concurrency {concurrency})", err=True)
        # A child process rather than an in-process worker: the embedded servers above stay owned by
        # this process and stop when the worker does.
        try:
            code = subprocess.call(argv, env=env)
        except KeyboardInterrupt:
            code = 130
    raise typer.Exit(code)
