"""The offline model resolver: PyPI GGUF packages become HF directories; tiny random models for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from distillery.config import Settings
from distillery.modelhub import (
    KNOWN_MODELS,
    build_tiny_causal,
    build_tiny_t5,
    canonical_name,
    gguf_file,
    list_models,
    resolve_model,
)

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("modelhub")
    return Settings(home=home, model_dir=home / "models")


def _logits(model: torch.nn.Module, tokenizer, text: str = PROMPT) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def test_unknown_name_raises_listing_accepted_names(settings: Settings) -> None:
    with pytest.raises(ValueError) as info:
        resolve_model("no-such-model", settings)
    for name in KNOWN_MODELS:
        assert name in str(info.value)


def test_directory_without_config_is_rejected(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        resolve_model(str(tmp_path), settings)


def test_aliases_resolve_to_known_names() -> None:
    assert canonical_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m"
    assert canonical_name("google/gemma-3-270m") == "gemma3-270m"
    assert canonical_name("SMOLLM2-135M") == "smollm2-135m"
    assert canonical_name("gpt2") is None


def test_tiny_t5_builds_loads_and_runs(tmp_path: Path) -> None:
    path = build_tiny_t5(tmp_path / "t5")
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.d_model == 64 and model.config.num_layers == 2
    batch = tokenizer(["Which gas do plants absorb?", "2 + 2 ="], padding=True, return_tensors="pt")
    labels = tokenizer(text_target=["carbon dioxide", "4"], padding=True, return_tensors="pt").input_ids
    # T5 conventions: EOS closes every sequence, pad differs from EOS and starts decoding.
    assert labels[0, -1].item() == tokenizer.eos_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id
    out = model(**batch, labels=labels)
    assert out.logits.shape == (*labels.shape, len(tokenizer))
    assert torch.isfinite(out.loss)
    assert model.generate(**batch, max_new_tokens=3).shape[0] == 2


def test_tiny_causal_builds_loads_and_runs(tmp_path: Path) -> None:
    path = build_tiny_causal(tmp_path / "causal")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert tokenizer.chat_template  # SmolLM2's, so chat code paths can be tested
    batch = tokenizer([PROMPT], return_tensors="pt")
    out = model(**batch, labels=batch.input_ids)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


def test_tiny_weights_depend_only_on_the_seed(tmp_path: Path) -> None:
    a = AutoModelForCausalLM.from_pretrained(build_tiny_causal(tmp_path / "a")).state_dict()
    torch.manual_seed(1234)  # the caller's RNG state must not matter
    b = AutoModelForCausalLM.from_pretrained(build_tiny_causal(tmp_path / "b")).state_dict()
    c = AutoModelForCausalLM.from_pretrained(build_tiny_causal(tmp_path / "c", seed=1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_two_processes_resolving_at_once_build_once(tmp_path: Path) -> None:
    env = {**os.environ, "DISTILLERY_HOME": str(tmp_path), "DISTILLERY_MODEL_DIR": str(tmp_path / "models")}
    code = "from distillery_launcher.cli.models import app; app(['resolve', 'tiny-t5'])"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, **pipes) for _ in range(2)]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0], results
    target = tmp_path / "models" / "tiny-t5"
    assert [out.strip() for out, _, _ in results] == [str(target), str(target)]
    assert sum("building tiny-t5" in err for _, err, _ in results) == 1
    assert not list((tmp_path / "models").glob(".tiny-t5.*.tmp"))
    AutoModelForSeq2SeqLM.from_pretrained(target)
    listed = {row["name"]: row for row in list_models(Settings(home=tmp_path, model_dir=tmp_path / "models"))}
    assert listed["tiny-t5"]["converted"] and not listed["tiny-causal"]["converted"]


def test_local_hf_directory_is_returned_as_is(settings: Settings) -> None:
    built = resolve_model("tiny-causal", settings)
    assert built == settings.models / "tiny-causal"
    assert resolve_model(str(built), settings) == built.resolve()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "has_chat_template"), [("smollm2-135m", True), ("gemma3-270m", False)], ids=["smollm2", "gemma3"]
)
def test_gguf_package_converts_to_an_equivalent_hf_directory(
    name: str, has_chat_template: bool, settings: Settings
) -> None:
    path = resolve_model(name, settings)  # the one conversion of this model in the session
    assert path == settings.models / name
    info = json.loads((path / "distillery.json").read_text())
    assert (
        info["package"] == KNOWN_MODELS[name].package and info["gguf_file"] == gguf_file(name, settings).name
    )
    assert info["chat_template"] is has_chat_template
    assert sorted(p.name for p in path.glob("*.safetensors")) == ["model.safetensors"]

    tokenizer = AutoTokenizer.from_pretrained(path)
    assert bool(tokenizer.chat_template) is has_chat_template
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    assert reloaded.dtype == torch.float32
    assert "quantization_config" not in reloaded.config.to_dict()
    logits = _logits(reloaded, tokenizer)
    assert torch.isfinite(logits).all()

    gguf = gguf_file(name, settings)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    assert torch.equal(logits, _logits(original, tokenizer))

    # Cached: a second resolve (by alias too) returns at once.
    started = time.perf_counter()
    assert resolve_model(KNOWN_MODELS[name].aliases[0], settings) == path
    assert time.perf_counter() - started < 1
    assert {row["name"]: row for row in list_models(settings)}[name]["converted"]
