"""Load and validate multiple-choice datasets in the JSON Lines format of ../shared/datasets.

Each line: {"id": str, "question": str, "options": [str, ...], "answer": int, "context": str | null}.
Validation reads the whole file and reports every problem as `file:line: message`, so a user fixes a
file in one pass; callers import nothing unless the whole file is clean.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from distillery.records import Example

SPLITS = ("train", "dev", "test")
REQUIRED = ("id", "question", "options", "answer")
# Vendored samples (small, redistributable) for the demo and tests; RiddleSense/BioASQ are never vendored.
SAMPLES_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class DatasetError(ValueError):
    """Raised with every problem found; `problems` keeps them for structured reporting."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(str(p) for p in problems[:50])
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s):\n{shown}{more}")


def json_lines(lines: Iterable[str], where: str, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line; a line that is no JSON adds to `problems`."""
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield lineno, json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))


def object_problems(obj: object, required: Sequence[str], where: str, line: int) -> list[Problem]:
    """What keeps a parsed line from being a JSON object with every `required` field (nothing if it is)."""
    if not isinstance(obj, dict):
        return [Problem(where, line, f"expected a JSON object, got {type(obj).__name__}")]
    needed = ", ".join(required)
    return [
        Problem(where, line, f"missing required field '{key}' (required: {needed})")
        for key in required
        if key not in obj
    ]


def as_id(value: object) -> object:
    """An `id` field as text when the file gives a number (booleans stay what they are)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_record(obj: object, where: str, line: int) -> tuple[Example | None, list[Problem]]:
    problems = object_problems(obj, REQUIRED, where, line)
    if problems or not isinstance(obj, dict):
        return None, problems

    def bad(msg: str) -> None:
        problems.append(Problem(where, line, msg))

    ex_id, question, options, answer = as_id(obj["id"]), obj["question"], obj["options"], obj["answer"]
    context = obj.get("context")
    if not isinstance(ex_id, str) or not ex_id.strip():
        bad("field 'id' must be a non-empty string")
    if not isinstance(question, str) or not question.strip():
        bad("field 'question' must be a non-empty string")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        bad("field 'options' must be a list of strings")
    elif len(options) < 2:
        bad(f"field 'options' needs at least 2 options, got {len(options)}")
    elif any(not o.strip() for o in options):
        bad("field 'options' contains an empty option")
    if not isinstance(answer, int) or isinstance(answer, bool):
        bad(f"field 'answer' must be an integer index into 'options', got {answer!r}")
    elif isinstance(options, list) and len(options) >= 2 and not 0 <= answer < len(options):
        bad(f"field 'answer' = {answer} is not within 'options' (accepted: 0..{len(options) - 1})")
    if context is not None and not isinstance(context, str):
        bad("field 'context' must be a string or null")
    if problems or not isinstance(ex_id, str):
        return None, problems
    return Example(ex_id, question, tuple(options), answer, context), []


def parse_lines(lines: Iterable[str], where: str) -> list[Example]:
    """Parse and validate JSON Lines; raise DatasetError listing every bad line."""
    examples: list[Example] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, obj in json_lines(lines, where, problems):
        example, found = _check_record(obj, where, lineno)
        problems.extend(found)
        if example is None:
            continue
        if example.id in seen:
            problems.append(
                Problem(where, lineno, f"duplicate id '{example.id}' (first seen on line {seen[example.id]})")
            )
            continue
        seen[example.id] = lineno
        examples.append(example)
    if problems:
        raise DatasetError(problems)
    if not examples:
        raise DatasetError([Problem(where, 0, "file holds no examples")])
    return examples


def load_jsonl(path: str | Path) -> list[Example]:
    """Read a local dataset file (validated whole; see `parse_lines`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        return parse_lines(fh, str(path))


def dataset_file(name: str, split: str, datasets_dir: Path) -> Path:
    """Where a named dataset's split lives: the shared folder first, then the vendored sample."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (accepted: {', '.join(SPLITS)})")
    for root in (datasets_dir, SAMPLES_DIR):
        candidate = root / name / f"{split}.jsonl"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {split} split for dataset '{name}' under {datasets_dir} or {SAMPLES_DIR}")


def sample_file(name: str, split: str) -> Path:
    """A vendored sample split (arc, obqa, piqa, pubmedqa)."""
    path = SAMPLES_DIR / name / f"{split}.jsonl"
    if not path.is_file():
        names = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no vendored sample '{name}/{split}' (available: {', '.join(names)})")
    return path
