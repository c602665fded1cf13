"""`distillery data export-lm-eval` writes a task lm-evaluation-harness loads offline, and lm-eval's own
`hf` model scores it question by question as distillery's scorer does (`acc`, `acc_norm`); lm-eval's
`local-completions` model through the gateway's /v1/completions scores it as its `hf` model does, with
the transformers backend and (f16 GGUF on llama.cpp, log-likelihoods within a measured tolerance) with
the llamacpp backend."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from gateway_support import LiveGateway, gateway_settings, make_key
from transformers import AutoTokenizer
from typer.testing import CliRunner

from distillery.config import Settings
from distillery.datasets import load_jsonl, sample_file
from distillery.distill.encoding import StudentEncoder
from distillery.distill.evaluate import EvalOptions, evaluate
from distillery.distill.trainer import load_student
from distillery.export import cached_export
from distillery.lm_eval_export import TARGET_DELIMITER, task_name
from distillery.modelhub import resolve_model
from distillery_launcher.cli.main import app

N = 8
# |llama.cpp on the f16 GGUF - transformers in float32| of an option's log-likelihood (a sum over its
# tokens) on the tiny model: at most 9.6e-4 over 600 options (all 100 ARC and 50 OBQA dev questions),
# 2e-4 on average; the tolerance keeps a 5x margin. The closest two options of the N questions here
# are 4.9e-3 apart (acc; 1e-2 per character for acc_norm), so f16 does not flip an answer.
LLAMACPP_LL_ABS = 5e-3


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


def _lm_eval(tasks: Path, model: str, model_args: str, batch_size: int = 4) -> tuple[dict, list[dict]]:
    """lm-eval's metrics of the exported ARC task and its samples in question order."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    name = task_name("arc", "dev")
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[name],
        task_manager=TaskManager(include_path=str(tasks)),
        batch_size=batch_size,
        log_samples=True,
    )
    return results["results"][name], sorted(results["samples"][name], key=lambda s: s["doc_id"])


def _hf(tasks: Path, model_dir: Path) -> tuple[dict, list[dict]]:
    return _lm_eval(tasks, "hf", f"pretrained={model_dir},dtype=float32,device=cpu")


@pytest.mark.timeout(900)
def test_lm_eval_hf_scores_the_exported_task_as_distillery_does(tmp_path: Path) -> None:
    out = _export(tmp_path)
    model_dir = resolve_model("tiny-causal")
    metrics, samples = _hf(out, model_dir)

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
    assert metrics["acc,none"] == pytest.approx(ours.metrics["acc"], abs=1e-4)
    assert metrics["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"], abs=1e-4)


@pytest.mark.timeout(900)
def test_lm_eval_local_completions_through_the_gateway_scores_as_its_hf_model(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval's OpenAI-style client (token-id prompts, echo, logprobs) against /v1/completions."""
    out = _export(tmp_path)
    model_dir = resolve_model("tiny-causal")
    hf_metrics, hf_samples = _hf(out, model_dir)
    metrics, samples = _through_gateway(
        out, gateway_settings(settings, default_model=str(model_dir)), model_dir, monkeypatch
    )
    assert [s["doc"]["id"] for s in samples] == [s["doc"]["id"] for s in hf_samples]
    for ours, theirs in zip(samples, hf_samples, strict=True):
        lls = [float(resp[0]) for resp in ours["filtered_resps"]]
        assert lls == pytest.approx([float(resp[0]) for resp in theirs["filtered_resps"]], abs=1e-3)
        assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"])
    assert metrics["acc,none"] == pytest.approx(hf_metrics["acc,none"], abs=1e-6)
    assert metrics["acc_norm,none"] == pytest.approx(hf_metrics["acc_norm,none"], abs=1e-6)


def _through_gateway(
    tasks: Path, settings: Settings, model_dir: Path, monkeypatch: pytest.MonkeyPatch, client_args: str = ""
) -> tuple[dict, list[dict]]:
    """lm-eval's `local-completions` (`client_args`: more model_args) against a gateway on `settings`."""
    with LiveGateway(settings) as gw:
        key = make_key(settings.database_url or "", ("infer",))
        monkeypatch.setenv("OPENAI_API_KEY", key)  # what local-completions sends as its Bearer token
        served = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        return _lm_eval(
            tasks,
            "local-completions",
            f"model={served['data'][0]['id']},base_url={gw.url}/v1/completions,"
            f"tokenizer_backend=huggingface,tokenizer={model_dir},max_retries=1{client_args}",
        )


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("runtime", ["inprocess", "server"])
def test_lm_eval_local_completions_through_the_llamacpp_backend_scores_as_its_hf_model(
    runtime: str, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The llamacpp backend (the student's f16 GGUF; either runtime, the server's scoring its echoed
    prompts on an in-process context) scores echoed token-id prompts, several per request and several
    requests at once, as lm-eval's `hf` model does: same acc and acc_norm, and each option's
    log-likelihood within the f16-vs-float32 tolerance."""
    out = _export(tmp_path)
    model_dir = resolve_model("tiny-causal")
    hf_metrics, hf_samples = _hf(out, model_dir)
    llamacpp = gateway_settings(
        settings,
        default_model=str(model_dir),
        student_backend="llamacpp",
        llamacpp_runtime=runtime,
        llamacpp_outtype="f16",
    )
    cached_export(model_dir, llamacpp.gguf_exports, "f16")  # before the gateway: its wait covers loading only
    metrics, samples = _through_gateway(out, llamacpp, model_dir, monkeypatch, ",num_concurrent=2")
    assert [s["doc"]["id"] for s in samples] == [s["doc"]["id"] for s in hf_samples]
    diff = 0.0
    for ours, theirs in zip(samples, hf_samples, strict=True):
        lls = [float(resp[0]) for resp in ours["filtered_resps"]]
        hf_lls = [float(resp[0]) for resp in theirs["filtered_resps"]]
        diff = max(diff, *(abs(a - b) for a, b in zip(lls, hf_lls, strict=True)))
        assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"]), ours["doc"]["id"]
    print(f"llamacpp ({runtime}) f16 vs hf float32: max |log-likelihood difference| {diff:.2e}")
    assert diff <= LLAMACPP_LL_ABS
    assert metrics["acc,none"] == pytest.approx(hf_metrics["acc,none"], abs=1e-6)
    assert metrics["acc_norm,none"] == pytest.approx(hf_metrics["acc_norm,none"], abs=1e-6)
