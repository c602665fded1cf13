"""Shared fixtures: real PostgreSQL and Redis for every test.

By default the machine's servers are used when they answer (127.0.0.1:5432 / :6379, or DATABASE_URL /
REDIS_URL for the test run); otherwise the embedded pair is started in a temp dir. Force one with
DISTILLERY_TEST_SERVICES=external|embedded. Each test session gets its own fresh database.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import text

from distillery.config import Settings
from distillery.store.db import normalise_url, session_scope
from distillery.store.migrate import scratch_database
from distillery.store.models import Base
from distillery_launcher.embedded import EmbeddedPostgres, EmbeddedRedis

# A gateway built in a test serves no student unless the test names one (loading one costs CPU).
os.environ.setdefault("DISTILLERY_DEFAULT_MODEL", "none")

MACHINE_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _mode() -> str:
    mode = os.environ.get("DISTILLERY_TEST_SERVICES", "auto")
    if mode not in ("auto", "external", "embedded"):
        raise pytest.UsageError("DISTILLERY_TEST_SERVICES must be auto, external or embedded")
    return mode


@pytest.fixture(scope="session")
def services_root() -> Iterator[Path]:
    # Not tmp_path: pytest resets /tmp/pytest-of-<user> to 0700, which locks out the system user the
    # embedded PostgreSQL runs as when tests run as root.
    root = Path(tempfile.mkdtemp(prefix="distillery-services-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def server_pg_url(services_root: Path) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database."""
    mode = _mode()
    given = os.environ.get("DATABASE_URL")
    if mode != "embedded" and given:
        yield normalise_url(given)
    elif mode == "external" or (mode == "auto" and _port_open(5432)):
        yield MACHINE_PG
    else:
        pg = EmbeddedPostgres(services_root / "postgres")
        url = pg.start()
        yield url
        pg.stop()


@pytest.fixture(scope="session")
def database_url(server_pg_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    with scratch_database(server_pg_url, prefix="distillery_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(services_root: Path) -> Iterator[str]:
    mode = _mode()
    given = os.environ.get("REDIS_URL")
    if mode != "embedded" and given:
        yield given
    elif mode == "external" or (mode == "auto" and _port_open(6379)):
        # A db index of our own keeps parallel sessions' queues apart from other users of db 0.
        yield "redis://127.0.0.1:6379/" + str(7 + os.getpid() % 8)
    else:
        server = EmbeddedRedis(services_root / "redis")
        yield server.start()
        server.stop()


@pytest.fixture
def clean_db(database_url: str) -> Iterator[str]:
    """The session database, emptied before the test."""
    with session_scope(database_url) as session:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield database_url


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[str]:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    yield redis_url


@pytest.fixture
def settings(tmp_path: Path, clean_db: str, clean_redis: str) -> Settings:
    """Settings for one test: its own home dir, the session's database and Redis."""
    return Settings(home=tmp_path / "home", database_url=clean_db, redis_url=clean_redis)


@pytest.fixture(scope="session")
def teacher_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL ("http://127.0.0.1:PORT/v1") of ONE real llama.cpp teacher server for the session.

    It serves `smollm2-135m` (chat) and `gemma3-270m` (base model: /v1/completions), supervised as
    `distillery up` supervises its `teacher-cpu` service: a crash of llama.cpp's native code is restarted
    on the same port (the log, with the crash's Python stacks, is in the session's `teacher0/`). Set
    DISTILLERY_TEST_TEACHER_URL to use a server that is already running instead.
    """
    import sys
    import threading
    import time

    from distillery_launcher.stack import ServiceDef
    from distillery_launcher.supervisor import Supervisor, probe

    given = os.environ.get("DISTILLERY_TEST_TEACHER_URL")
    if given:
        yield given.rstrip("/")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("teacher") / "server.log"
    url = f"http://127.0.0.1:{port}/v1"
    argv = ("--models", "smollm2-135m,gemma3-270m", "--host", "127.0.0.1", "--port", str(port))
    with log_path.open("w") as log:
        supervisor = Supervisor(
            [ServiceDef("teacher", argv, ready_url=f"{url}/models")],
            [sys.executable, "-m", "distillery_teacher"],
            out=log,
            name="tests",
            ready_timeout_s=300,
        )
        thread = threading.Thread(target=supervisor.run, name="teacher-supervisor", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 300
            while not probe(f"{url}/models", timeout=5):
                if not thread.is_alive() or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"teacher server not ready:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            supervisor.stop()
            thread.join(timeout=60)
