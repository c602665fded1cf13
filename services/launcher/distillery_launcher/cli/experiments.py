"""`distillery experiments`: the paper's table (baselines, TinyLLM, ablations, alpha sweep) and plots."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from distillery.config import get_settings
from distillery_launcher.cli.common import fail, require_choice, services

if TYPE_CHECKING:
    from distillery.distill.experiments import Preset

app = typer.Typer(
    help="Reproduce the shape of the paper's experiments at a size this machine runs.", no_args_is_help=True
)


def _presets() -> dict[str, Preset]:
    from distillery.distill.experiments import PRESETS

    return PRESETS


@app.command("presets")
def presets() -> None:
    """List the presets and what each runs."""
    for preset in _presets().values():
        typer.echo(f"{preset.name}: {preset.description}")
        typer.echo(
            f"  student {preset.student}, datasets {', '.join(preset.datasets)}, "
            f"train {preset.train_limit or 'all'}, eval {preset.eval_split}[:{preset.eval_limit or 'all'}], "
            f"alpha sweep {list(preset.alpha_sweep)}"
        )


@app.command("run")
def run(
    preset: str = typer.Option("cpu-small", "--preset", help="smoke, cpu-small, cpu-evidence or paper."),
    datasets: str | None = typer.Option(None, "--datasets", help="Comma-separated (default: the preset's)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Report folder (default ARTIFACTS/experiments/PRESET)."
    ),
    student: str | None = typer.Option(
        None, "--student", help="Override the preset's student (name or HF dir)."
    ),
    no_incontext_job: list[str] = typer.Option(
        [], "--no-incontext-job", help="DATASET=JOB_ID: a rationale job made with in_context.strategy=none."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid and exit."),
) -> None:
    """Run every configuration not finished yet (re-running resumes), then write results.md and PNG plots."""
    from distillery.datasets import dataset_file
    from distillery.distill import experiments as ex
    from distillery.distill.checks import locate_student
    from distillery.distill.report import markdown, plots

    presets_ = _presets()
    require_choice("--preset", preset, list(presets_))
    chosen = presets_[preset]
    names = [d.strip() for d in (datasets.split(",") if datasets else chosen.datasets) if d.strip()]
    settings = get_settings()
    for name in names:
        for split in ("train", chosen.eval_split):
            try:
                dataset_file(name, split, settings.datasets_dir)
            except (FileNotFoundError, ValueError) as exc:
                fail(f"--datasets: {exc}")
    jobs: dict[str, str] = {}
    for item in no_incontext_job:
        dataset, sep, job = item.partition("=")
        if not sep or not job:
            fail(f"--no-incontext-job '{item}' is not DATASET=JOB_ID")
        jobs[dataset] = job
    student_name = student or chosen.student
    if locate_student(None, student_name) is None and not dry_run:
        if student is None:
            fail(
                f"preset {preset} trains '{student_name}', whose weights are not on this machine (no package "
                f"ships them): download them elsewhere and pass --student DIR (an HF model directory)"
            )
        fail(
            f"--student '{student_name}' is not a known model name or an HF model directory (preset {preset})"
        )
    grid = ex.plan(chosen, names, student_name, jobs, ex.rationale_teachers(names, settings))
    typer.echo(f"preset {preset}: {len(grid)} configurations on {', '.join(names)} with {student_name}")
    for experiment in grid:
        typer.echo(f"  {experiment.key}")
    if dry_run:
        return
    out_dir = output or settings.artifacts / "experiments" / preset
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with services(settings) as urls:
        data_lines = ex.prepare_data(urls.database_url, settings, names, ("train", chosen.eval_split))
        for line in data_lines:
            typer.echo(line, err=True)
        done: list[dict] = []

        def on_start(item: ex.Experiment, run_id: str, created: bool) -> None:
            minutes = (time.monotonic() - started) / 60
            verb = "starting" if created else "resuming"
            typer.echo(f"[{minutes:5.1f} min] {verb} {item.key} (run {run_id})", err=True)

        def on_result(result: dict) -> None:
            done.append(result)
            ex.save_results(done, out_dir, chosen, data_lines, student_name)
            acc = "-" if result["accuracy"] is None else f"{100 * result['accuracy']:.1f}%"
            typer.echo(f"{result['key']}: {result['status']} accuracy {acc}", err=True)

        results = ex.run_grid(urls.database_url, settings, grid, on_result=on_result, on_start=on_start)
    minutes = (time.monotonic() - started) / 60
    _write_report(results, chosen, student_name, data_lines, minutes, out_dir, markdown, plots)
    typer.echo(f"report: {out_dir / 'results.md'} ({minutes:.1f} min)")
    if any(r["status"] != "completed" for r in results):
        raise typer.Exit(1)


def _write_report(
    results: list[dict],
    preset: Preset,
    student: str,
    data_lines: list[str],
    minutes: float,
    out_dir: Path,
    markdown: Callable[..., str],
    plots: Callable[[list[dict], Path], Any],
) -> None:
    (out_dir / "results.md").write_text(markdown(results, preset, student, data_lines, minutes))
    plots(results, out_dir)
    body = {
        "preset": preset.name,
        "student": student,
        "minutes": minutes,
        "data": data_lines,
        "results": results,
    }
    (out_dir / "results.json").write_text(json.dumps(body, indent=2) + "\n")


@app.command("report")
def report(
    folder: Path = typer.Argument(..., help="A folder holding results.json from `experiments run`."),
) -> None:
    """Rewrite results.md and the plots from results.json (no training)."""
    from distillery.distill.report import markdown, plots

    path = folder / "results.json"
    if not path.is_file():
        fail(f"{path} not found (run `distillery experiments run` first)")
    body = json.loads(path.read_text())
    presets_ = _presets()
    if body.get("preset") not in presets_:
        fail(f"{path}: unknown preset {body.get('preset')!r} (accepted: {', '.join(presets_)})")
    preset = presets_[body["preset"]]
    _write_report(
        body["results"],
        preset,
        body.get("student") or preset.student,
        body.get("data", []),
        body.get("minutes"),
        folder,
        markdown,
        plots,
    )
    typer.echo(f"report: {folder / 'results.md'}")
