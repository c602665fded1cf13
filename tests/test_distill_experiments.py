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
from distillery.distill.experiments import (
    PAPER_TEACHERS,
    PRESETS,
    plan,
    prepare_data,
    rationale_teachers,
    run_grid,
)
from distillery.distill.report import markdown, paired_section, plots
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


def test_paper_preset_plans_no_cell_that_needs_missing_rationales():
    preset = PRESETS["paper"]
    teachers_of = rationale_teachers(list(preset.datasets), get_settings())
    assert "llama-2-7b-chat" not in teachers_of["piqa"]  # PIQA has FLAN-T5 rationales only
    grid = plan(preset, list(preset.datasets), "/models/flan-t5-base", teachers_of=teachers_of)
    for e in grid:
        if e.config.method == "tinyllm":
            assert e.config.teachers and set(e.config.teachers) <= teachers_of[e.dataset], e.key
    piqa = [e.label for e in grid if e.dataset == "piqa"]
    assert piqa[:4] == ["inference-only", "label-ft", "lora", "tinyllm"]
    assert not [label for label in piqa if label.startswith("w/o")]
    assert next(e for e in grid if e.key == "piqa/tinyllm").config.teachers == ["flan-t5-xl"]
    # A dataset without any rationales gets the baselines only; the report shows n/a in the other cells.
    bare = plan(preset, ["piqa"], "/models/flan-t5-base", teachers_of={"piqa": set()})
    assert [e.label for e in bare] == ["inference-only", "label-ft", "lora"]
    results = [
        {"key": e.key, "dataset": e.dataset, "label": e.label, "method": e.config.method, "status": "failed"}
        for e in plan(preset, ["arc", "piqa"], "/m", teachers_of={"arc": set(PAPER_TEACHERS), "piqa": set()})
    ]
    table = markdown(results, preset, "/m", [], None)
    assert "| tinyllm | failed | n/a |" in table


def test_cpu_evidence_plan_is_paired_obqa_with_the_fixed_recipe():
    preset = PRESETS["cpu-evidence"]
    grid = plan(preset, list(preset.datasets), teachers_of={"obqa": set(PAPER_TEACHERS)})
    assert [e.label for e in grid] == [
        "inference-only", "label-ft", "lora", "tinyllm", "w/o flan-t5-xl", "w/o llama-2-7b-chat",
    ]  # fmt: skip
    for e in grid:
        cfg = e.config
        assert (cfg.dataset, cfg.eval.split, cfg.eval.limit) == ("obqa", "dev", 500)  # the same 500
        assert cfg.limit is not None and cfg.limit >= 300
        assert cfg.hyperparameters.lr_scheduler == "constant"
        assert cfg.filters.shuffle_options and cfg.answer_format == "option_text"
    tinyllm = next(e for e in grid if e.label == "tinyllm").config
    assert tinyllm.teachers == list(PAPER_TEACHERS) and tinyllm.alpha == 0.5
    assert len({e.idempotency_key() for e in grid}) == len(grid)


def test_gpu_small_plan_is_three_methods_on_full_train_sets_in_bf16():
    preset = PRESETS["gpu-small"]
    teachers_of = {d: set(PAPER_TEACHERS) for d in preset.datasets}
    grid = plan(preset, list(preset.datasets), teachers_of=teachers_of)
    assert [e.key for e in grid] == [
        f"{d}/{label}"
        for d in ("obqa", "arc", "riddle")
        for label in ("inference-only", "label-ft", "tinyllm")
    ]
    for e in grid:
        assert e.config.student == "smollm2-135m" and e.config.limit is None and e.config.eval.limit is None
        assert e.config.hyperparameters.precision == "bf16"


def test_report_pairs_every_two_methods_on_the_same_questions():
    ids = [f"q{i}" for i in range(40)]
    a = [i < 30 for i in range(40)]  # 30 right
    b = [i < 10 or i >= 35 for i in range(40)]  # 15 right: 10 both, 20 only A, 5 only B
    results = [
        {"dataset": "obqa", "label": "label-ft", "status": "completed", "question_ids": ids, "correct": a},
        {"dataset": "obqa", "label": "tinyllm", "status": "completed", "question_ids": ids, "correct": b},
        {
            "dataset": "obqa",
            "label": "other",
            "status": "completed",
            "question_ids": ids[:5],
            "correct": a[:5],
        },
    ]
    text = "\n".join(paired_section(results))
    row = next(line for line in text.splitlines() if line.startswith("| obqa | label-ft | tinyllm |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:8] == ["40", "10", "20", "5", "+37.5"]
    assert float(cells[9]) < 0.01  # exact McNemar of 20 vs 5
    assert "| obqa | label-ft | other |" not in text  # different questions: no pair


def test_paper_preset_without_flan_t5_weights_names_student_dir():
    from typer.testing import CliRunner

    from distillery_launcher.cli.main import app

    result = CliRunner().invoke(app, ["experiments", "run", "--preset", "paper", "--datasets", "arc"])
    assert result.exit_code != 0
    assert "--student DIR" in result.output


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
