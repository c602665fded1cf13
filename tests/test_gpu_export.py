"""scripts/gpu: the student shipped in parts of a bounded size, rebuilt and loadable on the other side."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoModelForCausalLM

from distillery.modelhub import resolve_model

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
