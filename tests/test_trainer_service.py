"""The trainer service end to end: gateway app -> Celery queue `train` -> real trainer worker processes.

Tiny random students (modelhub 'tiny-causal') on the vendored ARC sample with the paper's imported
rationales keep each run to seconds; the behaviour under test (queueing, checkpoints, resume after
kill -9, export, registry, evaluation) is the same as for a real student.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from distillery import apikeys
from distillery.config import Settings, get_settings
from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.modelhub import resolve_model
from distillery.store import registry
from distillery.store.db import session_scope
from distillery.store.examples import import_examples
from distillery.store.rationales import import_rationale_file

pytestmark = pytest.mark.slow

TIMEOUT_S = 420


def wait_for(
    check: Callable[[], object], timeout: float = TIMEOUT_S, every: float = 0.5, what: str = ""
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what or check}")


@contextmanager
def trainer_process(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen]:
    """`python -m distillery_trainer` against the test's PostgreSQL/Redis, in its own process group."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "DISTILLERY_HOME": str(settings.home),
        "DISTILLERY_MODEL_DIR": str(get_settings().models),  # the tiny models, built once per machine
        "DISTILLERY_TRAINER_SWEEP_INTERVAL_S": "2",
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "distillery_trainer", "--loglevel", "INFO"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def stack(settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    from distillery_gateway.app import create_app

    with session_scope(settings.database_url) as session:
        for split in ("train", "dev"):
            import_examples(session, "arc", split, load_jsonl(sample_file("arc", split)))
        import_rationale_file(session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", "arc", "train")
        key = apikeys.create_key(session, "test", ("train:write",)).key
    # The gateway also serves a student; the tiny one keeps its start-up cheap.
    tiny = str(resolve_model("tiny-causal"))
    settings = settings.model_copy(update={"model_dir": get_settings().models, "default_model": tiny})
    app = create_app(settings=settings, database_url=settings.database_url, redis_url=settings.redis_url)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, settings


def run_body(**changes: object) -> dict:
    body = {
        "student": "tiny-causal",
        "method": "tinyllm",
        "dataset": "arc",
        "limit": 24,
        "teachers": ["flan-t5-xl", "llama-2-7b-chat"],
        "alphas": {"flan-t5-xl": 0.5, "llama-2-7b-chat": 1.0},
        "hyperparameters": {
            "batch_size": 2,
            "max_steps": 10,
            "save_steps": 2,
            "logging_steps": 1,
            "seed": 7,
            "max_input_tokens": 48,
            "max_target_tokens": 16,
            "learning_rate": 1e-3,
        },
        "eval": {"split": None},
    }
    body.update(changes)
    return body


def finished(client: TestClient, run_id: str) -> dict | None:
    run = client.get(f"/v1/training-runs/{run_id}").json()
    return run if run["status"] in ("completed", "failed", "cancelled") else None


def test_run_through_the_service_registers_a_loadable_model_with_dev_accuracy(stack, tmp_path: Path) -> None:
    client, settings = stack
    with trainer_process(settings, tmp_path / "trainer.log"):
        body = run_body(eval={"split": "dev", "limit": 8, "batch_size": 8, "explain": 1})
        response = client.post("/v1/training-runs", json=body)
        assert response.status_code == 202, response.text
        run = wait_for(lambda: finished(client, response.json()["id"]), what="the run to finish")
    assert run["status"] == "completed", (run["error"], (tmp_path / "trainer.log").read_text()[-4000:])
    assert run["step"] == run["total_steps"] == 10
    assert [p["step"] for p in run["loss_curve"]] == list(range(1, 11))
    assert {"loss_answer", "loss_flan-t5-xl", "loss_llama-2-7b-chat"} <= set(run["loss_curve"][-1])
    ev = run["metrics"]["eval"]
    assert ev["split"] == "dev" and ev["n"] == 8 and 0.0 <= ev["accuracy"] <= 1.0
    assert sum(ev["letter_distribution"].values()) == 8
    assert "likelihood_accuracy" in ev and "calibrated_accuracy" in ev
    assert Path(run["metrics"]["predictions"]).is_file()

    with session_scope(settings.database_url) as session:
        model = registry.get_model(session, run["model_id"])
        assert model is not None and model.training_run_id == run["id"] and model.metrics["n"] == 8
        path = Path(model.path)
    # A plain HF directory: transformers (and vLLM) load it without our code or peft.
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in path.iterdir()
    }
    AutoModelForCausalLM.from_pretrained(path)
    AutoTokenizer.from_pretrained(path)
    assert GenerationConfig.from_pretrained(path).do_sample is False


def test_killed_trainer_resumes_from_its_last_checkpoint(stack, tmp_path: Path) -> None:
    client, settings = stack
    log = tmp_path / "trainer.log"
    with trainer_process(settings, log) as trainer:
        baseline = client.post("/v1/training-runs", json=run_body()).json()
        baseline = wait_for(lambda: finished(client, baseline["id"]), what="the uninterrupted run")
        assert baseline["status"] == "completed", log.read_text()[-4000:]

        run_id = client.post("/v1/training-runs", json=run_body()).json()["id"]
        checkpoints = settings.artifacts / "runs" / run_id / "checkpoints"

        def mid_run() -> bool:
            return any((p / "trainer_state.json").is_file() for p in checkpoints.glob("checkpoint-*"))

        wait_for(mid_run, every=0.05, what="a first checkpoint")
        os.kill(trainer.pid, signal.SIGKILL)  # the solo pool trains in this very process
        trainer.wait(timeout=30)
    run = client.get(f"/v1/training-runs/{run_id}").json()
    assert run["status"] == "running" and run["step"] < 10, "the kill came too late to test a resume"

    with trainer_process(settings, log):
        run = wait_for(lambda: finished(client, run_id), what="the resumed run")
    assert run["status"] == "completed", (run["error"], log.read_text()[-4000:])
    assert run["metrics"]["resumed_from_step"] >= 2
    assert run["step"] == run["total_steps"] == 10
    # The step counter continues: every step logged exactly once across the two trainer processes.
    assert [p["step"] for p in run["loss_curve"]] == list(range(1, 11))
    assert run["metrics"]["final_loss"] == pytest.approx(baseline["metrics"]["final_loss"], abs=1e-3)
    for before, after in zip(baseline["loss_curve"], run["loss_curve"], strict=True):
        assert after["loss"] == pytest.approx(before["loss"], abs=1e-3)


def test_cancel_stops_a_running_run_and_keeps_its_checkpoint(stack, tmp_path: Path) -> None:
    client, settings = stack
    with trainer_process(settings, tmp_path / "trainer.log"):
        run_id = client.post(
            "/v1/training-runs",
            json=run_body(hyperparameters={**run_body()["hyperparameters"], "max_steps": 500}),
        ).json()["id"]
        wait_for(lambda: client.get(f"/v1/training-runs/{run_id}").json()["step"] >= 1, what="a first step")
        assert client.post(f"/v1/training-runs/{run_id}/cancel").json()["status"] == "cancelling"
        run = wait_for(lambda: finished(client, run_id), what="the cancel")
    assert run["status"] == "cancelled" and run["step"] < 500
    assert list((settings.artifacts / "runs" / run_id / "checkpoints").glob("checkpoint-*"))
