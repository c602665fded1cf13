"""The whole rationale pipeline: REST -> Celery worker process -> teacher -> PostgreSQL -> export.

Live teachers are the session's llama.cpp server (`teacher_server`: SmolLM2-135M chat, Gemma 3 270M
completion); the CLI test uses a precomputed teacher (the vendored paper rationales) to stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_support import Stack, import_arc, rationale_keys
from sqlalchemy import select
from typer.testing import CliRunner

from distillery.config import Settings
from distillery.datasets import SAMPLES_DIR
from distillery.rationales.checks import clean_rationale, is_truncated
from distillery.rationales.prompts import TEMPLATE_VERSION
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.store.db import session_scope
from distillery_launcher.cli.jobs import app as jobs_cli

N = 24


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    import_arc(settings.database_url, N)
    with Stack(settings, tmp_path) as s:
        yield s


def live_teachers(stack: Stack, url: str) -> None:
    # Generous timeouts: one CPU server answers both teachers one request at a time.
    common = {"timeout_s": 900, "max_concurrency": 2}
    stack.register("smol", url, "smollm2-135m", "chat", **common)
    stack.register("gemma", url, "gemma3-270m", "completion", **common)


@pytest.mark.slow
def test_two_live_teachers_store_exactly_48_rationales_and_export_round_trips(
    stack: Stack, teacher_server: str, tmp_path: Path
) -> None:
    live_teachers(stack, teacher_server)
    job = stack.submit(
        dataset="arc",
        split="train",
        limit=N,
        teachers=["smol", "gemma"],
        in_context={"strategy": "random", "k": 2},
        generation={"max_tokens": 64, "temperature": 0.0},
    )
    assert job["total"] == 2 * N
    stack.worker(concurrency=4)
    # Follow it the way a user would: `distillery jobs watch` on the SSE endpoint.
    result = CliRunner().invoke(
        jobs_cli,
        ["watch", job["id"], "--gateway-url", stack.url, "--api-key", stack.key],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    view = stack.wait(job["id"], timeout=60)
    assert view["status"] == "completed", view
    assert [(t["teacher"], t["done"], t["failed"], t["total"]) for t in view["progress"]] == [
        ("smol", N, 0, N),
        ("gemma", N, 0, N),
    ]

    keys = rationale_keys(stack.settings.database_url, job["id"])
    assert len(keys) == 2 * N and len(set(keys)) == 2 * N
    with session_scope(stack.settings.database_url) as session:
        rows = session.execute(
            select(m.Rationale, m.Example.external_id)
            .join(m.Example, m.Example.id == m.Rationale.example_id)
            .where(m.Rationale.job_id == job["id"])
        ).all()
        for row, external_id in rows:
            assert row.prompt_tokens and row.prompt_tokens > 0
            assert row.completion_tokens and 0 < row.completion_tokens <= 64
            assert row.latency_ms and row.latency_ms > 0
            assert row.finish_reason in ("stop", "length")
            assert row.template_version == TEMPLATE_VERSION
            assert len(row.incontext_ids) == 2 and external_id not in row.incontext_ids
            # Not truncated = ends a sentence; a stop at an end token keeps the text's own verdict.
            assert isinstance(row.truncated, bool)
            assert row.truncated or not is_truncated(row.text)
            assert row.finish_reason == "length" or row.truncated == is_truncated(row.text)
        prompt = sum(row.prompt_tokens for row, _ in rows)
        completion = sum(row.completion_tokens for row, _ in rows)
    assert view["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }

    # Export through the CLI, then import the file as two precomputed teachers: same texts, same flags.
    exported = tmp_path / "export.jsonl"
    result = CliRunner().invoke(
        jobs_cli,
        ["export", job["id"], "-o", str(exported), "--gateway-url", stack.url, "--api-key", stack.key],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(lines) == 2 * N
    with session_scope(stack.settings.database_url) as session:
        summary = rat_store.import_rationale_file(
            session, exported, "arc", "train", teacher_map={"smol": "smol-copy", "gemma": "gemma-copy"}
        )
    assert summary.inserted == 2 * N
    # The imported copy exports the same lines through the API, under the copies' names.
    imported = stack.job(summary.job_id)
    assert imported["kind"] == "import" and imported["done"] == 2 * N
    response = stack.http.get(
        f"/v1/rationale-jobs/{summary.job_id}/export", params={"teacher": ["smol-copy", "gemma-copy"]}
    )
    back_lines = [json.loads(line) for line in response.text.splitlines()]
    renamed = {"smol-copy": "smol", "gemma-copy": "gemma"}
    assert [{**line, "teacher": renamed[line["teacher"]]} for line in back_lines] == lines

    stats = stack.http.get("/v1/teachers/smol/stats").json()
    assert stats["count"] == N and stats["tokens_per_s"] > 0


def test_cli_submits_watches_and_exports_a_precomputed_teacher_job(stack: Stack, tmp_path: Path) -> None:
    stack.register(
        "flan", str(SAMPLES_DIR / "rationales" / "arc" / "train.jsonl"), "flan-t5-xl", backend="precomputed"
    )
    stack.worker(concurrency=2)
    base = ["--gateway-url", stack.url, "--api-key", stack.key]
    runner = CliRunner()
    bad = runner.invoke(jobs_cli, ["submit", "--dataset", "nope", "--teacher", "flan", *base])
    assert bad.exit_code == 2
    assert "dataset" in bad.output and "arc" in bad.output
    submitted = runner.invoke(
        jobs_cli,
        [
            "submit",
            "--dataset",
            "arc",
            "--limit",
            "12",
            "--teacher",
            "flan",
            "--strategy",
            "none",
            "--k",
            "0",
            "--idempotency-key",
            "cli-1",
            "--watch",
            *base,
        ],
        catch_exceptions=False,
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.splitlines()[0].strip()
    again = runner.invoke(
        jobs_cli,
        [
            "submit",
            "--dataset",
            "arc",
            "--limit",
            "12",
            "--teacher",
            "flan",
            "--strategy",
            "none",
            "--k",
            "0",
            "--idempotency-key",
            "cli-1",
            *base,
        ],
    )
    assert again.stdout.splitlines()[0].strip() == job_id
    status = runner.invoke(jobs_cli, ["status", job_id, "--json", *base])
    view = json.loads(status.stdout)
    assert view["status"] == "completed" and view["done"] == 12
    out = tmp_path / "flan.jsonl"
    exported = runner.invoke(jobs_cli, ["export", job_id, "-o", str(out), *base])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["teacher"] for line in lines] == ["flan"] * 12
    source = {}
    for raw in (SAMPLES_DIR / "rationales" / "arc" / "train.jsonl").read_text().splitlines():
        line = json.loads(raw)
        if line["teacher"] == "flan-t5-xl":
            source.setdefault(line["id"], line["rationale"])
    assert all(line["rationale"] == clean_rationale(source[line["id"]]) for line in lines)
    refused = runner.invoke(jobs_cli, ["cancel", job_id, *base])
    assert refused.exit_code == 2 and "409" in refused.output
    listed = runner.invoke(jobs_cli, ["list", *base])
    assert job_id in listed.stdout
