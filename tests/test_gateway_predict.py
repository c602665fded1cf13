"""/v1/predict with the converted SmolLM2-135M-Instruct on 50 vendored ARC dev questions."""

from __future__ import annotations

import httpx
import pytest
from gateway_support import LiveGateway, gateway_settings, make_key

from distillery.config import Settings
from distillery.datasets import load_jsonl, sample_file
from distillery.modelhub import resolve_model

N = 50


@pytest.mark.slow
def test_arc_predictions_are_valid_and_identical_alone_and_batched(settings: Settings) -> None:
    questions = load_jsonl(sample_file("arc", "dev"))[:N]
    items = [{"question": q.question, "options": list(q.options), "context": q.context} for q in questions]
    smollm = str(resolve_model("smollm2-135m"))
    with LiveGateway(gateway_settings(settings, default_model=smollm)) as gw:
        headers = {"Authorization": f"Bearer {make_key(settings.database_url, ('infer',))}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=600) as client:
            alone = []
            for item in items:
                response = client.post("/v1/predict", json=item)
                assert response.status_code == 200, response.text
                alone.append(response.json())
            batched = client.post("/v1/predict/batch", json={"items": items})
            assert batched.status_code == 200, batched.text
            together = batched.json()["data"]

    for q, answer in zip(questions, alone, strict=True):
        assert 0 <= answer["answer_index"] < len(q.options)
        assert answer["answer"] == q.options[answer["answer_index"]]
        assert answer["model"] == "smollm2-135m"
    assert [a["answer_index"] for a in together] == [a["answer_index"] for a in alone]
    assert [a["method"] for a in together] == [a["method"] for a in alone]
