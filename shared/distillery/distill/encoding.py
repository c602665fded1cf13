"""How a student sees one task: prompt tokens (never scored) followed by target tokens.

Causal students get the task input inside their chat template when they have one (the same rendering
the serving side uses for a user message), else the plain input and a newline; seq2seq students (T5
family) get the input on the encoder side and the target as decoder labels. Training, evaluation and
the benchmark all encode through this one class, so what the student is taught is what it is asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from distillery.distill.loss import IGNORE_INDEX

_SLOT = "\x1fDISTILLERY_SLOT\x1f"


@dataclass
class StudentEncoder:
    """Token ids of prompts and targets for one student, with the run's length caps."""

    tokenizer: PreTrainedTokenizerBase
    seq2seq: bool
    max_input_tokens: int = 512
    max_target_tokens: int = 128
    use_chat_template: bool = True
    chat: bool = field(init=False)
    _head: list[int] = field(init=False, repr=False)
    _tail: list[int] = field(init=False, repr=False)
    _stop: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.chat = bool(not self.seq2seq and self.use_chat_template and getattr(tok, "chat_template", None))
        if self.chat:
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": _SLOT}], tokenize=False, add_generation_prompt=True
            )
            head, tail = rendered.split(_SLOT)
            self._head, self._tail = self._ids(head), self._ids(tail)
            self._stop = self._turn_end()
        elif self.seq2seq:
            self._head, self._tail = [], [tok.eos_token_id]
            self._stop = [tok.eos_token_id]
        else:
            # Whatever the tokenizer puts in front of a text (a BOS for Gemma/Llama, nothing for GPT-2 style).
            with_specials = tok("x", add_special_tokens=True)["input_ids"]
            plain = self._ids("x")
            self._head = (
                with_specials[: len(with_specials) - len(plain)]
                if with_specials[-len(plain) :] == plain
                else []
            )
            self._tail = self._ids("\n")
            self._stop = [tok.eos_token_id]

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _turn_end(self) -> list[int]:
        """The token closing an assistant turn in the chat template (e.g. `<|im_end|>`), else EOS."""
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SLOT}], tokenize=False
        )
        after = self._ids(rendered.split(_SLOT, 1)[1])
        special = set(self.tokenizer.all_special_ids)
        return [after[0]] if after and after[0] in special else [self.tokenizer.eos_token_id]

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end an answer (generation stops at any of them)."""
        return sorted({*self._stop, self.tokenizer.eos_token_id})

    def prompt_ids(self, text: str) -> list[int]:
        """The task input, cut to `max_input_tokens` of content, wrapped for this student."""
        return self._head + self._ids(text)[: self.max_input_tokens] + self._tail

    def target_ids(self, text: str) -> list[int]:
        """Target tokens plus the end token; a target cut at `max_target_tokens` gets no end token,
        so the student is not taught to stop mid-rationale."""
        ids = self._ids(text.strip())
        if len(ids) >= self.max_target_tokens:
            return ids[: self.max_target_tokens]
        return ids + self._stop[:1]

    def encode(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one task. Causal: labels mask the prompt with IGNORE_INDEX."""
        prompt_ids, target_ids = self.prompt_ids(prompt), self.target_ids(target)
        if self.seq2seq:
            return prompt_ids, target_ids
        return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids


def load_encoder(model_path: str | Path, max_input_tokens: int, max_target_tokens: int) -> StudentEncoder:
    """The encoder of the student in HF directory `model_path` (its tokenizer; seq2seq or causal)."""
    seq2seq = bool(getattr(AutoConfig.from_pretrained(str(model_path)), "is_encoder_decoder", False))
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return StudentEncoder(tokenizer, seq2seq, max_input_tokens, max_target_tokens)
