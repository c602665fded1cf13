"""The experiments grid: its shape, resumability, and the report (markdown table + PNG plots)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from distillery.config import Settings, get_settings
from distillery.distill.experiments import PRESETS, plan, prepare_data, run_grid
from distillery.distill.report import markdown, plots
from distillery.store import runs as run_store
from distillery.store.db import session_scope


def test_cpu_small_grid_has_baselines_tinyllm_ablations_and_a_sweep():
    preset = PRESETS["cpu-small"]
    grid = plan(preset, ["arc", "pubmedqa"])
    labels = {d: [e.label for e in grid if e.dataset == d] for d in ("arc", "pubmedqa")}
    base = ["inference-only", "label-ft", "lora", "tinyllm", "w/o flan-t5-xl", "w/o llama-2-7b-chat"]
    assert labels["pubmedqa"] == base
    # The paper's sweep: 0.01, 0.1, 0.5 (the tinyllm row), 1, 2, 3.
    assert labels["arc"] == [*base, "alpha=0.01", "alpha=0.1", "alpha=1", "alpha=2", "alpha=3"]
    assert len({e.idempotency_key() for e in grid}) == len(grid)
    for e in grid:
        # Paired comparison: every configuration of a dataset answers the same questions.
        assert (e.config.eval.split, e.config.eval.limit) == ("dev", preset.eval_limit)
        assert e.config.limit == preset.train_limit
    wo = next(e for e in grid if e.key == "arc/w/o flan-t5-xl")
    assert wo.config.teachers == ["llama-2-7b-chat"]
    assert next(e for e in grid if e.key == "arc/lora").config.lora is not None
    with_job = plan(preset, ["arc"], no_incontext_jobs={"arc": "j" * 32})
    assert next(e for e in with_job if e.label == "w/o in-context").config.rationale_jobs == ["j" * 32]


def test_grid_runs_once_and_a_second_invocation_skips_finished_configurations(
    settings: Settings, tmp_path: Path
):
    settings = settings.model_copy(update={"model_dir": get_settings().models})
    preset = PRESETS["smoke"]
    grid = [e for e in plan(preset, ["arc"]) if e.label in ("inference-only", "tinyllm")]
    data = prepare_data(settings.database_url, settings, ["arc"], ("train", "dev"))
    assert any("rationales" in line for line in data)
    started: list[str] = []
    first = run_grid(
        settings.database_url, settings, grid, on_start=lambda e, run_id, new: started.append(e.key)
    )
    assert [r["status"] for r in first] == ["completed", "completed"] and len(started) == 2
    again = run_grid(
        settings.database_url, settings, grid, on_start=lambda e, run_id, new: started.append(e.key)
    )
    assert len(started) == 2, "finished configurations ran again"
    assert [r["run_id"] for r in again] == [r["run_id"] for r in first]
    with session_scope(settings.database_url) as session:
        assert len(run_store.list_runs(session)) == 2
    # The smoke preset keeps the exported model, not the optimizer-laden checkpoints.
    trained = settings.artifacts / "runs" / first[1]["run_id"]
    assert (trained / "model" / "config.json").is_file() and not (trained / "checkpoints").exists()

    text = markdown(again, preset, preset.student, data, 1.0)
    assert "| inference-only |" in text and "| tinyllm |" in text and "Predicted letters" in text
    written = plots(again, tmp_path)
    assert [p.name for p in written] == ["accuracy.png", "alpha.png", "loss_curves.png"]
    assert all(p.stat().st_size > 1000 for p in written)


# The grid's parent process under SIGTERM, as `distillery experiments run` is: SIGTERM -> SystemExit.
SIGTERM_PARENT = """
import sys
from distillery.config import get_settings
from distillery.distill.runner import execute_run_in_process
from distillery_launcher.embedded import exit_on_sigterm
with exit_on_sigterm():
    execute_run_in_process(get_settings().database_url, sys.argv[1], get_settings())
"""


def test_sigterm_to_the_grid_stops_its_training_process_and_fails_the_run(settings: Settings):
    settings = settings.model_copy(update={"model_dir": get_settings().models})
    prepare_data(settings.database_url, settings, ["arc"], ("train", "dev"))
    exp = next(e for e in plan(PRESETS["smoke"], ["arc"]) if e.label == "label-ft")
    config = exp.config.model_dump(mode="json")
    config["hyperparameters"]["max_steps"] = 100_000  # still training when the signal comes
    with session_scope(settings.database_url) as session:
        run_id = run_store.create_run(session, config, "test-sigterm")[0].id
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "DISTILLERY_HOME": str(settings.home),
        "DISTILLERY_MODEL_DIR": str(settings.models),
    }
    parent = subprocess.Popen([sys.executable, "-c", SIGTERM_PARENT, run_id], env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            with session_scope(settings.database_url) as session:
                row = run_store.get_run(session, run_id)
                if row.status == "running" and row.step >= 1:
                    break
            assert parent.poll() is None and time.monotonic() < deadline, "the run never started training"
            time.sleep(0.5)
        children = psutil.Process(parent.pid).children(recursive=True)
        assert children
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        parent.kill()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "the training process outlived the grid"
    with session_scope(settings.database_url) as session:
        row = run_store.get_run(session, run_id)
        assert row.status == "failed" and "exited with code -15" in row.error
