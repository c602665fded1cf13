"""An HF causal student as a GGUF file (plus an Ollama Modelfile), with llama.cpp's own tools.

The conversion is llama.cpp's `convert_hf_to_gguf` (the `convert-hf-to-gguf` package), run as a child
process so its memory and logging stay out of the caller; `q4_k_m` is llama.cpp's quantizer (through
llama-cpp-python) applied to the f16 file. Everything is written in a temporary directory beside the
target and renamed into place, so a crash never leaves half an export.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from distillery.export.modelfile import write_modelfile

# What `--outtype` accepts: the converter writes f32/f16/q8_0 itself, q4_k_m is quantized from f16.
OUTTYPES = ("f16", "q8_0", "q4_k_m", "f32")
MODELFILE = "Modelfile"
EXPORT_INFO = "export.json"
# llama.cpp's llama_ftype values of the quantized types (llama.h).
_QUANTIZED_FTYPES = {"q4_k_m": 15}

Progress = Callable[[str], None]


class ExportError(ValueError):
    """The model cannot be exported (seq2seq, not an HF directory, unsupported architecture...)."""


@dataclass(frozen=True)
class GGUFExport:
    """One finished export: the GGUF, its Modelfile and what it was made from."""

    directory: Path
    gguf: Path
    modelfile: Path
    outtype: str
    architecture: str
    source: str

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def check_exportable(model_dir: Path) -> str:
    """The architecture of the HF causal LM in `model_dir`; ExportError saying why not otherwise."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{model_dir} has no config.json: not an HF model directory")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or ["?"]
    if config.get("is_encoder_decoder"):
        raise ExportError(
            f"{model_dir} is a seq2seq model ({architectures[0]}); GGUF export serves causal "
            "students only (llama.cpp's backend here generates with decoder-only models)"
        )
    return str(architectures[0])


def export_gguf(
    model_dir: str | Path,
    out_dir: str | Path,
    outtype: str = "f16",
    progress: Progress | None = None,
) -> GGUFExport:
    """Write `<out_dir>/model-<outtype>.gguf` and a Modelfile beside it; return what was written."""
    if outtype not in OUTTYPES:
        raise ExportError(f"outtype '{outtype}' is not accepted (accepted: {', '.join(OUTTYPES)})")
    source = Path(model_dir).expanduser().resolve()
    architecture = check_exportable(source)
    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        gguf_name = f"model-{outtype}.gguf"
        converted = "f16" if outtype in _QUANTIZED_FTYPES else outtype
        _say(progress, f"converting {source} ({architecture}) to {converted} GGUF")
        _convert(source, tmp / f"model-{converted}.gguf", converted)
        if outtype in _QUANTIZED_FTYPES:
            _say(progress, f"quantizing to {outtype}")
            _quantize(tmp / f"model-{converted}.gguf", tmp / gguf_name, _QUANTIZED_FTYPES[outtype])
            (tmp / f"model-{converted}.gguf").unlink()
        _say(progress, "writing the Ollama Modelfile")
        _modelfile(source, tmp / MODELFILE, gguf_name)
        result = GGUFExport(out, out / gguf_name, out / MODELFILE, outtype, architecture, str(source))
        (tmp / EXPORT_INFO).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(progress, f"wrote {result.gguf}")
    return result


def cached_export(
    model_dir: str | Path, cache_root: str | Path, outtype: str = "f16", progress: Progress | None = None
) -> GGUFExport:
    """The export of `model_dir` under `cache_root`, made once (under a file lock) per model and type.

    The cache key is the model's resolved path and its config/weights' modification times, so a model
    written again in the same place is exported again.
    """
    source = Path(model_dir).expanduser().resolve()
    stamp = "|".join(
        f"{f.name}:{f.stat().st_mtime_ns}"
        for f in sorted(source.iterdir())
        if f.suffix in {".json", ".safetensors"}
    )
    key = hashlib.sha256(f"{source}|{outtype}|{stamp}".encode()).hexdigest()[:16]
    out = Path(cache_root).expanduser() / f"{source.name}-{outtype}-{key}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        info = out / EXPORT_INFO
        if info.is_file():
            saved = json.loads(info.read_text())
            return GGUFExport(
                out,
                Path(saved["gguf"]),
                Path(saved["modelfile"]),
                outtype,
                saved["architecture"],
                saved["source"],
            )
        return export_gguf(source, out, outtype, progress)


# --- the tools ------------------------------------------------------------------------------------


def _convert(source: Path, target: Path, outtype: str) -> None:
    command = [
        sys.executable,
        "-m",
        "convert_hf_to_gguf",
        str(source),
        "--outfile",
        str(target),
        "--outtype",
        outtype,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not target.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        if "is not supported" in tail or "NotImplementedError" in tail:
            raise ExportError(f"llama.cpp's converter does not support this architecture: {tail}")
        raise RuntimeError(f"convert_hf_to_gguf failed (exit {done.returncode}): {tail}")


def _quantize(source: Path, target: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = max(1, (os.cpu_count() or 2) // 2)
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0 or not target.is_file():
        raise RuntimeError(f"llama.cpp's quantizer failed on {source} (code {code})")


def _modelfile(source: Path, path: Path, gguf_name: str) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    stop_ids: set[int] = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(str(source)).eos_token_id
    except OSError:
        eos = None
    stop_ids.update([eos] if isinstance(eos, int) else (eos or []))
    stops = [tokenizer.convert_ids_to_tokens(i) for i in sorted(stop_ids)]
    write_modelfile(path, gguf_name, tokenizer, [str(s) for s in stops if s])


def _say(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)
