"""`distillery up`: the whole stack on this machine, as supervised child processes, until Ctrl-C."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import typer

from distillery import apikeys
from distillery.config import Settings, get_settings
from distillery.store.db import session_scope
from distillery_launcher.cli.common import fail
from distillery_launcher.embedded import ServiceURLs, embedded_servers, mask_url
from distillery_launcher.stack import CPU_STUDENT_BACKEND, GATEWAY_PORT, TEACHER_PORT, local_teachers, stack
from distillery_launcher.stack import embedded_servers as supervised_servers
from distillery_launcher.supervisor import Supervisor


def _in_use(host: str, port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError:
        return True
    return False


def _urls(settings: Settings) -> tuple[ServiceURLs, str | None, str | None]:
    """The URLs `up` hands its services, and the embedded servers it must run itself (their URLs).

    An embedded server already running under DISTILLERY_HOME (`distillery services start`) is reused.
    """
    postgres, redis_server = embedded_servers(settings)
    database_url, redis_url = settings.database_url, settings.redis_url
    run_postgres = run_redis = None
    if database_url is None:
        database_url = postgres.url if postgres.is_running() else None
        if database_url is None:
            database_url = run_postgres = postgres.foreground()[2]
    if redis_url is None:
        redis_url = redis_server.url if redis_server.is_running() else None
        if redis_url is None:
            redis_url = run_redis = redis_server.foreground()[1]
    urls = ServiceURLs(
        database_url=database_url,
        redis_url=redis_url,
        embedded_postgres=settings.database_url is None,
        embedded_redis=settings.redis_url is None,
    )
    return urls, run_postgres, run_redis


def _admin_key(settings: Settings, database_url: str, key_file: Path) -> tuple[str, bool]:
    """The key `up` announces: the one kept in `key_file` (0600) while it still works, else a new one.

    Returns the key and whether it is new (a new key is shown once; a kept one is not printed again).
    """
    from distillery.store.db import session_scope

    pepper, prefix = settings.api_key_pepper, settings.api_key_prefix
    with session_scope(database_url) as session:
        try:
            kept = key_file.read_text().strip()
        except FileNotFoundError:
            kept = ""
        principal = apikeys.verify_key(session, kept, pepper, prefix) if kept else None
        if principal is not None and "admin" in principal.scopes:
            return kept, False
        issued = apikeys.create_key(session, "up-admin", ("admin",), pepper, prefix)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{issued.key}\n")
    return issued.key, True


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
    Embedded servers run under the same supervision as the services (restarted on a crash with the same
    data, port and password). Migrations run first; the URLs are printed once everything answers, with
    the admin key: the one kept in DISTILLERY_HOME/up-admin.key while it still works, else a new one.
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
    key_file = Path(settings.home).expanduser() / "up-admin.key"
    admin: list[tuple[str, bool]] = []
    urls, run_postgres, run_redis = _urls(settings)
    postgres, _ = embedded_servers(settings)
    env = dict(os.environ)
    env.update(
        DATABASE_URL=urls.database_url,
        REDIS_URL=urls.redis_url,
        DISTILLERY_HOME=str(settings.home),
        PYTHONUNBUFFERED="1",  # children's lines reach the prefixed log as they are written
    )
    # The student on a CPU is served by llama.cpp (bench/serving.py: about twice the transformers
    # backend's throughput, the same greedy answers); as in .env.example and k8s. Yours wins if set.
    env.setdefault("DISTILLERY_STUDENT_BACKEND", CPU_STUDENT_BACKEND)

    def register_teachers_and_admin_key(service: str) -> None:
        if service == "postgres":
            postgres.ensure_database()  # a no-op on restarts
        if service != "migrate":
            return
        from distillery.teachers.registry import upsert_teacher

        if not no_teacher:
            with session_scope(urls.database_url) as session:
                for spec in local_teachers(teacher_url):
                    upsert_teacher(session, spec)
        admin.append(_admin_key(settings, urls.database_url, key_file))

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
        key, new = admin[-1]
        if new:
            say(f"  admin key  {key}   (new key 'up-admin', shown once; kept in {key_file})")
        else:
            say(f"  admin key  kept in {key_file}   (key 'up-admin', issued by an earlier start)")
        say("press Ctrl-C to stop")

    supervisor = Supervisor(
        stack(
            host=host,
            gateway_port=port,
            teacher_port=teacher_port,
            teacher=not no_teacher,
            embedded=supervised_servers(run_postgres, run_redis),
        ),
        command=[sys.executable, "-m", "distillery_launcher.cli.main"],
        env=env,
        max_restarts=max_restarts,
        stop_timeout_s=stop_timeout,
        on_ready=register_teachers_and_admin_key,
        on_all_ready=announce,
    )
    code = supervisor.run()
    raise typer.Exit(code)
