"""Export a converted student for an offline GPU host that takes files of at most 60 MiB.

The student is resolved as distillery resolves it (SmolLM2-135M-Instruct from its PyPI package, converted
to an HF safetensors directory on first use); its directory is copied to OUT/model/, every file larger
than the part size is cut into `NAME.partNNN` pieces listed with their SHA-256 in OUT/parts.json, and
`join_parts.py` (standard library only) goes beside them to rebuild and check the files on the host:

    python scripts/gpu/export_student.py --model smollm2-135m --out /tmp/gpu-ship
    # on the host:  python join_parts.py

The parts are build output: never commit them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from distillery.modelhub import resolve_model

MIB = 1024 * 1024
JOINER = Path(__file__).resolve().parent / "join_parts.py"


def split_file(path: Path, part_bytes: int) -> tuple[list[Path], str]:
    """Cut `path` into parts of at most `part_bytes` (the file is removed) -> (parts, SHA-256 of the file)."""
    digest, parts = hashlib.sha256(), []
    with path.open("rb") as src:
        while chunk := src.read(part_bytes):
            digest.update(chunk)
            part = path.with_name(f"{path.name}.part{len(parts):03d}")
            part.write_bytes(chunk)
            parts.append(part)
    path.unlink()
    return parts, digest.hexdigest()


def export(model: str, out: Path, part_mib: int = 60) -> Path:
    """The student `model` as OUT/model/ in parts of at most `part_mib` MiB, parts.json, the joiner."""
    source = resolve_model(model)
    target = out / "model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    entries = []
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        if path.stat().st_size > part_mib * MIB:
            parts, sha256 = split_file(path, part_mib * MIB)
            names = [str(part.relative_to(out)) for part in parts]
            entries.append({"path": str(path.relative_to(out)), "parts": names, "sha256": sha256})
    (out / "parts.json").write_text(json.dumps({"model": model, "files": entries}, indent=2) + "\n")
    shutil.copy(JOINER, out / JOINER.name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="known model name or HF model dir")
    parser.add_argument("--out", type=Path, required=True, help="folder to ship to the GPU host")
    parser.add_argument("--part-mib", type=int, default=60, help="largest file the host accepts, in MiB")
    args = parser.parse_args()
    if args.part_mib < 1:
        parser.error("--part-mib must be at least 1")
    out = export(args.model, args.out, args.part_mib)
    largest = max(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: largest file {largest / MIB:.1f} MiB; rebuild on the host with `python join_parts.py`")


if __name__ == "__main__":
    main()
