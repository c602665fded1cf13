"""The official `openai` SDK against a real gateway (uvicorn on a free port, tiny random Llama)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from gateway_support import LiveGateway, gateway_settings, make_key, revoke

from distillery.config import Settings

MODEL = "tiny-causal"


@pytest.fixture
def gateway(settings: Settings) -> Iterator[LiveGateway]:
    with LiveGateway(gateway_settings(settings)) as gw:
        yield gw


def sdk(gw: LiveGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_sdk_chats_completes_streams_and_lists_models(gateway: LiveGateway, settings: Settings) -> None:
    client = sdk(gateway, make_key(settings.database_url, ("infer",)))

    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL, "student"]
    assert client.models.retrieve(MODEL).id == MODEL

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=6, temperature=0
    )
    assert chat.object == "chat.completion" and chat.model == MODEL
    # `student` reaches whatever is served; the answer names the version that gave it.
    assert (
        client.chat.completions.create(
            model="student", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        ).model
        == MODEL
    )
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 6 and chat.usage.total_tokens > chat.usage.completion_tokens

    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].text == completion.choices[1].text

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="Hello", max_tokens=4, temperature=0, stream=True
        )
    )
    assert streamed == completion.choices[0].text


def test_sdk_raises_the_matching_exceptions(gateway: LiveGateway, settings: Settings) -> None:
    url = settings.database_url
    messages = [{"role": "user", "content": "hi"}]

    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "dst_nope_wrong").chat.completions.create(model=MODEL, messages=messages)
    revoked = make_key(url, ("infer",), "revoked")
    revoke(url, revoked)
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, revoked).models.list()
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(gateway, make_key(url, ("jobs:write",))).chat.completions.create(model=MODEL, messages=messages)
    assert "infer" in denied.value.message

    client = sdk(gateway, make_key(url, ("infer",)))
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=messages, temperature=5)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=5000)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)


def test_sdk_gets_rate_limit_error_with_retry_after(settings: Settings) -> None:
    limited = gateway_settings(settings, default_model="none", rate_limit_per_minute=2)
    with LiveGateway(limited) as gw:
        client = sdk(gw, make_key(settings.database_url, ("infer",)))
        client.models.list()
        client.models.list()
        with pytest.raises(openai.RateLimitError) as limited_error:
            client.models.list()
        assert int(limited_error.value.response.headers["Retry-After"]) >= 1
        # Another key has its own bucket.
        sdk(gw, make_key(settings.database_url, ("infer",))).models.list()
