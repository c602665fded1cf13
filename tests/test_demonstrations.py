"""In-context demonstrations reach every teacher kind, and each rationale row records what was shown.

A job runs through the real gateway, Celery worker, PostgreSQL and Redis against an OpenAI-compatible
stand-in (the teacher is outside the system) that records every prompt: a chat teacher and a completion
teacher, once on a pool without stored rationales (every user's own dataset) and once on a pool seeded
with the vendored paper rationales.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_support import ServerThread, Stack, import_arc
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from distillery.config import Settings
from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.rationales.prompts import answer_target
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.store.db import session_scope

RATIONALE = "Heat comes from friction, so the rough dry surfaces give the most heat."
POOL = 200  # the whole vendored ARC train split: the seeded case needs every rationale's example
ASKED = 4


class TeacherStandIn:
    """OpenAI-compatible chat and completion endpoints that record each request and answer RATIONALE."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completion, methods=["POST"]),
            ]
        )

    async def _reply(self, request: Request, kind: str, obj: str, choice: dict) -> JSONResponse:
        body = await request.json()
        self.requests.append((kind, body))
        usage = {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}
        return JSONResponse(
            {
                "id": kind,
                "object": obj,
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, **choice}],
                "usage": usage,
            }
        )

    async def chat(self, request: Request) -> JSONResponse:
        message = {"role": "assistant", "content": RATIONALE}
        return await self._reply(request, "chat", "chat.completion", {"message": message})

    async def completion(self, request: Request) -> JSONResponse:
        return await self._reply(request, "completion", "text_completion", {"text": " " + RATIONALE})


@pytest.fixture
def standin() -> Iterator[TeacherStandIn]:
    teacher = TeacherStandIn()
    with ServerThread(teacher.app) as server:
        teacher.url = server.url  # type: ignore[attr-defined]
        yield teacher


def _run_job(settings: Settings, tmp_path: Path, standin: TeacherStandIn, seeded: bool) -> list[tuple]:
    # A dataset of its own per case: rationales other tests import must not seed this pool.
    dataset = "arc_demos_seeded" if seeded else "arc_demos_plain"
    import_arc(settings.database_url, POOL, name=dataset)
    if seeded:
        with session_scope(settings.database_url) as session:
            rat_store.import_rationale_file(
                session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", dataset, "train"
            )
    with Stack(settings, tmp_path) as stack:
        base = f"{standin.url}/v1"  # type: ignore[attr-defined]
        stack.register("chatty", base, "m", "chat", timeout_s=30)
        stack.register("plain", base, "m", "completion", timeout_s=30)
        job = stack.submit(
            dataset=dataset,
            split="train",
            limit=ASKED,
            teachers=["chatty", "plain"],
            in_context={"strategy": "random", "k": 2, "seed": 3},
            generation={"max_tokens": 32, "temperature": 0.0},
        )
        stack.worker(concurrency=2)
        view = stack.wait(job["id"], timeout=300)
        assert view["status"] == "completed", view
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(
                m.Teacher.name,
                m.Example.external_id,
                m.Rationale.incontext_ids,
                m.Rationale.incontext_rationales,
            )
            .join(m.Example, m.Example.id == m.Rationale.example_id)
            .join(m.Teacher, m.Teacher.id == m.Rationale.teacher_id)
            .where(m.Rationale.job_id == job["id"])
        ).all()
    assert len(rows) == 2 * ASKED
    return [tuple(row) for row in rows]


@pytest.mark.parametrize("seeded", [False, True], ids=["no-rationales", "seeded-rationales"])
def test_every_teacher_kind_is_shown_every_demonstration_and_rows_record_it(
    settings: Settings, tmp_path: Path, standin: TeacherStandIn, seeded: bool
) -> None:
    rows = _run_job(settings, tmp_path, standin, seeded)
    examples = {e.id: e for e in load_jsonl(sample_file("arc", "train"))}
    flags_seen: set[bool] = set()
    for teacher, external_id, shown, carried in rows:
        assert len(shown) == len(carried) == 2 and external_id not in shown
        flags_seen.update(carried)
        target = examples[external_id]
        if teacher == "chatty":
            [body] = [
                b
                for kind, b in standin.requests
                if kind == "chat" and target.question.strip() in b["messages"][-1]["content"]
            ]
            turns = body["messages"][1:-1]
            assert [t["role"] for t in turns] == ["user", "assistant"] * len(shown)
            for j, (demo_id, has_rationale) in enumerate(zip(shown, carried, strict=True)):
                demo = examples[demo_id]
                user, reply = turns[2 * j]["content"], turns[2 * j + 1]["content"]
                assert demo.question.strip() in user
                if has_rationale:
                    assert answer_target(demo) in user and not reply.startswith("Answer:")
                else:
                    # Asked plainly; the gold answer is the reply.
                    assert "Answer:" not in user and reply == f"Answer: {answer_target(demo)}"
        else:
            [body] = [
                b
                for kind, b in standin.requests
                if kind == "completion"
                and b["prompt"].rsplit("\n\n", 1)[-1].find(target.question.strip()) >= 0
            ]
            blocks = body["prompt"].split("\n\n")[1:-1]
            assert len(blocks) == len(shown)
            for block, demo_id, has_rationale in zip(blocks, shown, carried, strict=True):
                demo = examples[demo_id]
                assert demo.question.strip() in block and f"Answer: {answer_target(demo)}" in block
                assert ("\nRationale: " in block) is has_rationale
    # Without stored rationales no demonstration has one; seeded, the paper's rationales are shown.
    assert (True in flags_seen) is seeded
