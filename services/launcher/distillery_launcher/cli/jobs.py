"""`distillery jobs`: submit, follow, cancel and export rationale jobs through the gateway's REST API."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import typer
from tqdm import tqdm

from distillery.config import get_settings
from distillery.datasets import SPLITS
from distillery.rationales.incontext import STRATEGIES
from distillery_launcher.cli.common import fail, require_choice

app = typer.Typer(
    help="Rationale jobs on the gateway: submit, status, watch, cancel, export.", no_args_is_help=True
)

FINISHED = ("completed", "completed_with_errors", "cancelled", "failed")

JobId = Annotated[str, typer.Argument(help="The job's id.")]
GatewayUrl = Annotated[
    str | None, typer.Option("--gateway-url", help="Gateway base URL (default: settings.gateway_url).")
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="DISTILLERY_API_KEY", help="API key (default: settings.api_key)."),
]


@contextmanager
def gateway_client(
    gateway_url: str | None, api_key: str | None, timeout: float | None = 30.0
) -> Iterator[httpx.Client]:
    settings = get_settings()
    key = api_key or settings.api_key
    if not key:
        fail(
            "no API key: pass --api-key or set DISTILLERY_API_KEY (create one with `distillery keys create`)"
        )
    url = (gateway_url or settings.gateway_url).rstrip("/")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as client:
        try:
            yield client
        except httpx.TransportError as exc:
            fail(
                f"cannot reach the gateway at {url} ({type(exc).__name__}); is it running (`distillery up`)?"
            )


def _checked(response: httpx.Response) -> dict:
    """The JSON body, or exit with the gateway's error message (field and accepted values included)."""
    if response.is_success:
        return response.json()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    fail(f"{response.status_code}: {message}")


@contextmanager
def _stream(client: httpx.Client, path: str, params: dict | None = None) -> Iterator[httpx.Response]:
    """A streamed GET, or exit with the gateway's error message."""
    with client.stream("GET", path, params=params) as response:
        if not response.is_success:
            response.read()
            _checked(response)
        yield response


def _summary(job: dict) -> str:
    lines = [
        f"job {job['id']}  {job['status']}  {job['dataset']}/{job['split']}  "
        f"{job['done']} done, {job['failed']} failed of {job['total']}",
    ]
    for t in job["progress"]:
        lines.append(
            f"  {t['teacher']:<24} {t['done']:>6} done {t['failed']:>5} failed / {t['total']:<6} "
            f"tokens {t['prompt_tokens']} in, {t['completion_tokens']} out"
        )
    for err in job.get("errors", [])[:5]:
        lines.append(f"  error: {err['teacher']} {err['example_id']}#{err['sample_index']}: {err['error']}")
    if job.get("error_count", 0) > 5:
        lines.append(f"  ... {job['error_count']} failures in all")
    return "\n".join(lines)


@app.command()
def submit(
    dataset: str = typer.Option(
        ..., "--dataset", "-d", help="A stored dataset (see `distillery data list`)."
    ),
    teacher: list[str] = typer.Option(..., "--teacher", "-t", help="Teacher name; repeat for several."),
    split: str = typer.Option("train", "--split", help=f"One of {', '.join(SPLITS)}."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="The first N examples of the split."),
    ids: str | None = typer.Option(None, "--ids", help="Comma-separated example ids (instead of --limit)."),
    strategy: str = typer.Option(
        "random", "--strategy", help=f"In-context selection: {', '.join(STRATEGIES)}."
    ),
    k: int = typer.Option(2, "--k", min=0, help="Demonstrations per prompt (0 with --strategy none)."),
    samples: int = typer.Option(1, "--samples", min=1, help="Rationales per example and teacher."),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Override the teachers' max_tokens."
    ),
    temperature: float | None = typer.Option(
        None, "--temperature", min=0.0, help="Override the temperature."
    ),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Submitting again with the same key returns the same job."
    ),
    watch_: bool = typer.Option(False, "--watch", help="Follow the job's progress until it ends."),
    gateway_url: GatewayUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Queue a rationale job; prints its id (and follows it with --watch)."""
    require_choice("--split", split, SPLITS)
    require_choice("--strategy", strategy, STRATEGIES)
    if ids is not None and limit is not None:
        fail("give either --limit or --ids, not both")
    body: dict = {
        "dataset": dataset,
        "split": split,
        "teachers": teacher,
        "in_context": {"strategy": strategy, "k": 0 if strategy == "none" else k},
        "samples_per_example": samples,
        "generation": {
            key: value
            for key, value in (("max_tokens", max_tokens), ("temperature", temperature))
            if value is not None
        },
    }
    if limit is not None:
        body["limit"] = limit
    if ids is not None:
        body["ids"] = [i.strip() for i in ids.split(",") if i.strip()]
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with gateway_client(gateway_url, api_key) as client:
        job = _checked(client.post("/v1/rationale-jobs", json=body, headers=headers))
    typer.echo(job["id"])
    typer.echo(f"queued: {job['total']} rationales ({len(job['teachers'])} teacher(s))", err=True)
    if watch_:
        watch(job["id"], gateway_url, api_key)


@app.command()
def status(
    job_id: JobId,
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON view."),
    gateway_url: GatewayUrl = None,
    api_key: ApiKey = None,
) -> None:
    """A job's status, per-teacher progress, token usage and first errors."""
    with gateway_client(gateway_url, api_key) as client:
        job = _checked(client.get(f"/v1/rationale-jobs/{job_id}"))
    typer.echo(json.dumps(job, indent=2) if as_json else _summary(job))


@app.command("list")
def list_jobs(
    limit: int = typer.Option(20, "--limit", min=1, max=100),
    gateway_url: GatewayUrl = None,
    api_key: ApiKey = None,
) -> None:
    """The newest jobs."""
    with gateway_client(gateway_url, api_key) as client:
        page = _checked(client.get("/v1/rationale-jobs", params={"limit": limit}))
    for job in page["data"]:
        typer.echo(
            f"{job['id']}  {job['status']:<22} {job['dataset']}/{job['split']:<6} "
            f"{job['done'] + job['failed']}/{job['total']}  {','.join(job['teachers'])}"
        )


def _events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream."""
    event, data = "message", list[str]()
    for line in response.iter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


@app.command()
def watch(job_id: JobId, gateway_url: GatewayUrl = None, api_key: ApiKey = None) -> None:
    """Follow a job's progress (server-sent events) with a progress bar; exit 0 if it completes cleanly."""
    job: dict | None = None
    with (
        gateway_client(gateway_url, api_key, timeout=None) as client,
        _stream(client, f"/v1/rationale-jobs/{job_id}/events") as response,
        tqdm(total=None, unit="rationale", desc=job_id[:8], file=sys.stderr) as bar,
    ):
        for event, data in _events(response):
            if event not in ("progress", "end"):
                continue
            job = json.loads(data)
            bar.total = job["total"]
            bar.n = job["done"] + job["failed"]
            bar.set_postfix_str(
                f"{job['status']}, failed {job['failed']}, tokens {job['usage']['total_tokens']}"
            )
            bar.refresh()
            if event == "end":
                break
    if job is None:
        fail(f"the event stream of job {job_id} ended without news")
    typer.echo(_summary(job))
    if job["status"] != "completed":
        raise typer.Exit(1)


@app.command()
def cancel(job_id: JobId, gateway_url: GatewayUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a job: no further teacher calls; rationales already stored stay."""
    with gateway_client(gateway_url, api_key) as client:
        job = _checked(client.post(f"/v1/rationale-jobs/{job_id}/cancel"))
    typer.echo(_summary(job))


@app.command()
def export(
    job_id: JobId,
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: stdout)."),
    teacher: list[str] | None = typer.Option(
        None, "--teacher", "-t", help="Only these teachers, in this order."
    ),
    gateway_url: GatewayUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Write a job's rationales as JSON Lines in the ../shared/rationales format."""
    params: dict = {"format": "jsonl"}
    if teacher:
        params["teacher"] = teacher
    with gateway_client(gateway_url, api_key, timeout=None) as client:
        total = _checked(client.get(f"/v1/rationale-jobs/{job_id}"))["done"]
        with _stream(client, f"/v1/rationale-jobs/{job_id}/export", params) as response:
            sink = output.open("w", encoding="utf-8") if output else sys.stdout
            written = 0
            try:
                with tqdm(
                    total=total, unit="line", desc="export", file=sys.stderr, disable=output is None
                ) as bar:
                    for line in response.iter_lines():
                        if line:
                            sink.write(line + "\n")
                            written += 1
                            bar.update()
            finally:
                if output:
                    sink.close()
    if output:
        typer.echo(f"{written} rationales -> {output}", err=True)
