"""/v1/predict with the converted SmolLM2-135M-Instruct on 50 vendored ARC dev questions, and its
likelihood fallback against `distillery eval` on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from gateway_support import LiveGateway, copy_model, gateway_settings, make_key, tiny_model
from typer.testing import CliRunner

from distillery.config import Settings
from distillery.datasets import load_jsonl, sample_file
from distillery.distill.export import STUDENT_INFO
from distillery.modelhub import resolve_model
from distillery_launcher.cli.main import app

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


@pytest.mark.parametrize("answer_format", [None, "option_text"])
def test_likelihood_fallback_scores_options_as_distillery_eval_does(
    settings: Settings, tmp_path: Path, answer_format: str | None
) -> None:
    """One scorer: the option scores /v1/predict falls back on are `distillery eval`'s acc_norm scores,
    in the answer format the model was trained on (none written: `(b) option text`, as before)."""
    questions = load_jsonl(sample_file("arc", "dev"))[:4]
    model = tiny_model()
    if answer_format is not None:
        model = copy_model(tmp_path / "student")
        (model / STUDENT_INFO).write_text(json.dumps({"answer_format": answer_format}))
    predictions = tmp_path / "eval.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(model),
            "--dataset",
            "arc",
            "--limit",
            "4",
            "--no-calibrate",
            "--max-new-tokens",
            "4",
            "-o",
            str(predictions),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in map(json.loads, predictions.read_text().splitlines())}
    with LiveGateway(gateway_settings(settings, default_model=str(model))) as gw:
        headers = {"Authorization": f"Bearer {make_key(settings.database_url, ('infer',))}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=120) as client:
            answers = []
            for q in questions:
                response = client.post(
                    "/v1/predict", json={"question": q.question, "options": list(q.options)}
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
    fallbacks = [(q, a) for q, a in zip(questions, answers, strict=True) if a["method"] == "likelihood"]
    assert fallbacks, "the random tiny model should name no option at least once"
    for q, answer in fallbacks:
        row = rows[q.id]
        assert answer["option_scores"] == pytest.approx(row["acc_norm_scores"], abs=1e-4)
        assert answer["answer_index"] == row["acc_norm_predicted"]
    assert all(a["option_scores"] is None for a in answers if a["method"] == "generation")
