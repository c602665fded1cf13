"""The experiments grid: its shape, resumability, and the report (markdown table + PNG plots)."""

from __future__ import annotations

from pathlib import Path

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
