"""`distillery data export-lm-eval` writes a task lm-evaluation-harness loads offline, and lm-eval's own
`hf` model scores it question by question as distillery's scorer does (`acc`, `acc_norm`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer
from typer.testing import CliRunner

from distillery.datasets import load_jsonl, sample_file
from distillery.distill.encoding import StudentEncoder
from distillery.distill.evaluate import EvalOptions, evaluate
from distillery.distill.trainer import load_student
from distillery.lm_eval_export import TARGET_DELIMITER, task_name
from distillery.modelhub import resolve_model
from distillery_launcher.cli.main import app

N = 8


def _export(tmp_path: Path) -> Path:
    out = tmp_path / "tasks"
    result = CliRunner().invoke(
        app, ["data", "export-lm-eval", "arc", "--split", "dev", "-o", str(out), "--limit", str(N)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_export_writes_a_multiple_choice_task_and_its_documents(tmp_path: Path) -> None:
    out = _export(tmp_path)
    name = task_name("arc", "dev")
    config = yaml.safe_load((out / f"{name}.yaml").read_text())
    assert config["task"] == name and config["output_type"] == "multiple_choice"
    assert config["target_delimiter"] == TARGET_DELIMITER
    assert {m["metric"] for m in config["metric_list"]} == {"acc", "acc_norm"}
    docs = [
        json.loads(line)
        for line in Path(config["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()
    ]
    examples = load_jsonl(sample_file("arc", "dev"))[:N]
    assert [d["id"] for d in docs] == [e.id for e in examples]
    assert docs[0]["prompt"].startswith("predict: ") and docs[0]["choices"][0].startswith("(a) ")
    assert [d["gold"] for d in docs] == [e.answer for e in examples]


def test_export_names_a_missing_dataset(tmp_path: Path, settings) -> None:
    result = CliRunner().invoke(app, ["data", "export-lm-eval", "nosuchset", "-o", str(tmp_path / "x")])
    assert result.exit_code != 0 and "nosuchset" in result.output


@pytest.mark.timeout(900)
def test_lm_eval_hf_scores_the_exported_task_as_distillery_does(tmp_path: Path) -> None:
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    out = _export(tmp_path)
    name = task_name("arc", "dev")
    model_dir = resolve_model("tiny-causal")
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32,device=cpu",
        tasks=[name],
        task_manager=TaskManager(include_path=str(out)),
        batch_size=4,
        log_samples=True,
    )
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])

    # Distillery's scorer on the same questions; the exported prompt is the plain (no chat template) one.
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoder = StudentEncoder(tokenizer, seq2seq=False, max_input_tokens=1024, use_chat_template=False)
    examples = load_jsonl(sample_file("arc", "dev"))[:N]
    ours = evaluate(
        load_student(model_dir, False).eval(),
        encoder,
        examples,
        EvalOptions(batch_size=4, max_new_tokens=1, calibrate=False),
    )
    assert len(samples) == len(ours.predictions) == N
    for sample, row in zip(samples, ours.predictions, strict=True):
        assert sample["doc"]["id"] == row["id"]
        lls = [float(resp[0]) for resp in sample["filtered_resps"]]
        assert row["acc_scores"] == pytest.approx(lls, abs=1e-3)
        assert sample["acc"] == float(row["acc_predicted"] == row["gold"])
        assert sample["acc_norm"] == float(row["acc_norm_predicted"] == row["gold"])
    metrics = results["results"][name]
    assert metrics["acc,none"] == pytest.approx(ours.metrics["acc"], abs=1e-4)
    assert metrics["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"], abs=1e-4)
