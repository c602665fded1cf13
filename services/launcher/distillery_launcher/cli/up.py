"""`distillery up`: the whole stack on this machine, as supervised child processes, until Ctrl-C."""

from __future__ import annotations

import os
import socket
import sys

import typer

from distillery import apikeys
from distillery_launcher.cli.common import fail
from distillery.config import get_settings
from distillery_launcher.embedded import mask_url, running_services
from distillery_launcher.stack import GATEWAY_PORT, TEACHER_PORT, local_teachers, stack
from distillery.store.db import session_scope
from distillery_launcher.supervisor import Supervisor


def _in_use(host: str, port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError:
        return True
    return False


def up(
    port: int = typer.Option(GATEWAY_PORT, "--port", min=1, max=65535, help="Gateway port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the gateway and teacher listen on."),
    teacher_port: int = typer.Option(
        TEACHER_PORT, "--teacher-port", min=1, max=65535, help="CPU teacher port."
    ),
    no_teacher: bool = typer.Option(False, "--no-teacher", help="Do not start the local CPU teacher server."),
    max_restarts: int = typer.Option(5, "--max-restarts", min=0, help="Restarts of a crashing service."),
    stop_timeout: float = typer.Option(30.0, "--stop-timeout", min=0, help="Seconds to wait on Ctrl-C."),
) -> None:
    """Run the whole stack here until Ctrl-C: database, Redis, teacher, worker, trainer, gateway.

    PostgreSQL and Redis are embedded under DISTILLERY_HOME unless DATABASE_URL / REDIS_URL are set.
    Migrations run first; the URLs and a new admin key are printed once everything answers.
    """
    # Fail now rather than after a server crashed on start-up five times.
    for option, port_value, wanted in (
        ("--port", port, True),
        ("--teacher-port", teacher_port, not no_teacher),
    ):
        if wanted and _in_use(host, port_value):
            fail(f"{option} {port_value}: {host}:{port_value} is already in use; choose another {option}")
    settings = get_settings()
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    teacher_url = f"http://{shown_host}:{teacher_port}/v1"
    issued: list[apikeys.IssuedKey] = []

    with running_services(settings) as urls:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=urls.database_url,
            REDIS_URL=urls.redis_url,
            DISTILLERY_HOME=str(settings.home),
            PYTHONUNBUFFERED="1",  # children's lines reach the prefixed log as they are written
        )

        def register_teachers_and_admin_key(service: str) -> None:
            if service != "migrate":
                return
            from distillery.teachers.registry import upsert_teacher

            with session_scope(urls.database_url) as session:
                if not no_teacher:
                    for spec in local_teachers(teacher_url):
                        upsert_teacher(session, spec)
                issued.append(
                    apikeys.create_key(
                        session, "up-admin", ("admin",), settings.api_key_pepper, settings.api_key_prefix
                    )
                )

        def announce() -> None:
            say = supervisor.say
            say("distillery is up")
            say(f"  gateway    http://{shown_host}:{port}   (health /healthz, API docs /docs)")
            if not no_teacher:
                models = ", ".join(f"{s.name} ({s.api_style})" for s in local_teachers(teacher_url))
                say(f"  teachers   {teacher_url}   {models}")

            def where(embedded: bool) -> str:
                return f"embedded under {settings.home}" if embedded else "external"

            say(f"  postgres   {mask_url(urls.database_url)}   ({where(urls.embedded_postgres)})")
            say(f"  redis      {mask_url(urls.redis_url)}   ({where(urls.embedded_redis)})")
            say(f"  admin key  {issued[-1].key}   (new key 'up-admin', shown once; only its hash is stored)")
            say("press Ctrl-C to stop")

        supervisor = Supervisor(
            stack(host=host, gateway_port=port, teacher_port=teacher_port, teacher=not no_teacher),
            command=[sys.executable, "-m", "distillery_launcher.cli.main"],
            env=env,
            max_restarts=max_restarts,
            stop_timeout_s=stop_timeout,
            on_ready=register_teachers_and_admin_key,
            on_all_ready=announce,
        )
        code = supervisor.run()
    raise typer.Exit(code)
