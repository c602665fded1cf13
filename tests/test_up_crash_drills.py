"""Crash drills under `distillery up` (the issue's acceptance): kill -9 the embedded Redis mid-job, and
separately the embedded PostgreSQL, then an external Redis the test starts and restarts itself. Each
time the job completes within 3 minutes of the kill with no rationale missing and none twice.

A real teacher (the session's llama.cpp server) and small jobs; the reconciler is set to act after 10 s
without progress so that lost queue messages come back within the test (its default is 5 minutes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jobs_support import count_rows, free_port, import_arc, rationale_keys, wait_until
from test_up import Up

from distillery.store import models as m
from distillery_launcher.embedded import _redis_server_binary

pytestmark = [pytest.mark.slow, pytest.mark.embedded]

RECOVERY_S = 180  # the acceptance: the job completes within 3 minutes of the kill
ITEMS = 6


@pytest.fixture(autouse=True)
def fast_reconciler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLERY_RECONCILE_STALL_S", "10")
    monkeypatch.setenv("DISTILLERY_RECONCILE_INTERVAL_S", "2")
    monkeypatch.setenv("DISTILLERY_WORKER_CHUNK_SIZE", "1")


class Drill:
    """A running `up` with a teacher registered, examples imported and an admin client."""

    def __init__(self, up: Up, teacher_url: str, database_url: str | None = None) -> None:
        self.up = up
        key = up.started()
        self.database_url = database_url or up.wait_for(r"postgres\s+(postgresql\S+)").group(1)
        import_arc(self.database_url, 12)
        self.http = httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        body = {"name": "smol", "base_url": teacher_url, "model": "smollm2-135m", "api_style": "chat"}
        answer = self.http.post("/v1/teachers", json={**body, "timeout_s": 120, "max_concurrency": 1})
        assert answer.status_code in (200, 201), answer.text

    def job(self, job_id: str) -> dict:
        try:
            return self.http.get(f"/v1/rationale-jobs/{job_id}").json()
        except httpx.HTTPError:
            return {}

    def submit(self) -> str:
        body = {"dataset": "arc", "limit": ITEMS, "teachers": ["smol"], "in_context": {"k": 0}}
        answer = self.http.post("/v1/rationale-jobs", json={**body, "generation": {"max_tokens": 16}})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        wait_until(lambda: self.job(job_id).get("done", 0) >= 1, 300, 0.5, "first rationale")
        return str(job_id)

    def recovers(self, job_id: str, killed_at: float) -> float:
        """Seconds from the kill to the job's completion; asserts 0 missing and 0 duplicate rationales."""
        wait_until(
            lambda: self.job(job_id).get("status") in ("completed", "completed_with_errors", "failed"),
            RECOVERY_S,
            1.0,
            f"job {job_id} after the kill; output:\n{self.up.output[-3000:]}",
        )
        took = time.monotonic() - killed_at
        assert self.job(job_id)["status"] == "completed"
        keys = rationale_keys(self.database_url, job_id)
        assert len(keys) == ITEMS, "missing rationales"
        assert len(set(keys)) == ITEMS, "duplicate rationales"
        assert count_rows(self.database_url, m.RationaleFailure) == 0
        return took


def stop(up: Up) -> None:
    if up.proc.poll() is None:
        try:
            up.interrupt()
        except subprocess.TimeoutExpired:
            up.kill()


@pytest.fixture
def embedded_up(services_root: Path) -> Iterator[Up]:
    up = Up(services_root / f"drill-{time.monotonic_ns()}", "--no-teacher")
    try:
        yield up
    finally:
        stop(up)


def test_embedded_redis_and_postgres_killed_mid_job(embedded_up: Up, teacher_server: str) -> None:
    drill = Drill(embedded_up, teacher_server)
    home = embedded_up.home
    for server, pid_of in (
        ("redis", lambda: int((home / "redis/redis.pid").read_text())),
        ("postgres", lambda: int((home / "postgres/data/postmaster.pid").read_text().split()[0])),
    ):
        job_id = drill.submit()
        seen = len(embedded_up.lines)
        os.kill(pid_of(), signal.SIGKILL)
        killed_at = time.monotonic()
        embedded_up.wait_for(rf"{server} exited \(signal SIGKILL\); restarting", after=seen, timeout=60)
        took = drill.recovers(job_id, killed_at)
        print(f"\ndrill: embedded {server} kill -9 mid-job -> job completed {took:.0f}s after the kill")


@pytest.fixture
def external_redis(tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], str, list[str]]]:
    """A redis-server of the test's own on a free port (AOF in tmp_path), never the machine's."""
    port = free_port()
    argv = [str(_redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    argv += ["--appendonly", "yes", "--save", "", "--requirepass", "drill-password"]
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL)]
    url = f"redis://:drill-password@127.0.0.1:{port}/0"
    try:
        yield procs, url, argv
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_external_redis_restarted_mid_job(
    services_root: Path, clean_db: str, external_redis, teacher_server: str
) -> None:
    procs, redis_url, argv = external_redis
    up = Up(
        services_root / f"drill-{time.monotonic_ns()}",
        "--no-teacher",
        database_url=clean_db,
        redis_url=redis_url,
    )
    try:
        drill = Drill(up, teacher_server, clean_db)
        job_id = drill.submit()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        killed_at = time.monotonic()
        time.sleep(3)  # down for a while, then back on the same port and data
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        took = drill.recovers(job_id, killed_at)
        print(
            f"\ndrill: external redis kill -9 + restart mid-job -> job completed {took:.0f}s after the kill"
        )
        assert re.search(r"redis\s+redis://:\*\*\*@", up.output)
    finally:
        stop(up)
