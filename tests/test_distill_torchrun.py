"""A run under `torchrun --nproc_per_node 2` (gloo, CPU): a cancel reaches both ranks, only rank 0 cleans up.

Rank 0 alone reads the run row; it broadcasts the cancel flag at every step end, so rank 1 stops at the
same step instead of waiting in the next all-reduce. A tiny random student keeps the run to seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillery.config import Settings, get_settings
from distillery.datasets import load_jsonl, sample_file
from distillery.distill.runner import last_checkpoint, run_paths
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery.store.examples import import_examples

pytestmark = pytest.mark.slow

TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_row(settings: Settings) -> str:
    body = {
        "student": "tiny-causal",
        "method": "label_ft",
        "dataset": "arc",
        "limit": 64,
        "hyperparameters": {
            "batch_size": 1,
            "max_steps": 100_000,
            "save_steps": 2,
            "logging_steps": 1,
            "max_input_tokens": 32,
            "max_target_tokens": 8,
        },
        "eval": {"split": None},
    }
    with session_scope(settings.database_url) as session:
        import_examples(session, "arc", "train", load_jsonl(sample_file("arc", "train")))
        run, _ = run_store.create_run(session, body)
        return run.id


def _wait(check, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None and not check():
            raise AssertionError(f"torchrun exited ({proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancel_stops_every_rank_and_only_rank_0_deletes(settings: Settings, tmp_path: Path) -> None:
    run_id = _run_row(settings)
    paths = run_paths(settings, run_id)
    # A half-written checkpoint (no trainer_state.json): rank 0 removes it, rank 1 leaves it alone.
    half = paths.checkpoints / "checkpoint-99999"
    half.mkdir(parents=True)
    assert last_checkpoint(paths.checkpoints, clean=False) is None and half.is_dir()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "DISTILLERY_HOME": str(settings.home),
        "DISTILLERY_MODEL_DIR": str(get_settings().models),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "distillery.distill.runner", run_id,
    ]  # fmt: skip
    with (tmp_path / "torchrun.log").open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def step() -> int:
            with session_scope(settings.database_url) as session:
                row = run_store.get_run(session, run_id)
                return row.step if row is not None else 0

        _wait(lambda: step() >= 2, "two training steps", proc)
        with session_scope(settings.database_url) as session:
            assert run_store.request_cancel(session, run_id).status == "cancelling"
        _wait(lambda: proc.poll() is not None, "both ranks to stop", proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (tmp_path / "torchrun.log").read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    with session_scope(settings.database_url) as session:
        row = run_store.get_run(session, run_id)
        assert row is not None and row.status == "cancelled" and row.step < 100_000
    assert not half.exists()
    assert last_checkpoint(paths.checkpoints) is not None  # a cancel keeps the work done so far
