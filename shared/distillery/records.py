"""Plain records passed between the core modules (no ORM, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

OPTION_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Example:
    """One multiple-choice question; `answer` is the 0-based index of the gold option."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    context: str | None = None

    @property
    def gold(self) -> str:
        return self.options[self.answer]

    @property
    def gold_letter(self) -> str:
        return OPTION_LETTERS[self.answer]


@dataclass(frozen=True)
class Demonstration:
    """An in-context example shown to a teacher: an example plus a rationale for it (may be empty)."""

    example: Example
    rationale: str = ""
