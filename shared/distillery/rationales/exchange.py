"""The rationale exchange format (../shared/rationales), read and checked without a database.

Each line: {"id": example id, "teacher": name, "rationale": text, "truncated": bool | null,
"agrees_with_gold": bool | null}. `store.rationales.import_rationale_file` stores the checked lines;
the offline GPU run (`scripts/gpu/run_gpu_small.py`) trains on them directly. Both read a file with
`parse_rationale_file`, so a line means the same to both: its flags are taken from the file where given,
computed with `distillery.rationales.checks` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillery.datasets import DatasetError, Problem, as_id, json_lines, object_problems
from distillery.rationales.checks import agrees_with_gold, is_truncated
from distillery.records import Example
from distillery.teachers.base import TeacherSpec


class RationaleFileError(DatasetError):
    """A rationale file was rejected whole; `problems` lists every bad line as `file:line: message`."""


@dataclass(frozen=True)
class ImportTarget:
    """What a rationale file is checked against: the split's examples and the teacher renames."""

    dataset: str
    split: str
    dataset_id: int
    examples: dict[str, tuple[int, Example]]  # external id -> (row id, example)
    teacher_map: dict[str, str]  # name in the file -> name in the database

    def teacher_name(self, source: str) -> str:
        return self.teacher_map.get(source, source)


@dataclass(frozen=True)
class RationaleLine:
    """A checked line of a rationale file, its flags taken from the file or computed."""

    lineno: int
    example_row: int
    teacher: str  # name in the database (after teacher_map)
    source_teacher: str  # name in the file
    text: str
    truncated: bool
    agrees: bool | None


def _check_line(
    obj: object, lineno: int, where: str, target: ImportTarget
) -> tuple[RationaleLine | None, list[Problem]]:
    problems = object_problems(obj, ("id", "teacher", "rationale"), where, lineno)
    if problems or not isinstance(obj, dict):
        return None, problems

    def bad(message: str) -> None:
        problems.append(Problem(where, lineno, message))

    ex_id, teacher, text = as_id(obj["id"]), obj["teacher"], obj["rationale"]
    if not isinstance(ex_id, str) or not ex_id:
        bad("field 'id' must be a non-empty string")
    elif ex_id not in target.examples:
        bad(f"unknown id {ex_id!r} (not an example of dataset '{target.dataset}', split '{target.split}')")
    if not isinstance(teacher, str) or not teacher.strip():
        bad("field 'teacher' must be a non-empty string")
    elif not _valid_name(target.teacher_name(teacher)):
        bad(
            f"teacher name {target.teacher_name(teacher)!r} is not accepted (letters, digits, '.', '_', '-'; "
            "at most 100; rename it with a teacher map)"
        )
    if not isinstance(text, str):
        bad("field 'rationale' must be a string")
    for flag in ("truncated", "agrees_with_gold"):
        if flag in obj and obj[flag] is not None and not isinstance(obj[flag], bool):
            bad(f"field '{flag}' must be true, false or null, got {obj[flag]!r}")
    if problems or not isinstance(ex_id, str):
        return None, problems
    row_id, example = target.examples[ex_id]
    truncated = obj.get("truncated")
    line = RationaleLine(
        lineno=lineno,
        example_row=row_id,
        teacher=target.teacher_name(teacher),
        source_teacher=teacher,
        text=text,
        truncated=is_truncated(text) if truncated is None else truncated,
        # An explicit null is kept: the file says agreement is unknown.
        agrees=obj["agrees_with_gold"] if "agrees_with_gold" in obj else agrees_with_gold(text, example),
    )
    return line, []


def _valid_name(name: str) -> bool:
    try:
        TeacherSpec(name=name)
    except ValueError:
        return False
    return True


def parse_rationale_file(content: bytes, where: str, target: ImportTarget) -> list[RationaleLine]:
    """Every line checked; RationaleFileError listing each problem as `file:line: message`."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RationaleFileError(
            [Problem(where, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    lines: list[RationaleLine] = []
    problems: list[Problem] = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends, which splitlines breaks on.
    for lineno, obj in json_lines(text.split("\n"), where, problems):
        line, found = _check_line(obj, lineno, where, target)
        problems.extend(found)
        if line is not None:
            lines.append(line)
    if not lines and not problems:
        problems.append(Problem(where, 0, "file holds no rationales"))
    if problems:
        raise RationaleFileError(problems)
    return lines
