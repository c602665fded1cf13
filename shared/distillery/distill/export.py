"""The trained student as a plain HF model directory (what transformers, vLLM and the gateway load).

Written beside its final place and renamed into it, so a crash never leaves half a model. A LoRA
adapter is merged into the base weights first: the directory needs no peft to load. The unmerged adapter
is kept too, in `lora_adapter/` (peft's own format), and STUDENT_INFO's `lora_adapter` names it and its
base model: a vLLM server that serves the base loads it at runtime (the gateway's vLLM backend).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from distillery.distill.encoding import StudentEncoder

STUDENT_INFO = "distillery_student.json"  # how to prompt the student (prefixes, chat template use)
LORA_ADAPTER = "lora_adapter"  # the unmerged PEFT adapter of a LoRA student, beside the merged weights


def merged(model: nn.Module) -> PreTrainedModel:
    """The plain transformers model: a PEFT adapter merged into its base, anything else as is."""
    merge = getattr(model, "merge_and_unload", None)  # a PEFT model's
    return model if merge is None else merge()


def save_adapter(model: nn.Module, out_dir: Path) -> bool:
    """Write a PEFT model's adapter (adapter_config.json + weights) to `out_dir`; False for other models.

    Call it before `merged`: merging folds the adapter into the base and removes it."""
    save = getattr(model, "save_pretrained", None)
    if getattr(model, "merge_and_unload", None) is None or not hasattr(model, "peft_config") or save is None:
        return False
    save(out_dir, safe_serialization=True)
    return True


def lora_adapter_info(model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    """STUDENT_INFO's `lora_adapter` entry: where the adapter is and the base it was trained on."""
    base = info.get("base_model")
    if not base:
        config = next(iter(getattr(model, "peft_config", {}).values()), None)
        base = getattr(config, "base_model_name_or_path", None)
    return {"path": LORA_ADAPTER, "base_model": base}


def export_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    encoder: StudentEncoder,
    out_dir: Path,
    info: dict[str, Any],
    max_new_tokens: int = 256,
) -> PreTrainedModel:
    """Write config.json, model.safetensors, tokenizer, generation_config.json, STUDENT_INFO to `out_dir`
    (and a LoRA student's unmerged adapter to `out_dir/lora_adapter`)."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(f"{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    adapter = lora_adapter_info(model, info) if save_adapter(model, partial / LORA_ADAPTER) else None
    plain = merged(model)
    # The Trainer may have switched the KV cache off for training; inference wants it on.
    plain.config.use_cache = True
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    generation = GenerationConfig.from_model_config(plain.config)
    generation.use_cache = True
    generation.do_sample = False
    generation.max_new_tokens = max_new_tokens
    generation.eos_token_id = encoder.stop_token_ids
    generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(partial)
    student = {
        **info,
        "chat_template": encoder.chat,
        "seq2seq": encoder.seq2seq,
        "max_input_tokens": encoder.max_input_tokens,
    }
    if adapter is not None:
        student["lora_adapter"] = adapter
    (partial / STUDENT_INFO).write_text(json.dumps(student, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return plain
