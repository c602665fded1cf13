"""The `llamacpp` student backend through the real gateway: completions, chat, streaming, logprobs,
errors, answers equal to the transformers backend's, and a promote that swaps under load.

The gateway exports the tiny random Llama to GGUF (f32, so greedy answers can be compared with the
transformers backend exactly) and serves it with llama.cpp's continuous batching, with both runtimes:
in the gateway process (llama-cpp-python) and on a supervised `llama-server` child process (whose
prompt log-probabilities, for echo and option scoring, come from an in-process context on the GGUF).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest
from gateway_support import (
    LiveGateway,
    completion,
    copy_model,
    gateway_settings,
    key_client,
    make_key,
    tiny_model,
    truncate_all,
)
from test_hotswap import Clients, register

from distillery.config import Settings
from distillery.export import cached_export

MODEL = "tiny-causal"
complete = partial(completion, model=MODEL)
pytestmark = pytest.mark.slow


RUNTIMES = ["inprocess", "server"]


def llamacpp_settings(base: Settings, runtime: str = "inprocess", **overrides: object) -> Settings:
    return gateway_settings(
        base,
        student_backend="llamacpp",
        llamacpp_outtype="f32",
        llamacpp_slots=4,
        llamacpp_runtime=runtime,
        **overrides,
    )


@pytest.fixture(scope="module")
def base(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    truncate_all(database_url)
    settings = Settings(home=tmp_path_factory.mktemp("home"), database_url=database_url, redis_url=redis_url)
    # Exported before the gateway starts, so its readiness wait covers loading only.
    cached_export(tiny_model(), settings.gguf_exports, "f32")
    return settings


@pytest.fixture(scope="module", params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def gw(base: Settings, runtime: str) -> Iterator[LiveGateway]:
    with LiveGateway(llamacpp_settings(base, runtime)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: LiveGateway, database_url: str) -> Iterator[httpx.Client]:
    with key_client(gw, database_url, ("infer",), "llamacpp-tests") as client:
        yield client


def test_completion_shape_and_usage(http: httpx.Client) -> None:
    body = complete(http, prompt="The sky is", max_tokens=5, temperature=0)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length" and isinstance(choice["text"], str)
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5


def test_several_prompts_and_n(http: httpx.Client) -> None:
    body = complete(http, prompt=["one", "two"], n=2, max_tokens=3, temperature=0)
    texts = [c["text"] for c in body["choices"]]
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3]
    assert body["usage"]["completion_tokens"] == 12


def test_logprobs_and_echo(http: httpx.Client) -> None:
    ids = [504, 3365, 314]
    body = complete(http, prompt=ids, max_tokens=2, temperature=0, echo=True, logprobs=2)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 2
    assert logprobs["token_logprobs"][0] is None
    assert all(isinstance(v, float) and v <= 0 for v in logprobs["token_logprobs"][1:])
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][1:])
    # Without echo (on the server runtime: llama-server's own logprobs), the same generated tokens.
    plain = complete(http, prompt=ids, max_tokens=2, temperature=0, logprobs=2)["choices"][0]["logprobs"]
    assert plain["tokens"] == logprobs["tokens"][-2:]
    assert plain["token_logprobs"] == pytest.approx(logprobs["token_logprobs"][-2:], abs=1e-3)
    # Greedy: each generated token is its position's most likely one.
    for token, value, top in zip(
        plain["tokens"], plain["token_logprobs"], plain["top_logprobs"], strict=True
    ):
        assert len(top) == 2
        assert max(top.values()) == pytest.approx(value) and top[token] == pytest.approx(value)


def test_predict_answers_with_option_scores(http: httpx.Client) -> None:
    """The tiny random model names no option, so /v1/predict scores them (prompt logprobs)."""
    for question in ("Which is a colour?", "2 + 2 ="):
        response = http.post("/v1/predict", json={"question": question, "options": ["red", "seven", "4"]})
        assert response.status_code == 200, response.text
        answer = response.json()
        if answer["method"] == "likelihood":
            assert len(answer["option_scores"]) == 3


def test_chat_and_streaming_agree(http: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    whole = http.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    text = whole.json()["choices"][0]["message"]["content"]
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == text


def test_stop_strings_cut_the_text(http: httpx.Client) -> None:
    free = complete(http, prompt="Count: 1, 2,", max_tokens=12, temperature=0)["choices"][0]["text"]
    if len(free) < 3:
        pytest.skip("the random model ended at once")
    stop = free[1:3]
    cut = complete(http, prompt="Count: 1, 2,", max_tokens=12, temperature=0, stop=[stop])["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == free[: free.index(stop)]


def test_seeded_sampling_repeats(http: httpx.Client) -> None:
    first = complete(http, prompt="Once", max_tokens=6, temperature=1.0, seed=7)["choices"][0]["text"]
    again = complete(http, prompt="Once", max_tokens=6, temperature=1.0, seed=7)["choices"][0]["text"]
    assert first == again


def test_too_long_a_request_is_a_400_naming_the_field(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4000})
    assert response.status_code == 400 and "context" in response.text


def test_concurrent_requests_answer_as_alone(http: httpx.Client) -> None:
    prompts = [f"Question {i}:" for i in range(12)]
    alone = [complete(http, prompt=p, max_tokens=6, temperature=0)["choices"][0]["text"] for p in prompts[:3]]
    with ThreadPoolExecutor(12) as pool:
        together = list(
            pool.map(
                lambda p: complete(http, prompt=p, max_tokens=6, temperature=0)["choices"][0]["text"],
                prompts,
            )
        )
    assert together[:3] == alone


def test_greedy_answers_match_the_transformers_backend(
    gw: LiveGateway, base: Settings, http: httpx.Client
) -> None:
    prompts = ["The capital of France is", "1 2 3", "Hello", "A B C D"]
    mine = [complete(http, prompt=p, max_tokens=8, temperature=0)["choices"][0]["text"] for p in prompts]
    with LiveGateway(gateway_settings(base)) as other:
        key = make_key(base.database_url or "", ("infer",), "transformers")
        with httpx.Client(base_url=other.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            theirs = [
                c.post(
                    "/v1/completions", json={"model": MODEL, "prompt": p, "max_tokens": 8, "temperature": 0}
                ).json()["choices"][0]["text"]
                for p in prompts
            ]
    assert mine == theirs


@pytest.mark.parametrize("swap_runtime", RUNTIMES)
def test_promote_swaps_under_load_without_a_failed_request(
    settings: Settings, tmp_path: Path, swap_runtime: str
) -> None:
    v1, v2 = copy_model(tmp_path / "v1"), copy_model(tmp_path / "v2")
    admin = make_key(settings.database_url or "", ("admin",), "admin")
    # Six clients in a loop on a tiny model outrun the default per-key budget: this test is about the swap.
    s = llamacpp_settings(
        settings, swap_runtime, default_model="none", registry_poll_s=30.0, rate_limit_per_minute=100_000
    )
    with (
        LiveGateway(s) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {admin}"}) as api,
    ):
        first, second = register(api, v1), register(api, v2)
        promoted = api.post(
            f"/v1/registry/models/{first['id']}/promote", params={"wait": "true"}, timeout=300
        )
        assert promoted.status_code == 200 and promoted.json()["serving"] is True
        with Clients(gw.url, make_key(settings.database_url or "", ("infer",)), n=6) as clients:
            clients.wait_served_by("arc-student:v1", 120)
            assert api.post(f"/v1/registry/models/{second['id']}/promote").status_code == 200
            clients.wait_served_by("arc-student:v2", 300, last=3)
        outcomes = [r for per_client in clients.results for r in per_client]
        assert not [r for r in outcomes if r[0] != 200]
        assert {m for _, m in outcomes} == {"arc-student:v1", "arc-student:v2"}
        backend = api.get("/v1/models").json()["data"][0]
        assert backend["id"] == "arc-student:v2"


def test_a_killed_llama_server_is_started_again(base: Settings, database_url: str) -> None:
    """The server runtime supervises its child: after a kill -9, requests get 503 + Retry-After at
    most while it restarts, then answers as before."""
    with (
        LiveGateway(llamacpp_settings(base, "server")) as gw,
        key_client(gw, database_url, ("infer",), "llamacpp-supervision") as http,
    ):
        # Whatever the registry says is served (an earlier test here may have promoted a model).
        body = {"model": http.get("/v1/models").json()["data"][0]["id"], "prompt": "The sky is"}
        body |= {"max_tokens": 4, "temperature": 0}
        before = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
        slot = gw.app.state.manager._slot
        assert slot is not None
        server = slot.backend.server
        old_pid = server.proc.pid
        os.kill(old_pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        statuses = []
        for _ in range(20):
            response = http.post("/v1/completions", json=body)
            statuses.append(response.status_code)
            if response.status_code == 200:
                assert response.json()["choices"][0]["text"] == before
                break
            assert response.status_code == 503 and response.headers.get("Retry-After"), response.text
        assert statuses[-1] == 200, statuses
        assert server.restarts == 1 and server.proc.pid != old_pid and server.alive
