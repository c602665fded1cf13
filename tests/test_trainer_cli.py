"""`distillery train` / `distillery eval` / `distillery experiments` from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from distillery.config import Settings, get_settings
from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery.store.examples import import_examples
from distillery.store.rationales import import_rationale_file
from distillery_launcher.cli.main import app

TINY = [
    "--student", "tiny-causal", "--limit", "8", "--batch-size", "4", "--max-steps", "2",
    "--max-input-tokens", "48", "--max-target-tokens", "16", "--eval-limit", "4",
]  # fmt: skip


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI on the test's PostgreSQL/Redis and a fresh home, with ARC and its rationales imported."""
    models = get_settings().models
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("DISTILLERY_HOME", str(settings.home))
    monkeypatch.setenv("DISTILLERY_MODEL_DIR", str(models))
    get_settings.cache_clear()
    with session_scope(settings.database_url) as session:
        for split in ("train", "dev"):
            import_examples(session, "arc", split, load_jsonl(sample_file("arc", split)))
        import_rationale_file(session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", "arc", "train")
    yield get_settings()
    get_settings.cache_clear()


def test_bad_option_names_the_field_and_records_nothing(cli_env: Settings) -> None:
    result = CliRunner().invoke(app, ["train", "--local", "--dataset", "arc", "--method", "magic", *TINY])
    assert result.exit_code == 2
    assert "method" in result.output and "tinyllm" in result.output
    unknown = CliRunner().invoke(app, ["train", "--local", "--dataset", "arc", "--teacher", "nobody", *TINY])
    assert unknown.exit_code == 2 and "teachers: unknown teacher 'nobody'" in unknown.output
    target = CliRunner().invoke(app, ["train", "--local", "--dataset", "arc", "--answer-format", "x", *TINY])
    assert target.exit_code == 2 and "answer_format" in target.output and "option_text" in target.output
    with session_scope(cli_env.database_url) as session:
        assert run_store.list_runs(session) == []


def test_local_train_then_eval_the_registered_model(cli_env: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    # TinyLLM with a LoRA adapter: the exported model has the adapter merged in (no peft needed to load).
    argv = ["train", "--local", "--dataset", "arc", "--lora", "--lora-r", "4", "--name", "cli-student", *TINY]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "dev: accuracy" in result.output
    with session_scope(cli_env.database_url) as session:
        (run,) = run_store.list_runs(session)
        assert run.status == "completed" and run.metrics["model_id"]
        assert run.config["method"] == "tinyllm" and run.config["lora"]["r"] == 4
    model_dir = Path(run.output_dir)
    assert not (model_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(model_dir)
    # The unmerged adapter is kept beside the merged weights (what a vLLM server loads at runtime).
    info = json.loads((model_dir / "distillery_student.json").read_text())
    assert info["lora_adapter"] == {"path": "lora_adapter", "base_model": "tiny-causal"}
    adapter_dir = model_dir / "lora_adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    from peft import PeftModel

    from distillery.modelhub import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-causal"))
    adapted = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)

    predictions = tmp_path / "pred.jsonl"
    evaluated = runner.invoke(
        app,
        ["eval", "cli-student", "--dataset", "arc", "--split", "dev", "--limit", "3", "-o", str(predictions)],
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout[evaluated.stdout.index("{") :])
    assert metrics["n"] == 3 and "letter_distribution" in metrics and "calibrated_accuracy" in metrics
    assert len(predictions.read_text().splitlines()) == 3


def test_submit_queues_the_run_on_the_gateway_and_relays_its_refusals(
    cli_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import threading
    import time

    import uvicorn

    from distillery import apikeys
    from distillery.modelhub import resolve_model
    from distillery_gateway.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gateway_settings = cli_env.model_copy(update={"default_model": str(resolve_model("tiny-causal"))})
    gateway = create_app(gateway_settings, cli_env.database_url, cli_env.redis_url)
    server = uvicorn.Server(uvicorn.Config(gateway, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        with session_scope(cli_env.database_url) as session:
            key = apikeys.create_key(session, "cli", ("train:write",)).key
        monkeypatch.setenv("DISTILLERY_GATEWAY_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("DISTILLERY_API_KEY", key)
        get_settings.cache_clear()

        refused = CliRunner().invoke(app, ["train", "--dataset", "arc", "--teacher", "nobody", *TINY])
        assert (
            refused.exit_code == 2
            and "422" in refused.output
            and "unknown teacher 'nobody'" in refused.output
        )
        queued = CliRunner().invoke(app, ["train", "--dataset", "arc", "--no-follow", *TINY])
        assert queued.exit_code == 0, queued.output
        with session_scope(cli_env.database_url) as session:
            (run,) = run_store.list_runs(session)
        assert run.status == "queued" and f"run {run.id} queued" in queued.output
    finally:
        server.should_exit = True
        thread.join(timeout=30)
