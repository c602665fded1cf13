"""The student behind the gateway: OpenAI completions and chat, streaming, batching, limits, predict.

One real gateway (uvicorn, tiny random Llama) serves the module; tests that need other settings start
their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from gateway_support import (
    LiveGateway,
    completion,
    gateway_settings,
    key_client,
    make_key,
    tiny_model,
    truncate_all,
    wait_until,
)
from transformers import AutoModelForCausalLM

from distillery.config import Settings

MODEL = "tiny-causal"


@pytest.fixture(scope="module")
def gw(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    truncate_all(database_url)
    base = Settings(home=tmp_path_factory.mktemp("home"), database_url=database_url, redis_url=redis_url)
    with LiveGateway(gateway_settings(base)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: LiveGateway, database_url: str) -> Iterator[httpx.Client]:
    with key_client(gw, database_url, ("infer",), "serving-tests") as client:
        yield client


def complete(http: httpx.Client, **body: object) -> dict:
    return completion(http, MODEL, **body)


def chat(http: httpx.Client, content: str, **body: object) -> dict:
    messages = [{"role": "user", "content": content}]
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **body})
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(http: httpx.Client, path: str, body: dict) -> list[str]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]


def test_completion_has_the_openai_shape_and_counts_tokens(http: httpx.Client) -> None:
    body = complete(http, prompt="The sky is", max_tokens=5, temperature=0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and isinstance(choice["text"], str)
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


def test_several_prompts_times_n_give_one_choice_each_in_order(http: httpx.Client) -> None:
    body = complete(http, prompt=["one", "two", "three"], n=2, max_tokens=3, temperature=0)
    assert [c["index"] for c in body["choices"]] == list(range(6))
    # Greedy choices of one prompt are the same; different prompts are answered separately.
    texts = [c["text"] for c in body["choices"]]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[4] == texts[5]
    assert body["usage"]["completion_tokens"] == 18


def test_token_id_prompt_with_echo_and_logprobs(http: httpx.Client) -> None:
    ids = [504, 3365, 314]
    body = complete(http, prompt=ids, max_tokens=2, temperature=0, echo=True, logprobs=2)
    [choice] = body["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 2
    assert logprobs["token_logprobs"][0] is None and all(v <= 0 for v in logprobs["token_logprobs"][1:])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"][1:])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    assert choice["text"].startswith("".join(logprobs["tokens"][: len(ids)]))


def test_echoed_prompts_score_alike_from_the_prefill_and_in_chunks(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batched echo scoring reads the prefill's logits; above ECHO_LOGITS_BUDGET each prompt is scored
    alone over the KV cache. Both give the same prompt logprobs, in a batch of prompts of two lengths."""
    from distillery_gateway.engine import transformers_backend

    prompts = [[504, 3365, 314, 1178, 42], [77, 12, 9000]]
    body = {"prompt": prompts, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 3}
    backend_class = transformers_backend.TransformersBackend
    alone_calls = []
    scored_alone = backend_class._prompt_logprobs

    def counted(self: object, *args: object) -> object:
        alone_calls.append(args)
        return scored_alone(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(backend_class, "_prompt_logprobs", counted)
    fused = complete(http, **body)["choices"]
    assert not alone_calls  # both prompts scored from the batch's prefill
    monkeypatch.setattr(transformers_backend, "ECHO_LOGITS_BUDGET", 0)
    alone = complete(http, **body)["choices"]
    assert len(alone_calls) == 2
    for a, b in zip(fused, alone, strict=True):
        assert a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
        assert a["logprobs"]["token_logprobs"][1:] == pytest.approx(
            b["logprobs"]["token_logprobs"][1:], abs=1e-4
        )
        for top_a, top_b in zip(
            a["logprobs"]["top_logprobs"][1:], b["logprobs"]["top_logprobs"][1:], strict=True
        ):
            assert top_a.keys() == top_b.keys()


def test_generated_logprobs_kept_step_by_step_equal_the_full_distribution(http: httpx.Client) -> None:
    """Logprobs kept while generating (the chosen token's and the top-k, never a whole vocabulary per
    step) equal those of transformers' own `output_logits`, and a greedy token is its step's best."""
    ids = [504, 3365, 314]
    body = complete(http, prompt=ids, max_tokens=6, temperature=0, logprobs=3)
    logprobs = body["choices"][0]["logprobs"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model()), dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=6,
            output_logits=True,
            return_dict_in_generate=True,
        )
    full = [torch.log_softmax(step[0].float(), -1) for step in out.logits]
    chosen = out.sequences[0, len(ids) :].tolist()
    assert logprobs["token_logprobs"] == pytest.approx(
        [lp[t].item() for lp, t in zip(full, chosen, strict=True)], abs=1e-4
    )
    for lp, top in zip(full, logprobs["top_logprobs"], strict=True):
        assert sorted(top.values(), reverse=True) == pytest.approx(lp.topk(3).values.tolist(), abs=1e-4)
    assert logprobs["token_logprobs"] == pytest.approx([max(t.values()) for t in logprobs["top_logprobs"]])


def test_stop_sequence_ends_the_text_before_it(http: httpx.Client) -> None:
    free = complete(http, prompt="Once upon a time", max_tokens=12, temperature=0)["choices"][0]["text"]
    assert len(free) > 4
    stop = free[2:4]
    cut = complete(http, prompt="Once upon a time", max_tokens=12, temperature=0, stop=[stop])["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == free[: free.index(stop)]


def test_streamed_chat_equals_the_unstreamed_answer_and_ends_with_done(http: httpx.Client) -> None:
    whole = chat(http, "Say something", max_tokens=8, temperature=0)
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["role"] == "assistant"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something"}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events(http, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_streamed_completion_of_two_prompts_covers_both_choices(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 4, "temperature": 0, "stream": True}
    events = sse_events(http, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["text"]
    whole = complete(http, prompt=["a", "b"], max_tokens=4, temperature=0)
    assert [texts[0], texts[1]] == [c["text"] for c in whole["choices"]]


def test_greedy_answers_are_identical_alone_and_in_a_batch(gw: LiveGateway, http: httpx.Client) -> None:
    prompts = [f"Question {i}: " + "why " * (i * 3) for i in range(8)]
    alone = [chat(http, p, max_tokens=10, temperature=0)["choices"][0]["message"]["content"] for p in prompts]
    batches_before = _batch_histogram(gw)
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: chat(http, p, max_tokens=10, temperature=0), prompts))
    assert [r["choices"][0]["message"]["content"] for r in together] == alone
    # They really shared generate calls: some batch held more than one sequence.
    assert _batch_histogram(gw)["multi"] > batches_before["multi"]


def _batch_histogram(gw: LiveGateway) -> dict[str, float]:
    samples = {
        s.labels.get("le"): s.value
        for m in gw.app.state.metrics.batch_size.collect()
        for s in m.samples
        if s.name.endswith("_bucket")
    }
    return {"multi": samples["+Inf"] - samples["1.0"]}


def test_a_seed_makes_sampling_reproducible(http: httpx.Client) -> None:
    first = complete(http, prompt="Seeded", max_tokens=8, temperature=1.0, seed=1234, n=2)
    again = complete(http, prompt="Seeded", max_tokens=8, temperature=1.0, seed=1234, n=2)
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]


def test_a_prompt_beyond_the_context_is_a_400_naming_the_limit(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": [1] * 2040, "max_tokens": 20})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "2048" in error["message"]


def test_an_unknown_model_is_a_404_listing_the_served_ones(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and MODEL in error["message"]


def test_models_list_names_the_served_model(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [MODEL, "student"]
    assert body["data"][1]["parent"] == MODEL
    assert http.get(f"/v1/models/{MODEL}").json()["max_model_len"] == 2048
    assert http.get("/v1/models/nope").status_code == 404


def test_predict_returns_a_valid_option_and_a_rationale(http: httpx.Client) -> None:
    options = ["red", "green", "blue", "yellow"]
    response = http.post(
        "/v1/predict",
        json={
            "question": "Which colour is grass?",
            "options": options,
            "explain": True,
            "max_rationale_tokens": 6,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 <= body["answer_index"] < 4 and body["answer"] == options[body["answer_index"]]
    assert body["answer_letter"] == "abcd"[body["answer_index"]]
    assert body["method"] in ("generation", "likelihood") and isinstance(body["rationale"], str)
    assert body["model"] == MODEL and body["latency_ms"] > 0


def test_predict_batch_equals_single_calls(http: httpx.Client) -> None:
    items = [
        {"question": f"Q{i}: pick one of these", "options": ["yes", "no", "maybe"][: 2 + i % 2]}
        for i in range(5)
    ]
    single = [http.post("/v1/predict", json=item).json()["answer_index"] for item in items]
    batch = http.post("/v1/predict/batch", json={"items": items})
    assert batch.status_code == 200, batch.text
    assert [p["answer_index"] for p in batch.json()["data"]] == single


def test_a_body_over_the_limit_is_a_413(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 1_100_000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'{"model": "tiny-causal", "prompt": "'
        for _ in range(12):
            yield b"y" * 100_000
        yield b'"}'

    response = http.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_readyz_and_metrics_report_the_served_model(gw: LiveGateway, database_url: str) -> None:
    assert httpx.get(f"{gw.url}/readyz").json()["checks"]["model"] is True
    admin = make_key(database_url, ("admin",), "metrics")
    text_body = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    info = [line for line in text_body.splitlines() if line.startswith("distillery_student_model_info{")]
    assert len(info) == 1 and f'model="{MODEL}"' in info[0] and info[0].endswith(" 1.0")
    for name in (
        "distillery_gateway_requests_total",
        "distillery_gateway_request_duration_seconds_bucket",
        "distillery_student_batch_size_bucket",
        "distillery_student_queue_depth",
        "distillery_student_tokens_total",
    ):
        assert name in text_body


def test_a_client_leaving_a_stream_stops_its_generation(gw: LiveGateway, http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Go on and on", "max_tokens": 2000, "temperature": 0, "stream": True}
    batcher = gw.app.state.manager._slot.backend.batcher
    finished = []  # the jobs of each batch once it ran (observed, not altered)
    run_batch = batcher._run_batch
    batcher._run_batch = lambda jobs: (run_batch(jobs), finished.extend(jobs))
    try:
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200, response.read()
            assert next(line for line in response.iter_lines() if line.startswith("data:"))
        # Closing the connection cancels the job: its batch ends long before 2000 tokens.
        wait_until(lambda: finished and finished[0].future.done(), 120, "the generation to end")
    finally:
        batcher._run_batch = run_batch
    [choice] = finished[0].future.result().choices
    assert choice.num_tokens < 2000, choice.num_tokens
    assert complete(http, prompt="still fine", max_tokens=2, temperature=0)["usage"]["completion_tokens"] == 2
