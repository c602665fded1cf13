"""Rebuild the files that `export_student.py` cut into parts, and check them against their SHA-256.

Standard library only (the GPU host has none of our packages). Run it in the folder it was shipped in:

    python join_parts.py            # model/model.safetensors.part000, ... -> model/model.safetensors
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

MANIFEST = "parts.json"


def join(folder: Path) -> list[Path]:
    """Every file of the manifest rebuilt from its parts and verified; the parts are removed after."""
    manifest = json.loads((folder / MANIFEST).read_text())
    rebuilt = []
    for entry in manifest["files"]:
        target = folder / entry["path"]
        digest = hashlib.sha256()
        partial = target.with_name(target.name + ".joining")
        with partial.open("wb") as out:
            for part in entry["parts"]:
                data = (folder / part).read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != entry["sha256"]:
            partial.unlink()
            raise SystemExit(f"{entry['path']}: SHA-256 mismatch (a part is missing or damaged)")
        partial.replace(target)
        for part in entry["parts"]:
            (folder / part).unlink()
        rebuilt.append(target)
    return rebuilt


if __name__ == "__main__":
    here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for path in join(here):
        print(f"rebuilt {path}")
