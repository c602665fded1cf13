"""Model selection: every N steps the student is scored on dev (never test); the best checkpoint wins."""

from __future__ import annotations

from distillery.config import Settings, get_settings
from distillery.datasets import load_jsonl, sample_file
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
