"""The vLLM backend: the same API when the student runs behind an OpenAI-compatible vLLM server.

No vLLM runs here (it needs a GPU). The upstream is a second real gateway with the in-process backend,
which speaks the same OpenAI completions protocol the proxy uses (token-id prompts, `echo`, `logprobs`,
streaming), so the proxy's answers can be compared with the engine's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from gateway_support import LiveGateway, gateway_settings, make_key

from distillery.config import Settings

MODEL = "tiny-causal"
HI = [{"role": "user", "content": "Hi"}]


def both(direct: httpx.Client, proxy: httpx.Client, path: str, body: dict) -> tuple[dict, dict]:
    a, b = direct.post(path, json=body), proxy.post(path, json=body)
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    return a.json(), b.json()


@pytest.fixture
def pair(settings: Settings) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    upstream_key = make_key(settings.database_url, ("infer",), "vllm-upstream")
    with LiveGateway(gateway_settings(settings)) as upstream:
        proxied = gateway_settings(
            settings, student_backend="vllm", vllm_url=f"{upstream.url}/v1", vllm_api_key=upstream_key
        )
        with LiveGateway(proxied) as proxy:
            headers = {"Authorization": f"Bearer {make_key(settings.database_url, ('infer',))}"}
            with (
                httpx.Client(base_url=upstream.url, headers=headers, timeout=120) as direct,
                httpx.Client(base_url=proxy.url, headers=headers, timeout=120) as via_proxy,
            ):
                assert proxy.app.state.manager.backend_kind == "vllm"
                yield direct, via_proxy


def test_proxy_answers_like_the_engine(pair: tuple[httpx.Client, httpx.Client]) -> None:
    direct, proxy = pair
    completion = {"model": MODEL, "prompt": ["Hello", "World"], "max_tokens": 6, "temperature": 0, "n": 2}
    a, b = (
        direct.post("/v1/completions", json=completion).json(),
        proxy.post("/v1/completions", json=completion),
    )
    assert b.status_code == 200, b.text
    assert [c["text"] for c in b.json()["choices"]] == [c["text"] for c in a["choices"]]
    assert b.json()["usage"] == a["usage"]

    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    a, b = (
        direct.post("/v1/chat/completions", json=chat).json(),
        proxy.post("/v1/chat/completions", json=chat).json(),
    )
    assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]

    question = {"question": "Which is a colour?", "options": ["red", "dog", "seven"]}
    a, b = both(direct, proxy, "/v1/predict", question)
    assert (b["answer_index"], b["method"]) == (a["answer_index"], a["method"])


def test_proxy_streams_and_checks_the_context_itself(pair: tuple[httpx.Client, httpx.Client]) -> None:
    direct, proxy = pair
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    whole = direct.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    with proxy.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == whole

    too_long = proxy.post("/v1/completions", json={"model": MODEL, "prompt": [1] * 2040, "max_tokens": 20})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
