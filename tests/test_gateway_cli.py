"""`distillery gateway`: uvicorn on the app factory, URLs from the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
from gateway_support import free_port, make_key, tiny_model, wait_until
from typer.testing import CliRunner

from distillery.config import Settings
from distillery_launcher.cli.main import app


def test_a_bad_option_names_it_and_the_accepted_values() -> None:
    result = CliRunner().invoke(app, ["gateway", "--log-level", "loud"])
    assert result.exit_code == 2
    assert "--log-level 'loud'" in result.output and "critical, error, warning, info, debug" in result.output


def test_gateway_command_serves_with_two_workers(settings: Settings, tmp_path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "DISTILLERY_HOME": str(tmp_path / "home"),
        "DISTILLERY_DEFAULT_MODEL": str(tiny_model()),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cli = [sys.executable, "-m", "distillery_launcher.cli.main"]
    argv = [*cli, "gateway", "--port", str(port), "--workers", "2"]
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 180, "the gateway command")
        headers = {"Authorization": f"Bearer {make_key(settings.database_url, ('admin',))}"}

        def served() -> list[str]:
            return [m["id"] for m in httpx.get(f"{url}/v1/models", headers=headers).json()["data"]]

        # Each worker loads its own model and the kernel picks which one answers: wait until
        # several answers in a row list it.
        wait_until(lambda: all(served()[:1] == ["tiny-causal"] for _ in range(8)), 180, "both models")
        # Both workers may answer; /metrics adds them up (prometheus-client multiprocess mode).
        for _ in range(4):
            httpx.get(f"{url}/v1/models", headers=headers)
        metrics = httpx.get(f"{url}/metrics", headers=headers).text
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith(
                'distillery_gateway_requests_total{method="GET",route="/v1/models",status="200"}'
            )
        ]
        assert counted and sum(counted) >= 5
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
