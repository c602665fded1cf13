"""Malformed requests get a 4xx naming the field and what is accepted, and change nothing.

OpenAI-compatible routes answer 400 (what the `openai` SDK maps to BadRequestError); the project's own
routes answer 422. Every body has OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from gateway_support import LiveGateway, gateway_settings, make_key, truncate_all
from sqlalchemy import func, select

from distillery.config import Settings
from distillery.store import models as m
from distillery.store.db import session_scope

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]


def chat(**fields: object) -> dict:
    return {"model": "tiny-causal", "messages": USER, **fields}


def completion(**fields: object) -> dict:
    return {"model": "tiny-causal", "prompt": "hi", **fields}


def question(**fields: object) -> dict:
    return {"question": "Which?", "options": ["a", "b"], **fields}


# (path, body, status, param the error names, words the message contains)
CASES = [
    (CHAT, {"model": "tiny-causal"}, 400, "messages", "Field required"),
    (CHAT, chat(messages=[]), 400, "messages", "at least 1"),
    (CHAT, chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages.0.role", "'system'"),
    (CHAT, chat(temperature=3), 400, "temperature", "less than or equal to 2"),
    (CHAT, chat(top_p=1.5), 400, "top_p", "less than or equal to 1"),
    (CHAT, chat(n=0), 400, "n", "greater than or equal to 1"),
    (CHAT, chat(max_tokens=-1), 400, "max_tokens", "greater than or equal to 1"),
    (CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4"),
    (CHAT, chat(foo=1), 400, "foo", "unrecognized request argument"),
    (CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", "not supported"),
    (
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "messages.0.content",
        "accepted: text",
    ),
    (CHAT, chat(logprobs=True, stream=True), 400, "logprobs", "when stream is true"),
    (CHAT, chat(top_logprobs=2), 400, "top_logprobs", "needs logprobs"),
    (CHAT, chat(response_format={"type": "json_object"}), 400, "response_format", "not supported"),
    (CHAT, chat(frequency_penalty=0.5), 400, "frequency_penalty", "accepted: 0"),
    (CHAT, chat(max_tokens=100_000), 400, "messages", "maximum context length is 2048"),
    (COMPLETIONS, {"model": "tiny-causal"}, 400, "prompt", "Field required"),
    (COMPLETIONS, completion(prompt=[]), 400, "prompt", "at least 1"),
    (COMPLETIONS, completion(prompt=[-1]), 400, "prompt", "greater than or equal to 0"),
    (COMPLETIONS, completion(prompt=[10**9]), 400, "prompt", "outside the vocabulary"),
    (COMPLETIONS, completion(suffix="x"), 400, "suffix", "not supported"),
    (COMPLETIONS, completion(logprobs=9), 400, "logprobs", "less than or equal to 5"),
    (COMPLETIONS, completion(best_of=3), 400, "best_of", "equal to n"),
    (COMPLETIONS, completion(model=""), 400, "model", "at least 1"),
    ("/v1/predict", question(options=["only"]), 422, "options", "at least 2"),
    ("/v1/predict", question(question=""), 422, "question", "at least 1"),
    ("/v1/predict", question(options=["x"] * 27), 422, "options", "at most 26"),
    ("/v1/predict", question(options=["a", ""]), 422, "options.1", "at least 1"),
    (
        "/v1/predict",
        question(max_rationale_tokens=0),
        422,
        "max_rationale_tokens",
        "greater than or equal to 1",
    ),
    ("/v1/predict", question(extra=True), 422, "extra", "unrecognized request argument"),
    ("/v1/predict/batch", {"items": []}, 422, "items", "at least 1"),
    ("/v1/predict/batch", {"items": [question()] * 65}, 422, "items", "at most 64 items"),
    ("/v1/registry/models", {"name": "has space", "path": "/tmp"}, 422, "name", "should match pattern"),
    ("/v1/registry/models", {"name": "ok"}, 422, "path", "Field required"),
    ("/v1/registry/models", {"name": "ok", "path": "/nonexistent/dir"}, 422, "path", "not a directory"),
]


@pytest.fixture(scope="module")
def api(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    truncate_all(database_url)
    base = Settings(home=tmp_path_factory.mktemp("home"), database_url=database_url, redis_url=redis_url)
    with LiveGateway(gateway_settings(base)) as gw:
        key = make_key(database_url, ("admin",), "validation")
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            yield client


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    CASES,
    ids=[f"{c[0]}:{c[3]}:{i}" for i, c in enumerate(CASES)],
)
def test_malformed_request_is_refused_naming_the_field(
    api: httpx.Client, path: str, body: dict, status: int, param: str, words: str
) -> None:
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split(".")[0] in error["message"] and words in error["message"], error["message"]


def test_broken_json_and_wrong_query_values_are_refused(api: httpx.Client) -> None:
    response = api.post(CHAT, content=b'{"model": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    response = api.get("/v1/registry/models", params={"stage": "live"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "stage"
    assert "'staging', 'production' or 'archived'" in response.json()["error"]["message"]


def test_refused_writes_leave_the_registry_empty(api: httpx.Client, database_url: str) -> None:
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(m.Model)) == 0
