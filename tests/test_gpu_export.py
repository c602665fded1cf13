"""scripts/gpu: the student shipped in parts of a bounded size, rebuilt and loadable on the other side,
and the shipped folder running the gpu-small preset offline (no database) on the database path's rows."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoModelForCausalLM

from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.distill.checks import resolve_run
from distillery.distill.config import TrainConfig
from distillery.distill.encoding import load_encoder
from distillery.distill.tasks import encode_rows
from distillery.modelhub import resolve_model
from distillery.store.db import session_scope
from distillery.store.examples import import_examples
from distillery.store.rationales import import_rationale_file

GPU_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "gpu"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, GPU_SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_exported_parts_are_bounded_and_join_back_to_the_same_weights(tmp_path: Path) -> None:
    export_student, join_parts = _load("export_student"), _load("join_parts")
    ship = export_student.export("tiny-causal", tmp_path / "ship", part_mib=1)
    files = [p for p in ship.rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in files) <= 1024 * 1024
    assert any(p.name.endswith(".part001") for p in files)  # the weights were cut
    host = tmp_path / "host"
    shutil.copytree(ship, host)  # what reaches the host: the parts, parts.json and the joiner
    rebuilt = join_parts.join(host)
    assert "model.safetensors" in [p.name for p in rebuilt] and not list(host.rglob("*.part*"))
    original = AutoModelForCausalLM.from_pretrained(str(resolve_model("tiny-causal")))
    shipped = AutoModelForCausalLM.from_pretrained(str(host / "model"))
    for (name, a), (_, b) in zip(original.state_dict().items(), shipped.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # What runs the preset goes along: the script and distillery's source, without bytecode.
    assert (host / "run_gpu_small.py").is_file() and (
        host / "distillery" / "distill" / "multitask.py"
    ).is_file()
    assert not list((host / "distillery").rglob("__pycache__"))


def _sample_shared(root: Path, datasets: tuple[str, ...] = ("arc",)) -> Path:
    """A `shared` folder built from distillery's vendored samples (no RiddleSense: it is never vendored)."""
    for name in datasets:
        for split in ("train", "dev"):
            target = root / "datasets" / name / f"{split}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample_file(name, split), target)
        rationales = root / "rationales" / name / "train.jsonl"
        rationales.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES_DIR / "rationales" / name / "train.jsonl", rationales)
    return root


def test_offline_training_rows_are_the_rows_the_database_path_builds(clean_db: str, tmp_path: Path) -> None:
    """The offline run and `distill.tasks` build the same teachers, prefixes, weights and token ids."""
    run_gpu_small = _load("run_gpu_small")
    data = run_gpu_small.load_data("arc", _sample_shared(tmp_path / "shared"), "dev")
    with session_scope(clean_db) as session:
        for split in ("train", "dev"):
            import_examples(session, "arc", split, load_jsonl(sample_file("arc", split)))
        import_rationale_file(session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", "arc", "train")
    encoder = load_encoder(resolve_model("tiny-causal"), 64, 24)
    for body in (
        {"method": "tinyllm", "teachers": ["flan-t5-xl", "llama-2-7b-chat"]},
        {"method": "tinyllm", "alphas": {"flan-t5-xl": 0.0}, "filters": {"drop_disagreeing": False}},
        {"method": "label_ft", "answer_format": "letter_text"},
    ):
        cfg = TrainConfig.model_validate({"student": "tiny-causal", "dataset": "arc", "limit": 40, **body})
        with session_scope(clean_db) as session:
            stored = resolve_run(session, cfg)
            expected = list(encode_rows(session, stored, encoder))
        offline = run_gpu_small.resolve_offline(cfg, data)
        assert offline.task_names == stored.task_names and offline.weights == stored.weights
        assert [t.prefix for t in offline.teachers] == [t.prefix for t in stored.teachers]
        assert run_gpu_small.training_rows(offline, data, encoder) == expected
        assert len(expected) == 40


BLOCKED = ("sqlalchemy", "psycopg", "psycopg2", "celery", "kombu", "redis", "alembic")


def test_the_shipped_folder_runs_the_preset_on_cpu_without_a_database(tmp_path: Path) -> None:
    """Export with data, join, run the shipped script with the store's libraries unimportable: every
    configuration of gpu-small is trained and scored, and the report holds the paired statistics."""
    export_student, join_parts = _load("export_student"), _load("join_parts")
    host = tmp_path / "host"
    ship = export_student.export(
        "tiny-causal", tmp_path / "ship", 1, _sample_shared(tmp_path / "shared"), ["arc"]
    )
    shutil.copytree(ship, host)
    join_parts.join(host)
    argv = [
        "run_gpu_small.py",
        "--model",
        "model",
        "--shared",
        "shared",
        "--out",
        "report",
        "--device",
        "cpu",
    ]
    argv += [
        "--precision",
        "fp32",
        "--limit-train",
        "8",
        "--limit-eval",
        "8",
        "--max-steps",
        "2",
        "--datasets",
        "arc",
    ]
    # Each database library is unimportable (`import x` raises ImportError) and the URLs point nowhere.
    code = (
        f"import runpy, sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
        f"sys.argv = {argv!r}\nrunpy.run_path('run_gpu_small.py', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DATABASE_", "REDIS_"))}
    env |= {
        "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/nowhere",
        "REDIS_URL": "redis://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=host, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"distillery from {host / 'distillery'}" in done.stdout  # the shipped source, not the repo's
    body = json.loads((host / "report" / "results.json").read_text())
    assert body["preset"] == "gpu-small" and body["student"].startswith("tiny-causal")
    results = {r["label"]: r for r in body["results"]}
    assert list(results) == ["inference-only", "label-ft", "tinyllm"]
    for label, r in results.items():
        assert r["status"] == "completed" and r["n"] == 8 and len(r["correct"]) == 8, label
        assert r["likelihood_accuracy"] is not None and len(r["acc_norm_correct"]) == 8
    assert results["label-ft"]["steps"] == 2 and results["tinyllm"]["steps"] == 2
    assert results["tinyllm"]["loss_curve"][0]["loss_llama-2-7b-chat"] > 0  # both teachers' tasks trained
    paired = {(c["score"], c["a"], c["b"]): c for c in body["paired_vs_label_ft"]}
    for score in ("correct", "acc_norm_correct"):
        for label in ("inference-only", "tinyllm"):
            c = paired[(score, label, "label-ft")]
            assert c["n"] == 8 and 0 <= c["mcnemar_p"] <= 1 and len(c["ci95"]) == 2
    report = (host / "report" / "results.md").read_text()
    assert "## Paired comparisons" in report and "| arc | label-ft | tinyllm | 8 |" in report
