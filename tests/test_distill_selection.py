"""Model selection: every N steps the student is scored on dev or on a slice held out of train (never
test); the best checkpoint wins."""

from __future__ import annotations

import pytest

from distillery.config import Settings, get_settings
from distillery.datasets import load_jsonl, sample_file
from distillery.distill.checks import ConfigError, resolve_run
from distillery.distill.config import TrainConfig
from distillery.distill.report import _selected
from distillery.distill.runner import execute_run
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery.store.examples import import_examples


def test_best_checkpoint_on_dev_is_kept_and_named(settings: Settings) -> None:
    settings = settings.model_copy(update={"model_dir": get_settings().models})
    body = {
        "student": "tiny-causal",
        "method": "label_ft",
        "dataset": "arc",
        "limit": 12,
        "hyperparameters": {
            "batch_size": 2,
            "max_steps": 6,
            "learning_rate": 5e-3,
            "max_input_tokens": 48,
            "max_target_tokens": 12,
            "logging_steps": 1,
        },
        "eval": {"split": None, "select_every": 2, "select_split": "dev", "select_limit": 8},
    }
    with session_scope(settings.database_url) as session:
        for split in ("train", "dev"):
            import_examples(session, "arc", split, load_jsonl(sample_file("arc", split)))
        run_id = run_store.create_run(session, body)[0].id
    assert execute_run(settings.database_url, run_id, settings) == "completed"
    with session_scope(settings.database_url) as session:
        row = run_store.get_run(session, run_id)
        assert row is not None
        metrics = row.metrics
    selection = metrics["selection"]
    assert selection["split"] == "dev" and selection["every"] == 2
    assert metrics["selected_step"] in (2, 4, 6) and 0.0 <= selection["acc_norm"] <= 1.0
    assert _selected({**metrics}).startswith(f"{metrics['selected_step']} (best dev acc_norm")


def _heldout_body(**overrides: object) -> dict:
    return {
        "student": "tiny-causal",
        "method": "label_ft",
        "dataset": "arc",
        "hyperparameters": {"batch_size": 4, "max_steps": 2, "max_input_tokens": 48, "max_target_tokens": 12},
        "eval": {"split": None, "select_every": 1, "select_split": "heldout", "select_limit": 8},
        **overrides,
    }


def test_a_slice_held_out_of_train_selects_and_training_leaves_it_out(settings: Settings) -> None:
    settings = settings.model_copy(update={"model_dir": get_settings().models})
    train = load_jsonl(sample_file("arc", "train"))
    with session_scope(settings.database_url) as session:
        import_examples(session, "arc", "train", train)
        run_id = run_store.create_run(session, _heldout_body())[0].id
    assert execute_run(settings.database_url, run_id, settings) == "completed"
    with session_scope(settings.database_url) as session:
        row = run_store.get_run(session, run_id)
        assert row is not None
        metrics = row.metrics
    assert metrics["train_examples"] == len(train) - 8  # the last 8 are the selection questions
    assert metrics["selection"]["split"] == "heldout" and metrics["selected_step"] in (1, 2)


def test_a_training_limit_that_reaches_the_held_out_slice_names_the_field(settings: Settings) -> None:
    train = load_jsonl(sample_file("arc", "train"))
    with session_scope(settings.database_url) as session:
        import_examples(session, "arc", "train", train)
        config = TrainConfig.model_validate(_heldout_body(limit=len(train) - 7))
        with pytest.raises(ConfigError) as raised:
            resolve_run(session, config)
    assert raised.value.field == "limit" and f"at most {len(train) - 8}" in str(raised.value)
