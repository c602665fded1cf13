"""A seq2seq student (the paper's FLAN-T5 family; here the tiny random T5) behind the same API."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from gateway_support import LiveGateway, gateway_settings, make_key

from distillery.config import Settings
from distillery.modelhub import resolve_model


def test_t5_student_completes_chats_and_predicts(settings: Settings) -> None:
    t5 = resolve_model("tiny-t5")
    with LiveGateway(gateway_settings(settings, default_model=str(t5))) as gw:
        headers = {"Authorization": f"Bearer {make_key(settings.database_url, ('infer',))}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=120) as client:
            prompts = [f"translate {i}: " + "word " * i for i in range(6)]
            body = {"model": "tiny-t5", "max_tokens": 6, "temperature": 0}
            alone = [client.post("/v1/completions", json={**body, "prompt": p}).json() for p in prompts]
            with ThreadPoolExecutor(6) as pool:
                together = list(
                    pool.map(
                        lambda p: client.post("/v1/completions", json={**body, "prompt": p}).json(), prompts
                    )
                )
            assert [r["choices"][0]["text"] for r in together] == [r["choices"][0]["text"] for r in alone]
            assert all(r["usage"]["completion_tokens"] <= 6 for r in alone)

            chat = client.post(
                "/v1/chat/completions",
                json={**body, "messages": [{"role": "user", "content": "Hello"}], "stream": True},
            )
            assert chat.status_code == 200 and chat.text.rstrip().endswith("data: [DONE]")

            options = ["a cat", "a dog", "a fish"]
            answer = client.post("/v1/predict", json={"question": "Which swims?", "options": options}).json()
            assert answer["answer"] == options[answer["answer_index"]]
