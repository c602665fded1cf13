"""Does an exported GGUF answer as its HF model does? Greedy answers of both on the same token ids.

Both models get identical prompt ids (the HF tokenizer's, through the chat template when the model has
one), so a mismatch is the weights' or the architecture's, not tokenization's (checked on its own by
`tokenization_matches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Agreement:
    """How many prompts got the same greedy continuation from both models."""

    same: int
    total: int
    first_mismatch: tuple[str, str, str] | None  # prompt, HF text, llama.cpp text

    @property
    def rate(self) -> float:
        return self.same / self.total if self.total else 0.0


def _prompt_ids(tokenizer: object, prompt: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return list(tokenizer(prompt)["input_ids"])  # type: ignore[operator]


def greedy_agreement(
    hf_dir: str | Path, gguf: str | Path, prompts: Sequence[str], max_new_tokens: int = 16, threads: int = 2
) -> Agreement:
    """Greedy continuations of `prompts` from the HF model and from llama.cpp on the GGUF, compared."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    eos = {i for i in [tokenizer.eos_token_id, *_generation_eos(hf_dir)] if i is not None}
    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=threads, verbose=False, logits_all=False)
    same, mismatch = 0, None
    for prompt in prompts:
        ids = _prompt_ids(tokenizer, prompt)
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(eos),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        hf_ids = _until_eos(out[0, len(ids) :].tolist(), eos)
        llm.reset()
        cpp_ids: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if token in eos or len(cpp_ids) >= max_new_tokens:
                break
            cpp_ids.append(int(token))
        if hf_ids == cpp_ids:
            same += 1
        elif mismatch is None:
            mismatch = (prompt, tokenizer.decode(hf_ids), tokenizer.decode(cpp_ids))
    llm.close()
    return Agreement(same, len(prompts), mismatch)


def tokenization_matches(hf_dir: str | Path, gguf: str | Path, texts: Sequence[str]) -> list[str]:
    """The texts that llama.cpp tokenizes differently from the HF tokenizer (none when all agree)."""
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    llm = llama_cpp.Llama(str(gguf), n_ctx=256, vocab_only=True, verbose=False)
    different = [
        t
        for t in texts
        if llm.tokenize(t.encode(), add_bos=False, special=True)
        != tokenizer(t, add_special_tokens=False)["input_ids"]
    ]
    llm.close()
    return different


def _generation_eos(hf_dir: str | Path) -> list[int]:
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(str(hf_dir)).eos_token_id
    except OSError:
        return []
    return [eos] if isinstance(eos, int) else list(eos or [])


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    end = next((k for k, t in enumerate(ids) if t in eos), len(ids))
    return ids[:end]
