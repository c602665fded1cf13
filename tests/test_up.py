"""`distillery up` as a user runs it: a real subprocess with real services, stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

START_TIMEOUT_S = 420  # worker, trainer and gateway import torch & co. on a shared 2-core machine
STOP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """A running `distillery up` and the lines it printed."""

    def __init__(self, home: Path, *args: str, database_url: str | None = None, redis_url: str | None = None):
        self.home = home
        self.port = free_port()
        self.teacher_port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(DISTILLERY_HOME=str(home), PYTHONUNBUFFERED="1")
        if database_url:
            env["DATABASE_URL"] = database_url
        if redis_url:
            env["REDIS_URL"] = redis_url
        argv = [sys.executable, "-m", "distillery_launcher.cli.main", "up", "--port", str(self.port)]
        argv += ["--teacher-port", str(self.teacher_port), "--stop-timeout", "30", *args]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output[-6000:]}")

    def started(self) -> str:
        """The admin key once the stack is up: printed when new, else the one kept in HOME/up-admin.key."""
        self.wait_for(r"\[up\]\s+distillery is up")
        printed = self.wait_for(r"admin key\s+(\S+)").group(1)
        return (self.home / "up-admin.key").read_text().strip() if printed == "kept" else printed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def child(self, service: str) -> psutil.Process:
        pid = int(self.wait_for(rf"started {service} \(pid (\d+)\)").group(1))
        return psutil.Process(pid)

    def interrupt(self) -> int:
        """Ctrl-C; the exit status once everything is down."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        for proc in [*self.descendants(), psutil.Process(self.proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def assert_all_gone(processes: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(processes, timeout=15)
    assert not alive, [(p.pid, p.cmdline()) for p in alive if p.is_running()]


def exited(pid: int, timeout: float = 15.0) -> bool:
    """The process is gone (or only a zombie waiting for whoever adopted it to reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[Up]:
    """`distillery up --no-teacher` on the test session's PostgreSQL and Redis (fast: nothing embedded)."""
    running = Up(
        tmp_path_factory.mktemp("up-home"), "--no-teacher", database_url=database_url, redis_url=redis_url
    )
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            try:
                running.interrupt()
            except subprocess.TimeoutExpired:
                running.kill()


def test_up_prints_the_urls_and_serves_the_gateway(up: Up) -> None:
    up.started()
    assert re.search(rf"gateway\s+http://127\.0\.0\.1:{up.port}", up.output)
    assert re.search(r"postgres\s+postgresql\+psycopg://\S+\s+\(external\)", up.output)
    assert "teachers" not in up.output.split("distillery is up")[-1]  # --no-teacher
    assert httpx.get(f"{up.url}/healthz").status_code == 200
    for service in ("migrate", "worker", "trainer", "gateway"):
        assert f"started {service} (pid" in up.output
    assert "migrate finished" in up.output
    # Children's output carries their prefix.
    assert re.search(r"^\[gateway\]\s+\S", up.output, re.M)


def test_the_printed_admin_key_works_on_an_authenticated_route(up: Up) -> None:
    key = up.started()
    assert httpx.get(f"{up.url}/v1/teachers").status_code == 401
    answer = httpx.get(f"{up.url}/v1/teachers", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text


def test_a_killed_worker_is_restarted_and_reported(up: Up) -> None:
    up.started()
    worker = up.child("worker")
    seen = len(up.lines)
    worker.kill()
    report = up.wait_for(
        r"worker exited \((.+)\); restarting in \d+s \(restart 1/\d+\)", after=seen, timeout=60
    )
    assert report.group(1) == "signal SIGKILL"
    new_pid = int(up.wait_for(r"started worker \(pid (\d+)\)", after=seen, timeout=60).group(1))
    assert new_pid != worker.pid and psutil.pid_exists(new_pid)
    assert not worker.is_running()


def test_ctrl_c_stops_every_child_process(up: Up) -> None:
    up.started()
    descendants = up.descendants()
    assert len(descendants) >= 4  # worker, trainer, gateway wrappers and the servers they run
    assert up.interrupt() == 0, up.output[-4000:]
    assert "SIGINT received, stopping" in up.output
    for service in ("worker", "trainer", "gateway"):
        assert re.search(rf"{service} stopped \(", up.output), service
    assert_all_gone(descendants)


@pytest.mark.embedded
@pytest.mark.slow
def test_embedded_servers_are_supervised_and_a_second_up_reuses_data_and_admin_key(
    services_root: Path,
) -> None:
    # Not tmp_path: the system user running the embedded PostgreSQL must reach the data dir, and
    # pytest keeps /tmp/pytest-of-<user> at 0700.
    home = services_root / "up-home"
    first = Up(home, "--no-teacher")
    try:
        key = first.started()
        assert "(embedded under" in first.output
        assert "new key 'up-admin'" in first.output
        assert (home / "up-admin.key").stat().st_mode & 0o077 == 0
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{first.url}/v1/teachers", headers=headers).status_code == 200
        # The embedded Redis wants its password; the URLs carry it and the log masks it.
        port = int((home / "redis/port").read_text())
        assert re.search(rf"redis://:\*\*\*@127\.0\.0\.1:{port}/0", first.output)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        # Crash drill: kill -9 both servers; each is restarted with the same data, port and socket.
        postmaster = int((home / "postgres/data/postmaster.pid").read_text().split()[0])
        redis_pid = int((home / "redis/redis.pid").read_text().strip())
        seen = len(first.lines)
        os.kill(postmaster, signal.SIGKILL)
        os.kill(redis_pid, signal.SIGKILL)
        for server in ("postgres", "redis"):
            first.wait_for(rf"{server} exited \(signal SIGKILL\); restarting", after=seen, timeout=60)
            first.wait_for(rf"\[up\]\s+{server} ready", after=seen, timeout=120)
        assert int((home / "redis/port").read_text()) == port
        new_postmaster = int((home / "postgres/data/postmaster.pid").read_text().split()[0])
        assert new_postmaster != postmaster and exited(postmaster) and exited(redis_pid)
        deadline = time.monotonic() + 60
        while httpx.get(f"{first.url}/v1/teachers", headers=headers).status_code != 200:
            assert time.monotonic() < deadline, first.output[-4000:]
            time.sleep(1)
        servers = first.descendants()
        redis_pid = int((home / "redis/redis.pid").read_text().strip())
        assert first.interrupt() == 0, first.output[-4000:]
    finally:
        if first.proc.poll() is None:
            first.kill()
    assert_all_gone(servers)
    assert exited(new_postmaster) and exited(redis_pid)

    second = Up(home, "--no-teacher")
    try:
        assert second.started() == key  # the kept key, not a new one
        assert "admin key  kept in" in second.output and key not in second.output
        assert httpx.get(f"{second.url}/v1/teachers", headers=headers).status_code == 200
        assert second.interrupt() == 0
    finally:
        if second.proc.poll() is None:
            second.kill()


@pytest.mark.slow
def test_up_with_the_cpu_teacher_serves_and_registers_both_local_teachers(
    tmp_path: Path, clean_db: str, clean_redis: str
) -> None:
    run = Up(tmp_path / "home", database_url=clean_db, redis_url=clean_redis)
    try:
        key = run.started()
        assert f"teachers   http://127.0.0.1:{run.teacher_port}/v1" in run.output
        served = httpx.get(f"http://127.0.0.1:{run.teacher_port}/v1/models").json()
        assert {m["id"] for m in served["data"]} >= {"smollm2-135m", "gemma3-270m"}
        teachers = httpx.get(f"{run.url}/v1/teachers", headers={"Authorization": f"Bearer {key}"}).json()
        by_name = {t["name"]: t for t in teachers["data"]}
        assert by_name["smollm2-135m"]["api_style"] == "chat"
        assert by_name["gemma3-270m"]["api_style"] == "completion"
        assert by_name["gemma3-270m"]["base_url"] == f"http://127.0.0.1:{run.teacher_port}/v1"
        descendants = run.descendants()
        assert run.interrupt() == 0
        assert_all_gone(descendants)
    finally:
        if run.proc.poll() is None:
            run.kill()


def test_up_refuses_a_port_in_use_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DISTILLERY_HOME": str(tmp_path / "home")}
        result = subprocess.run(
            [sys.executable, "-m", "distillery_launcher.cli.main", "up", "--no-teacher", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert f"--port {port}: 127.0.0.1:{port} is already in use" in result.stderr
    assert not (tmp_path / "home").exists()  # no embedded server was started
