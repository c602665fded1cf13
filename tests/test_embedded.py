"""The embedded PostgreSQL/Redis pair: real servers, persistence, reuse, external URLs, CLI, signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis as redis_lib
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from distillery.config import Settings, get_settings
from distillery.store.migrate import upgrade
from distillery_launcher.cli.services import app as services_app
from distillery_launcher.embedded import EmbeddedPostgres, EmbeddedRedis, mask_url, running_services, status

pytestmark = pytest.mark.embedded

MACHINE_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"
SERVICE_ENV = ("DATABASE_URL", "DISTILLERY_DATABASE_URL", "REDIS_URL", "DISTILLERY_REDIS_URL")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh DISTILLERY_HOME; whatever runs under it at the end of the test is stopped.

    Not under ``tmp_path``: every pytest session resets ``/tmp/pytest-of-USER`` to mode 0700, which
    (run as root) locks the ``embedded_postgres`` user out of a data directory below it.
    """
    base = Path(tempfile.mkdtemp(prefix="distillery-embedded-"))
    home = base / "home"
    try:
        yield home
    finally:
        for server in (EmbeddedRedis(home / "redis"), EmbeddedPostgres(home / "postgres")):
            server.stop()
            assert server.pid is None
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def embedded_settings(home: Path) -> Settings:
    return Settings(home=home, database_url=None, redis_url=None)


@pytest.fixture
def cli_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment (here and for child processes) that points the CLI at ``home`` with no URLs set."""
    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISTILLERY_HOME", str(home))
    get_settings.cache_clear()
    yield dict(os.environ)
    get_settings.cache_clear()


def _write_and_read(database_url: str, redis_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE embedded_probe (id int PRIMARY KEY, note text NOT NULL)"))
            conn.execute(text("INSERT INTO embedded_probe VALUES (1, 'kept across restarts')"))
    finally:
        engine.dispose()
    client = redis_lib.Redis.from_url(redis_url)
    client.set("embedded:probe", "still here")
    client.close()


def test_pair_persists_across_restart(embedded_settings: Settings, home: Path) -> None:
    with running_services(embedded_settings) as urls:
        assert urls.embedded_postgres and urls.embedded_redis
        assert urls.database_url.startswith("postgresql+psycopg://postgres@/distillery?host=")
        # Redis wants the password kept (0600) beside its data; the URL carries it.
        password = (home / "redis/password").read_text().strip()
        assert (home / "redis/password").stat().st_mode & 0o077 == 0
        assert urls.redis_url.startswith(f"redis://:{password}@127.0.0.1:") and urls.redis_url.endswith("/0")
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=int((home / "redis/port").read_text())).ping()
        _write_and_read(urls.database_url, urls.redis_url)
        postgres, redis_server = EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")
        pids = [postgres.pid, redis_server.pid]
        assert all(pids) and postgres.is_running() and redis_server.is_running()
        first = urls

    assert all(_gone(pid) for pid in pids if pid)
    assert not postgres.is_running() and not redis_server.is_running()
    assert postgres.url is None and redis_server.url is None

    with running_services(embedded_settings) as urls:
        assert urls == first  # same socket dir, same remembered Redis port
        engine = create_engine(urls.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                note = conn.execute(text("SELECT note FROM embedded_probe WHERE id = 1")).scalar_one()
            assert inspect(engine).has_table("alembic_version")
        finally:
            engine.dispose()
        assert note == "kept across restarts"
        client = redis_lib.Redis.from_url(urls.redis_url)
        assert client.get("embedded:probe") == b"still here"
        client.close()


def test_start_and_stop_are_idempotent(home: Path) -> None:
    postgres, redis_server = EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")
    assert postgres.url is None and not postgres.is_running()
    db_url, r_url = postgres.start(), redis_server.start()
    assert postgres.start() == db_url and redis_server.start() == r_url
    assert postgres.owned and redis_server.owned
    assert postgres.url == db_url and redis_server.url == r_url

    # A second handle sees the same servers and does not own them.
    other_pg, other_redis = EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")
    assert other_pg.start() == db_url and other_redis.start() == r_url
    assert not other_pg.owned and not other_redis.owned

    for server in (postgres, redis_server):
        server.stop()
        server.stop()
        assert not server.is_running() and not server.owned and server.pid is None


def test_explicit_redis_port_is_used_and_remembered(home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = EmbeddedRedis(home / "redis", port=port)
    url = server.start()
    password = (home / "redis/password").read_text().strip()
    assert url == f"redis://:{password}@127.0.0.1:{port}/0"
    server.stop()
    assert EmbeddedRedis(home / "redis").start() == f"redis://:{password}@127.0.0.1:{port}/0"


def test_external_urls_start_nothing(home: Path) -> None:
    settings = Settings(home=home, database_url=MACHINE_PG, redis_url=MACHINE_REDIS)
    with running_services(settings) as urls:
        assert urls.database_url == MACHINE_PG and urls.redis_url == MACHINE_REDIS
        assert not urls.embedded_postgres and not urls.embedded_redis
        assert not (home / "postgres").exists() and not (home / "redis").exists()
    rows = {row["name"]: row for row in status(settings)}
    assert rows["postgres"]["mode"] == rows["redis"]["mode"] == "external"
    assert rows["postgres"]["running"] == _port_open(5432)
    assert rows["redis"]["running"] == _port_open(6379)
    assert rows["postgres"]["pid"] is None and rows["redis"]["pid"] is None


def test_mixed_external_and_embedded(home: Path) -> None:
    settings = Settings(home=home, database_url=MACHINE_PG, redis_url=None)
    with running_services(settings) as urls:
        assert urls.database_url == MACHINE_PG and not urls.embedded_postgres
        assert urls.embedded_redis and EmbeddedRedis(home / "redis").is_running()
        assert not (home / "postgres").exists()
    assert not EmbeddedRedis(home / "redis").is_running()


def test_nested_running_services_reuse_without_owning(embedded_settings: Settings, home: Path) -> None:
    postgres, redis_server = EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")
    with running_services(embedded_settings) as outer:
        pids = (postgres.pid, redis_server.pid)
        with running_services(embedded_settings) as inner:
            assert inner == outer
            assert (postgres.pid, redis_server.pid) == pids
        assert postgres.is_running() and redis_server.is_running()  # the inner one owned nothing

        # Another process reuses them too, and leaves them running when it exits.
        script = textwrap.dedent(
            """
            import sys
            from distillery.config import Settings
            from distillery_launcher.embedded import running_services
            with running_services(Settings(home=sys.argv[1], database_url=None, redis_url=None)) as urls:
                print(urls.database_url)
                print(urls.redis_url)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(home)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [outer.database_url, outer.redis_url]
        assert (postgres.pid, redis_server.pid) == pids
        assert postgres.is_running() and redis_server.is_running()
    assert all(_gone(pid) for pid in pids if pid)


def test_status_reports_embedded_servers(embedded_settings: Settings) -> None:
    rows = status(embedded_settings)
    assert [(r["name"], r["mode"], r["running"], r["pid"], r["url"]) for r in rows] == [
        ("postgres", "embedded", False, None, None),
        ("redis", "embedded", False, None, None),
    ]
    with running_services(embedded_settings) as urls:
        rows = {row["name"]: row for row in status(embedded_settings)}
        assert rows["postgres"]["running"] and rows["redis"]["running"]
        assert rows["postgres"]["url"] == urls.database_url
        assert rows["redis"]["url"] == mask_url(urls.redis_url) and ":***@" in rows["redis"]["url"]
        assert isinstance(rows["postgres"]["pid"], int) and isinstance(rows["redis"]["pid"], int)


def test_mask_url() -> None:
    assert mask_url("postgresql+psycopg://app:s3cret@db:5432/x") == "postgresql+psycopg://app:***@db:5432/x"
    assert mask_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("postgresql://u@/x?host=/run&password=pw") == "postgresql://u@/x?host=/run&password=***"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_cli_status_and_stop(cli_env: dict[str, str], home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(services_app, ["status"])
    assert result.exit_code == 0, result.output
    assert "postgres" in result.output and "embedded" in result.output and "False" in result.output

    with running_services(get_settings()):
        result = runner.invoke(services_app, ["status"])
        assert result.exit_code == 0 and result.output.count("True") == 2, result.output
        result = runner.invoke(services_app, ["stop"])
        assert result.exit_code == 0, result.output
        assert "postgres: stopped" in result.output and "redis: stopped" in result.output
        assert not EmbeddedPostgres(home / "postgres").is_running()
        assert not EmbeddedRedis(home / "redis").is_running()
    result = runner.invoke(services_app, ["stop"])
    assert "postgres: not running" in result.output and "redis: not running" in result.output


def _spawn(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a child and read its output up to the line saying the servers are up."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "Ctrl-C" in line or line.startswith("READY"):
            return proc, lines
    proc.wait(10)
    pytest.fail("child exited early:\n" + "\n".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_start_runs_until_signal(cli_env: dict[str, str], home: Path, sig: signal.Signals) -> None:
    code = "from distillery_launcher.cli.services import app; app()"
    proc, lines = _spawn([sys.executable, "-c", code, "start"], cli_env)
    try:
        assert any(line.startswith("DATABASE_URL=postgresql+psycopg://") for line in lines)
        postgres, redis_server = EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")
        assert postgres.is_running() and redis_server.is_running()

        # While it runs, a second `start` finds them up and returns at once.
        again = subprocess.run(
            [sys.executable, "-c", code, "start"], env=cli_env, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not postgres.is_running() and not redis_server.is_running()
    assert postgres.pid is None and redis_server.pid is None


def test_owner_stops_servers_on_sigterm(cli_env: dict[str, str], home: Path) -> None:
    code = textwrap.dedent(
        """
        import time
        from distillery_launcher.embedded import running_services
        with running_services():
            print("READY", flush=True)
            time.sleep(120)
        """
    )
    proc, _ = _spawn([sys.executable, "-c", code], cli_env)
    try:
        postgres, redis_server = EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")
        pids = (postgres.pid, redis_server.pid)
        assert all(pids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(_gone(pid) for pid in pids if pid)


def test_started_servers_are_stopped_at_interpreter_exit(cli_env: dict[str, str], home: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from distillery_launcher.embedded import EmbeddedPostgres, EmbeddedRedis
        home = Path(sys.argv[1])
        EmbeddedPostgres(home / "postgres").start()
        EmbeddedRedis(home / "redis").start()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home)], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert EmbeddedPostgres(home / "postgres").pid is None
    assert EmbeddedRedis(home / "redis").pid is None


def test_servers_of_a_killed_owner_are_reused_and_cli_stops_them(cli_env: dict[str, str], home: Path) -> None:
    code = textwrap.dedent(
        """
        import time
        from distillery_launcher.embedded import running_services
        with running_services():
            print("READY", flush=True)
            time.sleep(120)
        """
    )
    proc, _ = _spawn([sys.executable, "-c", code], cli_env)
    proc.kill()  # no chance to clean up: the servers outlive their owner
    proc.wait(10)
    postgres, redis_server = EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")
    pids = (postgres.pid, redis_server.pid)
    assert all(pids)

    with running_services(get_settings()) as urls:
        assert (postgres.pid, redis_server.pid) == pids
        assert urls.database_url == postgres.url and urls.redis_url == redis_server.url
    assert postgres.is_running() and redis_server.is_running()  # reused, not owned: left running

    result = CliRunner().invoke(services_app, ["stop"])
    assert result.exit_code == 0, result.output
    assert all(_gone(pid) for pid in pids if pid)
