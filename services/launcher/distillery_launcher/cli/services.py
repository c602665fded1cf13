"""`distillery services`: the embedded PostgreSQL and Redis under DISTILLERY_HOME."""

from __future__ import annotations

import signal
from typing import Any

import typer

from distillery.config import get_settings
from distillery_launcher import embedded

app = typer.Typer(
    help="Embedded PostgreSQL and Redis, used when DATABASE_URL / REDIS_URL are unset.",
    no_args_is_help=True,
)

_COLUMNS = ("name", "mode", "running", "pid", "url")


def _table(rows: list[dict[str, Any]]) -> str:
    cells = [[str(c).upper() for c in _COLUMNS]]
    cells += [["-" if row.get(c) is None else str(row[c]) for c in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


@app.command("status")
def status_command() -> None:
    """Show where PostgreSQL and Redis are and whether they answer."""
    typer.echo(_table(embedded.status(get_settings())))


@app.command("start")
def start_command() -> None:
    """Start the embedded PostgreSQL and Redis and keep them up until Ctrl-C."""
    settings = get_settings()
    with embedded.exit_on_sigterm():
        urls, started = embedded.start_services(settings)
        try:
            typer.echo(f"DATABASE_URL={urls.database_url}")
            typer.echo(f"REDIS_URL={urls.redis_url}")
            if not started:
                typer.echo("nothing to start: the servers are external or already running (see `status`).")
                return
            names = " and ".join(s.name for s in started)
            typer.echo(f"{names} running under {settings.home}; Ctrl-C (or SIGTERM) stops them.")
            try:
                while True:
                    signal.pause()
            except KeyboardInterrupt:
                pass
        finally:
            for server in reversed(started):
                server.release()
            if started:
                typer.echo("stopped.")


@app.command("run", hidden=True)
def run_command(
    server: str = typer.Argument(..., help="postgres or redis."),
) -> None:
    """Run one embedded server in the foreground (what `distillery up` supervises)."""
    if server not in ("postgres", "redis"):
        typer.secho(f"error: SERVER '{server}' is not accepted (accepted: postgres, redis)", err=True)
        raise typer.Exit(2)
    embedded.exec_foreground(server, get_settings())


@app.command("stop")
def stop_command() -> None:
    """Stop the embedded servers running under DISTILLERY_HOME, whoever started them."""
    postgres, redis_server = embedded.embedded_servers(get_settings())
    for server in (redis_server, postgres):
        pid = server.pid
        if pid is None:
            typer.echo(f"{server.name}: not running")
            continue
        server.stop()
        typer.echo(f"{server.name}: stopped (pid {pid})")
