"""`distillery train`: a training run, in-process (`--local`) or submitted to the gateway and followed."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from pydantic import ValidationError

from distillery.config import get_settings
from distillery.distill.config import METHODS, TrainConfig
from distillery_launcher.cli.common import fail, services
from distillery_launcher.cli.train_options import TrainOptions

FOLLOW_POLL_S = 2.0


def describe_validation(exc: ValidationError) -> str:
    """`field: message` for each problem of a config (the names match the API's fields)."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        lines.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(lines)


def build_config(body: dict) -> TrainConfig:
    try:
        return TrainConfig.model_validate(body)
    except ValidationError as exc:
        fail(describe_validation(exc))


def print_summary(run: dict) -> None:
    """The outcome of a run: status, model, eval accuracy and letter distribution."""
    metrics = run.get("metrics") or {}
    typer.echo(f"run {run['id']}: {run['status']}" + (f" ({run['error']})" if run.get("error") else ""))
    if metrics.get("model_id"):
        typer.echo(f"model {metrics['model_id']} at {run.get('output_dir')}")
    ev = metrics.get("eval")
    if ev:
        line = f"{ev['split']}: accuracy {ev['accuracy']:.3f} ± {ev['stderr']:.3f} (n={ev['n']})"
        if "likelihood_accuracy" in ev:
            line += f", likelihood {ev['likelihood_accuracy']:.3f}"
        if "calibrated_accuracy" in ev:
            line += f", calibrated {ev['calibrated_accuracy']:.3f}"
        typer.echo(line)
        typer.echo(f"predicted letters {ev['letter_distribution']} (gold {ev['gold_distribution']})")


def run_local(cfg: TrainConfig, idempotency_key: str | None) -> dict:
    """Check, record and train `cfg` in this process (tqdm progress from the HF Trainer)."""
    from distillery.distill.checks import ConfigError, resolve_run
    from distillery.distill.runner import execute_run
    from distillery.store import runs as run_store
    from distillery.store.db import session_scope

    settings = get_settings()
    with services(settings) as urls:
        with session_scope(urls.database_url) as session:
            try:
                resolve_run(session, cfg)
            except ConfigError as exc:
                fail(str(exc))
            row, created = run_store.create_run(session, cfg.model_dump(mode="json"), idempotency_key)
            if row.status in ("failed", "cancelled"):
                run_store.requeue(session, row.id)  # the same key again: try again, from its checkpoint
            run_id = row.id
        typer.echo(
            f"run {run_id} ({'new' if created else 'resumed'}): {cfg.method} of {cfg.student}", err=True
        )
        execute_run(urls.database_url, run_id, settings, progress_bar=True)
        with session_scope(urls.database_url) as session:
            done = run_store.get_run(session, run_id)
            if done is None:
                fail(f"run {run_id} is gone from the database")
            return {
                "id": done.id,
                "status": done.status,
                "metrics": done.metrics,
                "error": done.error,
                "output_dir": done.output_dir,
            }


def submit(cfg: TrainConfig, idempotency_key: str | None, follow: bool) -> dict:
    """POST the run to the gateway; with `follow`, show its progress until it ends."""
    import httpx
    from tqdm import tqdm

    settings = get_settings()
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    base = settings.gateway_url.rstrip("/")
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        try:
            response = client.post("/v1/training-runs", json=cfg.model_dump(mode="json"))
        except httpx.HTTPError as exc:
            fail(f"gateway at {base} is not reachable ({type(exc).__name__}); start it or use --local")
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            fail(f"gateway refused the run ({response.status_code}): {message}")
        run = response.json()
        typer.echo(f"run {run['id']} queued", err=True)
        if not follow:
            return run
        bar = tqdm(total=None, unit="step", desc="training")
        while run["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(FOLLOW_POLL_S)
            run = client.get(f"/v1/training-runs/{run['id']}").raise_for_status().json()
            if run["total_steps"] and bar.total != run["total_steps"]:
                bar.total = run["total_steps"]
                bar.refresh()
            bar.update(run["step"] - bar.n)
            if run["loss_curve"]:
                bar.set_postfix(loss=run["loss_curve"][-1].get("loss"), status=run["status"])
        bar.close()
        return run


def train(
    dataset: str = typer.Option(None, "--dataset", help="Stored dataset name (e.g. arc)."),
    student: str = typer.Option(
        "smollm2-135m", "--student", help="Known model name, HF dir, or registry id/name."
    ),
    method: str = typer.Option("tinyllm", "--method", help=f"One of {', '.join(METHODS)}."),
    split: str = typer.Option("train", "--split"),
    limit: int | None = typer.Option(None, "--limit", help="Train on the first N examples."),
    jobs: list[str] = typer.Option([], "--job", help="Rationale job id (repeatable)."),
    teachers: list[str] = typer.Option([], "--teacher", help="Teacher name (repeatable; default: all)."),
    alpha: float = typer.Option(0.5, "--alpha", help="alpha of every teacher not in --alphas."),
    alphas: str | None = typer.Option(None, "--alphas", help="Per-teacher alphas: NAME=A,NAME=A."),
    answer_weight: float = typer.Option(1.0, "--answer-weight", help="w_A, weight of the answer task."),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (implied by --method lora)."),
    lora_r: int = typer.Option(16, "--lora-r"),
    learning_rate: float = typer.Option(5e-5, "--lr"),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps"),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per step (each 1 + M tasks)."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    seed: int = typer.Option(42, "--seed"),
    max_input_tokens: int = typer.Option(512, "--max-input-tokens"),
    max_target_tokens: int = typer.Option(128, "--max-target-tokens"),
    save_steps: int = typer.Option(50, "--save-steps"),
    logging_steps: int = typer.Option(5, "--logging-steps"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16."),
    drop_truncated: bool = typer.Option(False, "--drop-truncated/--keep-truncated"),
    drop_disagreeing: bool = typer.Option(True, "--drop-disagreeing/--keep-disagreeing"),
    samples_per_teacher: int = typer.Option(1, "--samples-per-teacher"),
    shuffle_options: bool = typer.Option(
        True, "--shuffle-options/--keep-option-order", help="Shuffle the answer task's options (seeded)."
    ),
    answer_format: str = typer.Option(
        "option_text", "--answer-format", help="Answer target: option_text (official) or letter_text."
    ),
    lr_scheduler: str = typer.Option(
        "auto",
        "--lr-scheduler",
        help="auto (constant below 200 steps, else linear), linear, constant, cosine.",
    ),
    eval_split: str = typer.Option("dev", "--eval-split", help="Split to evaluate on, or 'none'."),
    eval_limit: int | None = typer.Option(None, "--eval-limit"),
    likelihood: bool = typer.Option(
        True, "--likelihood/--no-likelihood", help="Also score options by likelihood."
    ),
    explain: int = typer.Option(0, "--explain", help="Also ask the student to explain N questions."),
    model_name: str | None = typer.Option(None, "--name", help="Registry name of the trained model."),
    config_file: Path | None = typer.Option(
        None, "--config", help="JSON request body; replaces the options."
    ),
    local: bool = typer.Option(False, "--local", help="Train in this process instead of on the trainer."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Follow a submitted run until it ends."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Submit at most once per key."
    ),
) -> None:
    """Train a student (TinyLLM, label fine-tuning, LoRA) or only evaluate it (inference_only)."""
    opts = TrainOptions(**locals())  # first line: locals() holds exactly the options here
    cfg = build_config(opts.request_body())
    if opts.local:
        run = run_local(cfg, opts.idempotency_key)
    else:
        run = submit(cfg, opts.idempotency_key, opts.follow)
    if run["status"] in ("completed", "failed", "cancelled"):
        print_summary(run)
    if run["status"] == "failed":
        raise typer.Exit(1)
