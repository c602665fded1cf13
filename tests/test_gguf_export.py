"""GGUF export: architecture, tokenizer and chat template survive; llama.cpp answers as the HF model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGUFReader
from transformers import AutoTokenizer
from typer.testing import CliRunner

from distillery.datasets import load_jsonl, sample_file
from distillery.export import ExportError, GGUFExport, cached_export, export_gguf
from distillery.export.modelfile import chat_wrappers
from distillery.export.roundtrip import greedy_agreement, tokenization_matches
from distillery.modelhub import resolve_model
from distillery_launcher.cli.main import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny() -> Path:
    return resolve_model("tiny-causal")


@pytest.fixture(scope="module")
def exported(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> GGUFExport:
    return export_gguf(tiny, tmp_path_factory.mktemp("export") / "tiny-f16", "f16")


def _field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_architecture_tokenizer_and_chat_template_survive(tiny: Path, exported: GGUFExport) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    reader = GGUFReader(exported.gguf)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.embedding_length") == 64
    assert len(_field(reader, "tokenizer.ggml.tokens")) == len(tokenizer)  # type: ignore[arg-type]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert _field(reader, "tokenizer.chat_template") == tokenizer.chat_template
    texts = [
        "Hello world!",
        "  two  spaces\tand a tab",
        "Ünïcödé – 数字 123",
        "<|im_start|>user\nhi<|im_end|>",
    ]
    assert tokenization_matches(tiny, exported.gguf, texts) == []
    info = json.loads((exported.directory / "export.json").read_text())
    assert info["architecture"] == "LlamaForCausalLM" and info["outtype"] == "f16"


def test_modelfile_has_the_chat_template_and_stop_tokens(tiny: Path, exported: GGUFExport) -> None:
    text = exported.modelfile.read_text()
    assert "FROM ./model-f16.gguf" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    parts = chat_wrappers(AutoTokenizer.from_pretrained(tiny))
    assert parts is not None and parts["user_head"] == "<|im_start|>user\n"
    assert parts["prompt"] == "<|im_start|>assistant\n" and parts["user_tail"] == "<|im_end|>\n"
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text
    assert text.count('TEMPLATE """') == 1


def test_f16_round_trip_gives_the_same_greedy_answers(tiny: Path, exported: GGUFExport) -> None:
    questions = [e.question for e in load_jsonl(sample_file("obqa", "dev"))][:40]
    agreement = greedy_agreement(tiny, exported.gguf, questions, max_new_tokens=12)
    assert agreement.rate >= 0.95, agreement.first_mismatch


def test_q4_k_m_is_quantized_by_llama_cpp(tiny: Path, exported: GGUFExport, tmp_path: Path) -> None:
    quantized = export_gguf(tiny, tmp_path / "q4", "q4_k_m")
    assert quantized.gguf.name == "model-q4_k_m.gguf"
    assert [p.name for p in quantized.directory.glob("*.gguf")] == ["model-q4_k_m.gguf"]
    assert quantized.gguf.stat().st_size < exported.gguf.stat().st_size
    assert _field(GGUFReader(quantized.gguf), "general.file_type") == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_cached_export_is_made_once(tiny: Path, tmp_path: Path) -> None:
    first = cached_export(tiny, tmp_path, "q8_0")
    stamp = first.gguf.stat().st_mtime_ns
    again = cached_export(tiny, tmp_path, "q8_0")
    assert again.gguf == first.gguf and again.gguf.stat().st_mtime_ns == stamp


def test_seq2seq_students_get_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="seq2seq"):
        export_gguf(resolve_model("tiny-t5"), tmp_path / "t5")
    assert not (tmp_path / "t5").exists()


def test_cli_exports_and_names_bad_options(tiny: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["models", "export", str(tiny), "--outtype", "q8_0", "-o", str(tmp_path / "o")])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["gguf"] == str(tmp_path / "o" / "model-q8_0.gguf")
    assert (tmp_path / "o" / "Modelfile").is_file()
    bad = runner.invoke(app, ["models", "export", str(tiny), "--outtype", "q3"])
    assert bad.exit_code == 2 and "--outtype 'q3'" in bad.stderr
    bad = runner.invoke(app, ["models", "export", str(tiny), "--format", "onnx"])
    assert bad.exit_code == 2 and "--format 'onnx'" in bad.stderr
    t5 = runner.invoke(app, ["models", "export", "tiny-t5", "-o", str(tmp_path / "t5")])
    assert t5.exit_code == 2 and "seq2seq" in t5.stderr
