"""`distillery demo`, the README's first command, end to end at its smallest size."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
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
    assert re.search(r"exact McNemar p = \d\.\d{3}, 95 % CI \[\S+, \S+\] -> (beyond noise|noise)", out), out[
        -3000:
    ]
    assert re.search(r"artifacts: model \S+", out) and "demo finished in" in out


def test_the_table_says_which_differences_are_noise(capsys: pytest.CaptureFixture[str]) -> None:
    from distillery_launcher.cli.demo import _table

    before = [True] * 8 + [False] * 32
    _table(before, Counter(a=40), [True] * 9 + [False] * 31, Counter(b=40), "arc-demo")
    small = capsys.readouterr().out
    assert "| SmolLM2-135M-Instruct, untrained | 20.0% | a:40 |" in small
    assert "1 right only after training, 0 only before; exact McNemar p = 1.000" in small
    assert small.rstrip().endswith("-> noise: no evidence of a difference")
    _table(before, Counter(a=40), [True] * 30 + [False] * 10, Counter(b=40), "arc-demo")
    assert capsys.readouterr().out.rstrip().endswith("-> beyond noise")
