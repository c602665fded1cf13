"""Opt-in: the rationale pipeline against a real vLLM OpenAI-compatible server.

    VLLM_TEACHER_URL=http://host:8000/v1 pytest -m vllm

Optional: VLLM_TEACHER_MODEL (default: the first model the server lists), VLLM_TEACHER_API_STYLE
(`chat`, the default, for instruct models; `completion` for base models).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from jobs_support import Stack, import_arc, rationale_keys

from distillery.config import Settings

VLLM_URL = os.environ.get("VLLM_TEACHER_URL", "").rstrip("/")

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_URL, reason="set VLLM_TEACHER_URL to a vLLM server's /v1 URL to run this"),
]


def test_pipeline_against_a_vllm_teacher(settings: Settings, tmp_path: Path) -> None:
    model = (
        os.environ.get("VLLM_TEACHER_MODEL")
        or httpx.get(f"{VLLM_URL}/models", timeout=30).json()["data"][0]["id"]
    )
    style = os.environ.get("VLLM_TEACHER_API_STYLE", "chat")
    import_arc(settings.database_url, 24)
    with Stack(settings, tmp_path) as stack:
        stack.register("vllm", VLLM_URL, model, style, timeout_s=300, max_concurrency=8)
        job = stack.submit(
            dataset="arc",
            limit=16,
            teachers=["vllm"],
            in_context={"strategy": "random", "k": 2},
            generation={"max_tokens": 128, "temperature": 0.0},
        )
        stack.worker(concurrency=4)
        view = stack.wait(job["id"], timeout=900)
        assert view["status"] == "completed", view
        keys = rationale_keys(settings.database_url, job["id"])
        assert len(keys) == len(set(keys)) == 16
        rows = stack.http.get(f"/v1/rationale-jobs/{job['id']}/rationales", params={"limit": 100}).json()[
            "data"
        ]
        assert all(r["text"] and r["completion_tokens"] and r["latency_ms"] > 0 for r in rows)
        lines = stack.http.get(f"/v1/rationale-jobs/{job['id']}/export").text.splitlines()
        assert len(lines) == 16 and json.loads(lines[0])["teacher"] == "vllm"
