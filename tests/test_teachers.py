"""Teacher backends: the OpenAI-compatible client against the real llama.cpp teacher server, the TGI client
against a small server speaking TGI's /generate protocol (TGI itself is outside our system), the
precomputed teacher, and the teacher registry against PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.rationales.checks import is_truncated
from distillery.rationales.prompts import teacher_prompt
from distillery.records import Demonstration, Example
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.teachers.base import GenerationParams, TeacherError, TeacherSpec
from distillery.teachers.openai_compat import OpenAICompatTeacher
from distillery.teachers.precomputed import PrecomputedTeacher
from distillery.teachers.registry import (
    get_teacher_by_name,
    list_teachers,
    make_client,
    spec_from_row,
    upsert_teacher,
)
from distillery.teachers.tgi import TGITeacher

ARC = load_jsonl(sample_file("arc", "train"))[:4]
TARGET = ARC[0]
DEMOS = [
    Demonstration(
        ARC[1], "Magnets attract iron, and the refrigerator door is made of steel, which contains iron."
    ),
    Demonstration(ARC[2], ""),
]
SHORT = GenerationParams(max_tokens=48, temperature=0.0, seed=0)


def run(coro):
    return asyncio.run(coro)


async def generate_once(spec: TeacherSpec, example: Example = TARGET, params: GenerationParams = SHORT):
    client = make_client(spec)
    try:
        return await client.generate(example, DEMOS, params)
    finally:
        await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """A real uvicorn server for `app` in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "stand-in server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---------------------------------------------------------------- the real llama.cpp teacher server


def local(teacher_server: str, model: str, api_style: str) -> TeacherSpec:
    return TeacherSpec(name=model, base_url=teacher_server, model=model, api_style=api_style, timeout_s=300)


def test_chat_teacher_smollm2_returns_a_rationale_with_usage(teacher_server: str) -> None:
    gen = run(generate_once(local(teacher_server, "smollm2-135m", "chat")))
    assert gen.text.strip()
    assert gen.finish_reason in ("stop", "length")
    assert gen.prompt_tokens and gen.prompt_tokens > 50  # system + one demonstration + target
    assert gen.completion_tokens and 0 < gen.completion_tokens <= SHORT.max_tokens
    assert gen.latency_ms > 0
    assert gen.extra["model"] == "smollm2-135m"


def test_completion_teacher_gemma_base_model_returns_a_rationale(teacher_server: str) -> None:
    gen = run(generate_once(local(teacher_server, "gemma3-270m", "completion")))
    assert gen.finish_reason in ("stop", "length")
    assert gen.prompt_tokens and gen.prompt_tokens > 50
    assert gen.completion_tokens and 0 < gen.completion_tokens <= SHORT.max_tokens
    assert gen.latency_ms > 0
    # A base model runs on into an invented next item; the stop strings end the rationale there.
    assert "\nQuestion:" not in gen.text


def test_length_limit_is_reported_and_flags_truncation(teacher_server: str) -> None:
    params = GenerationParams(max_tokens=5, temperature=0.0)
    gen = run(generate_once(local(teacher_server, "smollm2-135m", "chat"), params=params))
    assert gen.finish_reason == "length"
    assert gen.completion_tokens == 5
    assert is_truncated(gen.text, gen.finish_reason)


def test_one_server_serves_both_models_side_by_side(teacher_server: str) -> None:
    """Interleaved requests reach the model they name (the tokenizers differ, so prompt counts do)."""
    params = GenerationParams(max_tokens=4, temperature=0.0)

    async def both():
        specs = [local(teacher_server, name, "completion") for name in ("smollm2-135m", "gemma3-270m")] * 2
        return await asyncio.gather(*(generate_once(spec, params=params) for spec in specs))

    smol, gemma, smol2, gemma2 = run(both())
    assert smol.prompt_tokens == smol2.prompt_tokens
    assert gemma.prompt_tokens == gemma2.prompt_tokens
    assert smol.prompt_tokens != gemma.prompt_tokens


def test_a_model_the_server_does_not_serve_is_a_permanent_error(teacher_server: str) -> None:
    with pytest.raises(TeacherError, match="HTTP 404") as caught:
        run(generate_once(local(teacher_server, "llama-9-400b", "chat")))
    assert not caught.value.retryable


# ------------------------------------------------ error classification (OpenAI-compatible protocol)


def openai_standin(status: int, delay_s: float = 0.0) -> Starlette:
    async def reply(request: Request) -> JSONResponse:
        await asyncio.sleep(delay_s)
        return JSONResponse({"error": {"message": f"status {status}", "type": "x", "code": None}}, status)

    return Starlette(routes=[Route("/v1/chat/completions", reply, methods=["POST"])])


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (502, True), (503, True), (429, True), (400, False), (404, False)]
)
def test_http_errors_are_classified_for_the_caller_to_retry(status: int, retryable: bool) -> None:
    with serve(openai_standin(status)) as url:
        spec = TeacherSpec(name="remote", base_url=f"{url}/v1", model="m")
        with pytest.raises(TeacherError) as caught:
            run(generate_once(spec))
    assert caught.value.retryable is retryable
    assert f"HTTP {status}" in str(caught.value)


def test_timeout_is_retryable_and_the_client_does_not_retry_itself() -> None:
    calls = []

    async def slow(request: Request) -> JSONResponse:
        calls.append(1)
        await asyncio.sleep(3)
        return JSONResponse({}, 500)

    app = Starlette(routes=[Route("/v1/chat/completions", slow, methods=["POST"])])
    with serve(app) as url:
        spec = TeacherSpec(name="slow", base_url=f"{url}/v1", model="m", timeout_s=0.5)
        with pytest.raises(TeacherError, match="timed out") as caught:
            run(generate_once(spec))
    assert caught.value.retryable
    assert len(calls) == 1


def test_unreachable_server_is_retryable() -> None:
    spec = TeacherSpec(name="gone", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=5)
    with pytest.raises(TeacherError, match="cannot reach") as caught:
        run(generate_once(spec))
    assert caught.value.retryable


# -------------------------------------------------------- TGI native protocol (huggingface_hub client)


class TGIStandIn:
    """Answers POST / and /generate in TGI's JSON shapes; `mode` picks success or a TGI error."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict] = []
        routes = [Route(path, self.generate, methods=["POST"]) for path in ("/", "/generate")]
        self.app = Starlette(routes=routes)

    async def generate(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append({"path": request.url.path, **body})
        if self.mode == "overloaded":
            return JSONResponse({"error": "Model is overloaded", "error_type": "overloaded"}, 503)
        if self.mode == "validation":
            return JSONResponse(
                {"error": "`inputs` must have less than 4096 tokens", "error_type": "validation"}, 422
            )
        if self.mode == "crash":
            return JSONResponse({"error": "worker died"}, 500)
        text = " The door is steel, so the magnet sticks.\n\nQuestion:"
        details = {
            "finish_reason": "stop_sequence",
            "generated_tokens": 11,
            "seed": 7,
            "prefill": [],
            "tokens": [{"id": i, "text": "t", "logprob": -0.1, "special": False} for i in range(11)],
        }
        return JSONResponse([{"generated_text": text, "details": details}])


@pytest.fixture
def tgi() -> Iterator[tuple[TGIStandIn, TeacherSpec]]:
    standin = TGIStandIn()
    with serve(standin.app) as url:
        yield standin, TeacherSpec(name="tgi-teacher", backend="tgi", base_url=url, model="any", timeout_s=10)


def test_tgi_client_sends_the_teacher_forced_prompt_and_reads_details(tgi) -> None:
    standin, spec = tgi
    assert isinstance(make_client(spec), TGITeacher)
    gen = run(generate_once(spec, params=GenerationParams(max_tokens=64, temperature=0.5, seed=3)))
    assert gen.text == "The door is steel, so the magnet sticks."
    assert (gen.finish_reason, gen.completion_tokens, gen.prompt_tokens) == ("stop", 11, None)
    assert gen.latency_ms > 0
    sent = standin.requests[-1]
    assert sent["inputs"] == teacher_prompt(TARGET, DEMOS)
    assert sent["parameters"]["details"] is True
    assert sent["parameters"]["max_new_tokens"] == 64
    assert sent["parameters"]["seed"] == 3
    assert "\n\nQuestion:" in sent["parameters"]["stop"]


@pytest.mark.parametrize(
    ("mode", "retryable"), [("overloaded", True), ("crash", True), ("validation", False)]
)
def test_tgi_errors_are_classified(tgi, mode: str, retryable: bool) -> None:
    standin, spec = tgi
    standin.mode = mode
    with pytest.raises(TeacherError) as caught:
        run(generate_once(spec))
    assert caught.value.retryable is retryable
    assert len(standin.requests) == 1  # no retry inside the client


def test_tgi_unreachable_is_retryable() -> None:
    spec = TeacherSpec(
        name="tgi-gone", backend="tgi", base_url=f"http://127.0.0.1:{free_port()}", timeout_s=5
    )
    with pytest.raises(TeacherError) as caught:
        run(generate_once(spec))
    assert caught.value.retryable


# ------------------------------------------------------------------------------ precomputed teacher


def test_precomputed_teacher_reads_the_release_file() -> None:
    path = SAMPLES_DIR / "rationales" / "arc" / "train.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    want = next(x["rationale"] for x in lines if x["id"] == TARGET.id and x["teacher"] == "llama-2-7b-chat")
    spec = TeacherSpec(name="llama-2-7b-chat", backend="precomputed", base_url=path.as_uri())
    assert isinstance(make_client(spec), PrecomputedTeacher)
    gen = run(generate_once(spec))
    assert gen.text == want and gen.finish_reason is None
    # A folder works too; an id it does not hold is a permanent failure.
    folder = TeacherSpec(name="flan", backend="precomputed", base_url=str(path.parent), model="flan-t5-xl")
    missing = Example("not-there", "Q?", ("a", "b"), 0)
    with pytest.raises(TeacherError) as caught:
        run(generate_once(folder, example=missing))
    assert not caught.value.retryable


# ------------------------------------------------------------------------------------------ registry


def test_upsert_teacher_is_idempotent_by_name_and_updates_config(clean_db: str) -> None:
    spec = TeacherSpec(
        name="smol", base_url="http://127.0.0.1:8100/v1", model="smollm2-135m", max_concurrency=2
    )
    with session_scope(clean_db) as session:
        first = upsert_teacher(session, spec)
        again = upsert_teacher(session, spec)
        assert first.id == again.id
        assert first.prefix == "rationale (smol): " and first.template_version == "cot-tf-v1"
    changed = spec.model_copy(update={"api_style": "completion", "params": GenerationParams(max_tokens=96)})
    with session_scope(clean_db) as session:
        row = upsert_teacher(session, changed)
        assert row.id == first.id
    with session_scope(clean_db) as session:
        rows = list_teachers(session)
        assert [r.name for r in rows] == ["smol"]
        back = spec_from_row(get_teacher_by_name(session, "smol"))
    assert back.api_style == "completion" and back.params.max_tokens == 96 and back.max_concurrency == 2
    assert isinstance(make_client(back), OpenAICompatTeacher)


@pytest.mark.parametrize(
    ("update", "message"),
    [({"prefix": "predict: "}, "answer task"), ({"template_version": "v999"}, "known versions: cot-tf-v1")],
)
def test_upsert_teacher_rejects_bad_config_and_writes_nothing(
    clean_db: str, update: dict, message: str
) -> None:
    spec = TeacherSpec(name="bad", base_url="http://h/v1", model="m", **update)
    with pytest.raises(ValueError, match=message), session_scope(clean_db) as session:
        upsert_teacher(session, spec)
    with session_scope(clean_db) as session:
        assert session.query(m.Teacher).count() == 0


def test_make_client_needs_what_the_backend_needs() -> None:
    with pytest.raises(ValueError, match="needs a base_url"):
        make_client(TeacherSpec(name="x", model="m"))
    with pytest.raises(ValueError, match="served model name"):
        make_client(TeacherSpec(name="x", base_url="http://h/v1"))
    with pytest.raises(ValueError, match="rationale file or folder"):
        make_client(TeacherSpec(name="x", backend="precomputed"))


def test_server_rejects_unknown_models_naming_the_accepted_ones() -> None:
    from distillery_teacher.server import parse_models

    assert parse_models("smollm2-135m, gemma3-270m,smollm2") == ["smollm2-135m", "gemma3-270m"]
    with pytest.raises(ValueError, match="accepted: smollm2-135m, gemma3-270m"):
        parse_models("smollm2-135m,tiny-t5")
