"""`distillery gateway`: the API server (uvicorn on the app factory), foreground; Ctrl-C stops it."""

from __future__ import annotations

import os
import shutil
import tempfile

import typer

from distillery.config import get_settings
from distillery_launcher.cli.common import require_choice, services

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
APP = "distillery_gateway.app:create_app"


def gateway(
    host: str | None = typer.Option(None, "--host", help="Interface (default: DISTILLERY_GATEWAY_HOST)."),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="Port (default: DISTILLERY_GATEWAY_PORT, 8000)."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, max=64, help="Worker processes; each loads its own copy of the student."
    ),
    log_level: str = typer.Option("info", "--log-level", help=f"One of {', '.join(LOG_LEVELS)}."),
) -> None:
    """Serve the REST + OpenAI-compatible API against DATABASE_URL / REDIS_URL (or the embedded servers)."""
    import uvicorn

    require_choice("--log-level", log_level, LOG_LEVELS, ignore_case=True)
    settings = get_settings()
    with services() as urls:
        # The factory reads its settings from the environment in every worker process.
        os.environ["DATABASE_URL"] = urls.database_url
        os.environ["REDIS_URL"] = urls.redis_url
        metrics_dir = None
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # /metrics then adds up all workers (prometheus-client's multiprocess mode).
            metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
                prefix="distillery-metrics-"
            )
        get_settings.cache_clear()
        bind_host, bind_port = host or settings.gateway_host, port or settings.gateway_port
        typer.echo(f"gateway on http://{bind_host}:{bind_port} ({workers} worker(s))", err=True)
        try:
            uvicorn.run(
                APP,
                factory=True,
                host=bind_host,
                port=bind_port,
                workers=workers,
                log_level=log_level.lower(),
            )
        finally:
            if metrics_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)
