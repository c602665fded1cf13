"""`distillery teachers`: the local CPU teacher server, teacher configurations, precomputed rationales."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from distillery.config import get_settings
from distillery.datasets import SAMPLES_DIR, SPLITS, DatasetError, dataset_file, load_jsonl
from distillery.store import examples as ex_store
from distillery.store.db import session_scope
from distillery.teachers.base import API_STYLES, BACKENDS, GenerationParams, TeacherSpec
from distillery_launcher.cli.common import fail, services

app = typer.Typer(
    help="Run the local teacher server, register teachers, import rationales.", no_args_is_help=True
)


@app.command()
def serve(
    models: str = typer.Option("smollm2-135m,gemma3-270m", help="Comma-separated GGUF models to serve."),
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    port: int = typer.Option(8100, help="Listen port."),
    n_ctx: int = typer.Option(4096, "--n-ctx", help="Context window per model (tokens)."),
    threads: int | None = typer.Option(None, help="CPU threads per model (default: half the cores)."),
) -> None:
    """Serve local GGUF teachers over the OpenAI API (foreground; Ctrl-C stops)."""
    from distillery_teacher.server import build_config
    from distillery_teacher.server import serve as run_server

    try:
        config = build_config(models, host, port, n_ctx, threads)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(
        f"teacher server: http://{host}:{port}/v1 ({', '.join(m.model_alias or '' for m in config.models)})"
    )
    run_server(config)


def _validation_message(exc: ValidationError) -> str:
    accepted = {"backend": BACKENDS, "api_style": API_STYLES}
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = loc.split(".")[-1]
        hint = f" (accepted: {', '.join(accepted[field])})" if field in accepted else ""
        parts.append(f"--{field.replace('_', '-')}: {err['msg']}{hint}")
    return "; ".join(parts)


@app.command()
def add(
    name: str = typer.Argument(..., help="Teacher name (letters, digits, '.', '_', '-')."),
    backend: str = typer.Option("openai", help=f"One of {', '.join(BACKENDS)}."),
    base_url: str | None = typer.Option(
        None, help="Server URL (openai: http://host:port/v1; tgi: http://host:port)."
    ),
    model: str | None = typer.Option(None, help="Served model name."),
    api_style: str = typer.Option("chat", help=f"One of {', '.join(API_STYLES)} (openai backend)."),
    prefix: str | None = typer.Option(None, help="Instruction prefix of this teacher's student task."),
    template_version: str | None = typer.Option(None, help="Prompt template version (default: current)."),
    max_tokens: int = typer.Option(256, help="Generation length limit."),
    temperature: float = typer.Option(0.7, help="Sampling temperature."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass."),
    max_concurrency: int = typer.Option(4, help="Requests in flight to this teacher."),
    timeout: float = typer.Option(120.0, help="Seconds per request."),
) -> None:
    """Register a teacher, or update the one with this NAME."""
    from distillery.teachers.registry import get_teacher_by_name, upsert_teacher

    try:
        spec = TeacherSpec(
            name=name,
            backend=backend,  # type: ignore[arg-type]
            base_url=base_url,
            model=model,
            api_style=api_style,  # type: ignore[arg-type]
            prefix=prefix,
            template_version=template_version,
            params=GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p),
            max_concurrency=max_concurrency,
            timeout_s=timeout,
        )
    except ValidationError as exc:
        fail(_validation_message(exc))
    if spec.backend in ("openai", "tgi") and not spec.base_url:
        fail(f"--base-url is required for backend '{spec.backend}'")
    if spec.backend == "openai" and not spec.model:
        fail("--model (the served model name) is required for backend 'openai'")
    with services() as urls, session_scope(urls.database_url) as session:
        existed = get_teacher_by_name(session, name) is not None
        try:
            row = upsert_teacher(session, spec)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(
            f"teacher '{row.name}' {'updated' if existed else 'registered'} "
            f"(id {row.id}, prefix {row.prefix!r})"
        )


@app.command("list")
def list_cmd() -> None:
    """Registered teachers."""
    from distillery.teachers.registry import list_teachers

    with services() as urls, session_scope(urls.database_url) as session:
        rows = list_teachers(session)
        if not rows:
            typer.echo(
                "no teachers registered (try: distillery teachers add NAME --base-url ... --model ...)"
            )
        for t in rows:
            where = t.base_url or "-"
            typer.echo(
                f"{t.name:<20} {t.backend:<12} {t.api_style:<10} {t.model or '-':<24} {where}  "
                f"prefix={t.prefix!r}"
            )


def _parse_map(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            fail(f"--teacher-map: expected FILE_NAME=NEW_NAME, got {pair!r}")
        mapping[old.strip()] = new.strip()
    return mapping


def _default_file(dataset: str, split: str) -> Path:
    for root in (get_settings().rationales_dir, SAMPLES_DIR / "rationales"):
        candidate = root / dataset / f"{split}.jsonl"
        if candidate.is_file():
            return candidate
    fail(
        f"no rationale file for {dataset}/{split} under {get_settings().rationales_dir} "
        "or the vendored samples"
    )
    raise AssertionError  # fail() exits


@app.command("import-rationales")
def import_rationales(
    path: Path | None = typer.Argument(None, help="Rationale JSON Lines file (default: the shared one)."),
    dataset: str = typer.Option(..., help="Dataset the ids belong to, e.g. arc."),
    split: str = typer.Option("train", help=f"One of {', '.join(SPLITS)}."),
    teacher_map: list[str] = typer.Option(
        [], "--teacher-map", help="Rename a file teacher: OLD=NEW (repeatable)."
    ),
    job_id: str | None = typer.Option(
        None, help="Import into this job id (default: one job per file content)."
    ),
) -> None:
    """Store a ../shared/rationales-format file as precomputed teachers' output (idempotent)."""
    from distillery.store.rationales import RationaleFileError, import_rationale_file

    if split not in SPLITS:
        fail(f"--split '{split}' is not accepted (accepted: {', '.join(SPLITS)})")
    path = path or _default_file(dataset, split)
    if not path.is_file():
        fail(f"rationale file not found: {path}")
    mapping = _parse_map(teacher_map)
    with services() as urls, session_scope(urls.database_url) as session:
        if ex_store.count_examples(session, dataset, split) == 0:
            # The ids must resolve to stored examples; take the dataset from the shared folder if it is there.
            try:
                source = dataset_file(dataset, split, get_settings().datasets_dir)
                examples = load_jsonl(source)
            except (FileNotFoundError, DatasetError) as exc:
                fail(f"dataset '{dataset}/{split}' is not imported and cannot be found: {exc}")
            ex_store.import_examples(session, dataset, split, examples, source=str(source))
            typer.echo(f"imported dataset {dataset}/{split} first ({len(examples)} examples from {source})")
        try:
            summary = import_rationale_file(session, path, dataset, split, mapping, job_id)
        except RationaleFileError as exc:
            fail(f"{path} rejected, nothing imported.\n{exc}")
        except ValueError as exc:
            fail(str(exc))
    per_teacher = ", ".join(f"{name}: {n}" for name, n in summary.teachers.items())
    typer.echo(
        f"{dataset}/{split}: {summary.lines} rationales "
        f"({summary.inserted} new, {summary.unchanged} already stored) "
        f"in job {summary.job_id} [{per_teacher}]"
    )


def _fmt(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


@app.command()
def stats(teacher: str | None = typer.Option(None, help="Only this teacher.")) -> None:
    """Per teacher: rationales, truncation, answer agreement, length, speed."""
    from distillery.store.rationales import teacher_stats

    with services() as urls, session_scope(urls.database_url) as session:
        rows = teacher_stats(session, teacher)
    if teacher and not rows:
        fail(f"no teacher named '{teacher}' (see: distillery teachers list)")
    typer.echo(
        f"{'teacher':<20} {'backend':<12} {'count':>7} {'trunc%':>7} {'agree%':>7} {'disagr%':>7} "
        f"{'chars':>7} {'tokens':>7} {'tok/s':>7}"
    )
    for r in rows:
        typer.echo(
            f"{r['teacher']:<20} {r['backend']:<12} {r['count']:>7} {_fmt(r['truncated_pct']):>7} "
            f"{_fmt(r['agrees_pct']):>7} {_fmt(r['disagrees_pct']):>7} {_fmt(r['mean_chars']):>7} "
            f"{_fmt(r['mean_completion_tokens']):>7} {_fmt(r['tokens_per_s']):>7}"
        )
