"""`distillery demo`, the README's first command, end to end at its smallest size."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.config import Settings
from distillery.store.migrate import scratch_database


@pytest.mark.slow
def test_the_demo_runs_the_whole_job_and_prints_the_table(
    server_pg_url: str, clean_redis: str, tmp_path: Path
) -> None:
    with scratch_database(server_pg_url, prefix="distillery_demo") as database_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": clean_redis,
            "DISTILLERY_HOME": str(tmp_path / "home"),
            # The models converted once for the whole test session (SmolLM2, Gemma for the teachers).
            "DISTILLERY_MODEL_DIR": str(Settings().models),
        }
        env.pop("DISTILLERY_DEFAULT_MODEL", None)
        cli = [sys.executable, "-m", "distillery_launcher.cli.main"]
        argv = [*cli, "demo", "--questions", "4", "--dev", "4"]
        done = subprocess.run(
            [*argv, "--port", "0"], env=env, capture_output=True, text=True, timeout=1500, check=False
        )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "CPU-size teachers" in out  # says honestly what stands in for the GPU teachers
    for teacher in ("smollm2-135m", "gemma3-270m"):
        assert re.search(rf"{teacher}\s+\d/4 done", out), out[-6000:]
    assert re.search(r"\| SmolLM2-135M-Instruct, untrained \| \d+\.\d% \|", out)
    assert re.search(r"\| arc-demo\S* \(TinyLLM, 4 teachers\) \| \d+\.\d% \|", out), out[-3000:]
    assert re.search(r"artifacts: model \S+", out) and "demo finished in" in out
