"""The trained student as a plain HF model directory (what transformers, vLLM and the gateway load).

Written beside its final place and renamed into it, so a crash never leaves half a model. A LoRA
adapter is merged into the base weights first: the directory needs no peft to load.
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


def merged(model: nn.Module) -> PreTrainedModel:
    """The plain transformers model: a PEFT adapter merged into its base, anything else as is."""
    merge = getattr(model, "merge_and_unload", None)  # a PEFT model's
    return model if merge is None else merge()


def export_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    encoder: StudentEncoder,
    out_dir: Path,
    info: dict[str, Any],
    max_new_tokens: int = 256,
) -> PreTrainedModel:
    """Write config.json, model.safetensors, tokenizer, generation_config.json, STUDENT_INFO to `out_dir`."""
    plain = merged(model)
    # The Trainer may have switched the KV cache off for training; inference wants it on.
    plain.config.use_cache = True
    out_dir = Path(out_dir)
    partial = out_dir.with_name(f"{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
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
    (partial / STUDENT_INFO).write_text(json.dumps(student, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return plain
