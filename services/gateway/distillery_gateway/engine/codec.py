"""Text <-> token ids for one served model: chat rendering, the trainer's prompt format, limits.

Both backends render prompts here and hand token ids to the engine, so a model answers the same
input whether it runs in-process or behind vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from distillery.distill.encoding import StudentEncoder
from distillery.distill.export import STUDENT_INFO
from distillery.rationales.prompts import ANSWER_FORMATS, ANSWER_PREFIX, AnswerFormat

# Context length for models whose config names none (T5 uses relative positions).
FALLBACK_CONTEXT = 512


class Codec:
    """The tokenizer of a served model and everything derived from it."""

    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None):
        self.path = str(path)
        config = AutoConfig.from_pretrained(self.path)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None)) and not self.seq2seq
        # How the trainer prompted this student (written beside the weights); defaults for other models.
        info_file = Path(self.path) / STUDENT_INFO
        self.student_info: dict = json.loads(info_file.read_text()) if info_file.is_file() else {}
        self.answer_prefix: str = self.student_info.get("answer_prefix", ANSWER_PREFIX)
        self.teacher_prefixes: dict[str, str] = dict(self.student_info.get("teacher_prefixes") or {})
        # The answer targets it was trained on; `letter_text` for models trained before the choice existed
        # (and for any other model), as `distillery eval` reads it.
        fmt = self.student_info.get("answer_format", "letter_text")
        if fmt not in ANSWER_FORMATS:
            raise ValueError(f"{info_file}: answer_format {fmt!r} is not one of {', '.join(ANSWER_FORMATS)}")
        self.answer_format: AnswerFormat = fmt
        # The trainer's encoder: predict must see exactly what training showed the student.
        self.encoder = StudentEncoder(
            self.tokenizer,
            seq2seq=self.seq2seq,
            max_input_tokens=int(self.student_info.get("max_input_tokens", 1024)),
            use_chat_template=bool(self.student_info.get("chat_template", True)),
        )
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_context = int(positions or FALLBACK_CONTEXT)
        eos = set(self.encoder.stop_token_ids)
        try:
            from transformers import GenerationConfig

            gen_eos = GenerationConfig.from_pretrained(self.path).eos_token_id
        except OSError:
            gen_eos = None
        eos.update([gen_eos] if isinstance(gen_eos, int) else gen_eos or [])
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.pad_id = int(self.tokenizer.pad_token_id)

    def encode(self, text: str) -> list[int]:
        """A completion prompt, with the tokenizer's special tokens (as vLLM does)."""
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A chat rendered with the model's template, or as `Role: text` lines when it has none."""
        if self.has_chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return self.encode("\n".join([*lines, "Assistant:"]))

    def task_ids(self, text: str) -> list[int]:
        """A student task input (`predict: ...` or a teacher prefix) wrapped as the trainer wraps it."""
        return self.encoder.prompt_ids(text)

    def target_ids(self, text: str) -> list[int]:
        """A task target as the trainer scores it (with its end token)."""
        return self.encoder.target_ids(text)
