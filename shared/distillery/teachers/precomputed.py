"""A precomputed teacher: its rationales already exist in files of the ../shared/rationales format.

The paper's FLAN-T5-XL and LLaMA-2 rationales are such a teacher. They normally enter the database through
`distillery.store.rationales.import_rationale_file`; this client lets a job treat the same files like any
other teacher. `base_url` is a file or a folder of `*.jsonl` files (a `file://` URL or a plain path);
`model` names the `teacher` value to read (default: the teacher's own name).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

from distillery.records import Demonstration, Example
from distillery.teachers.base import Generation, GenerationParams, TeacherError, TeacherSpec


def local_path(base_url: str) -> Path:
    """The filesystem path named by a `file://` URL or a plain path."""
    parsed = urlparse(base_url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("", "local"):
        return Path(base_url)
    raise ValueError(f"a precomputed teacher reads local files; got a {parsed.scheme}:// URL ({base_url})")


def read_rationales(path: Path, teacher: str) -> dict[str, list[str]]:
    """`teacher`'s rationales in `path` (a file, or every *.jsonl below it): id -> texts in file order."""
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    found: dict[str, list[str]] = {}
    for file in files:
        with file.open(encoding="utf-8") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a broken line is reported by the importer; this reader only looks up
                if (
                    isinstance(line, dict)
                    and line.get("teacher") == teacher
                    and isinstance(line.get("id"), str)
                ):
                    found.setdefault(line["id"], []).append(str(line.get("rationale", "")))
    return found


class PrecomputedTeacher:
    """Looks rationales up by example id (the first line for an example when a file holds several)."""

    def __init__(self, spec: TeacherSpec):
        if not spec.base_url:
            raise ValueError(
                f"teacher {spec.name!r}: backend 'precomputed' needs base_url = a rationale file or folder"
            )
        self.spec = spec
        self.path = local_path(spec.base_url)
        self.teacher = spec.model or spec.name
        self._texts: dict[str, list[str]] | None = None

    def _load(self) -> dict[str, list[str]]:
        if self._texts is None:
            if not self.path.exists():
                raise TeacherError(f"teacher {self.spec.name!r}: {self.path} does not exist", retryable=False)
            self._texts = read_rationales(self.path, self.teacher)
        return self._texts

    async def generate(
        self, example: Example, demonstrations: list[Demonstration], params: GenerationParams
    ) -> Generation:
        """The stored rationale for `example` (demonstrations and params cannot change a stored text)."""
        texts = self._load().get(example.id)
        if not texts:
            raise TeacherError(
                f"teacher {self.spec.name!r}: no rationale for example {example.id!r} in {self.path}",
                retryable=False,
            )
        return Generation(
            text=texts[0],
            finish_reason=None,
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=0.0,
            extra={"source": str(self.path)},
        )

    async def aclose(self) -> None:
        self._texts = None
