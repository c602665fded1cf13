"""Flags and clean-up for teacher rationales: truncation, the answer a rationale states, duplicates.

These are regex heuristics, not judgements of the reasoning; they mirror the flags shipped with the
paper's rationales (../shared/rationales/README.md) so generated and imported rationales are comparable.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from distillery.rationales.prompts import LEAD_IN, normalize_answer
from distillery.records import OPTION_LETTERS, Example

# A sentence end, optionally followed by closing quotes/brackets.
_SENTENCE_END = re.compile(r"[.!?][\"'\)\]\u201d\u2019]*\s*$")

# Teachers (LLaMA-2 in the paper's release) often run on into a new, invented item; anything from there
# on is not about the example.
_FOLLOW_UP = re.compile(r"\n[ \t]*(?:#|Question\b|Q\s*[:.\d]|Options\s*:|Answer Choices\s*:)")

# A bare letter counts only when punctuation or a line end follows, so "the answer is a tree" is not (a).
_LETTER = r"(?:\(([a-z])\)|([a-z])(?:\)|(?=['\"]?\s*(?:[.,;:!?\]]|\n|$))))"
_CUE = (
    r"(?:(?:the|my|final|correct|right|best|most\s+likely)\s+)*"
    r"(?:answer|option|choice)(?:\s+choice)?"
    r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be)\s*:?|\s*:|\s*=)"
    r"(?:[ \t]*(?:therefore|thus|clearly)[ \t]+)?(?:[ \t]*(?:option|choice)[ \t]+|\s*)"
)
# "the only possible option is (a) and (b)" names no single answer.
_CUE_LETTER = re.compile(_CUE + r"['\"]?" + _LETTER + r"(?!\s*(?:and|or|,)\s*\(?[a-z]\b)", re.IGNORECASE)
_CUE_ONLY = re.compile(_CUE + r"['\"]?", re.IGNORECASE)
_LETTER_IS_CORRECT = re.compile(
    r"(?:\(([a-z])\)|\b(?:option|answer|choice)\s+([a-z])\b)"
    r"(?:(?!\([a-z]\))[^\n.]){0,120}?\bis\s+(?:the\s+)?(?:correct|right|best)\b",
    re.IGNORECASE,
)
# "That leaves answer (c)", "supports the answer choice (a)"; but not "eliminate answer (b)" or
# "answer (d) is wrong", which name an option only to reject it.
_ANSWER_PAREN = re.compile(r"\banswer(?:\s+choice)?\s*\(([a-z])\)", re.IGNORECASE)
_REJECTED_BEFORE = re.compile(
    r"\b(?:eliminate|eliminated|eliminating|rule\s+out|ruled\s+out|exclude|excluded|reject|remove|not)"
    r"\b(?:\s+(?:the|this|that))?\s*$",
    re.IGNORECASE,
)
_REJECTED_AFTER = re.compile(
    r"^\s*(?:is|are|was|can\s+be|must\s+be)\s+(?:also\s+|clearly\s+|obviously\s+)?"
    r"(?:not|wrong|incorrect|false|out|eliminated|ruled\s+out|impossible)\b",
    re.IGNORECASE,
)

# "The second option is ...", "the word of the option is ..." walk through the options; no verdict.
_ENUMERATION = re.compile(
    r"(?:\b(?:first|second|third|fourth|fifth|next|last|other|\d+(?:st|nd|rd|th))\s+(?:\w+\s+)?|\bof\s+)$",
    re.IGNORECASE,
)
_OPENING_VERDICT = re.compile(r"^(yes|no)\b\s*[,.!]", re.IGNORECASE)
_OPENING_LETTER = re.compile(r"^\(([a-z])\)\s*(\S[^\n]*)", re.IGNORECASE)
_ANY_LETTER = re.compile(r"\([a-z]\)", re.IGNORECASE)


def is_truncated(text: str, finish_reason: str | None = None) -> bool:
    """True if generation hit its length limit or the text does not end a sentence (`.`, `!`, `?`)."""
    if finish_reason == "length":
        return True
    return _SENTENCE_END.search(text) is None


def cut_follow_up(text: str) -> str:
    """Text before the first invented follow-up item (`\\nQuestion`, `\\nQ:`, `\\n#`, `\\nOptions:` ...)."""
    match = _FOLLOW_UP.search(text)
    return text[: match.start()] if match else text


def strip_lead_in(text: str, lead_in: str = LEAD_IN) -> str:
    """Text without a leading `Let's think step by step.` (any case, surrounding whitespace dropped)."""
    stripped = text.lstrip()
    if stripped.lower().startswith(lead_in.lower()):
        return stripped[len(lead_in) :].lstrip()
    return stripped


# What may follow an option named in prose: the end of a clause, or a word that starts a reason.
_OPTION_END = (
    r"(?=[ \t]*(?:[.,;:!?)\]\"'\u201d\u2019\n]|$)|\s+(?:because|since|as|which|who|that|and|so|but|i\.e)\b)"
)


@functools.lru_cache(maxsize=4096)
def _option_pattern(option: str) -> re.Pattern[str] | None:
    words = re.findall(r"\w+", option.lower())
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    if not words:
        return None
    body = r"\W+".join(re.escape(word) for word in words)
    return re.compile(r"[\s\"'\u201c\u2018]*(?:(?:a|an|the)\s+)?" + body + _OPTION_END, re.IGNORECASE)


def _option_at(text: str, options: Sequence[str]) -> int | None:
    """Index of the option whose text opens `text` as a whole phrase (longest wins), else None."""
    best: tuple[int, int] | None = None
    for index, option in enumerate(options):
        pattern = _option_pattern(option)
        match = pattern.match(text) if pattern else None
        if match and (best is None or match.end() > best[0]):
            best = (match.end(), index)
    return None if best is None else best[1]


def stated_answer(text: str, options: Sequence[str], opening_letter: bool = False) -> int | None:
    """The option a rationale states last, or None if it states none.

    Recognised: a letter after a cue (`the answer is (c)`, `Answer: b`, `the correct option is d`),
    option text right after such a cue (`So, the answer is yes.`), `(b) ... is the correct answer`, an
    opening `Yes,`/`No.` verdict when the options are yes/no, and (if `opening_letter`) a rationale that
    opens with `(x) <option>` and names no other letter. Text after an invented follow-up item is ignored.
    """
    # Cut first: a follow-up item may start right after the lead-in's line break.
    text = strip_lead_in(cut_follow_up(text))
    found: list[tuple[int, int]] = []  # (position, option index)

    def add(position: int, letter: str) -> None:
        index = OPTION_LETTERS.index(letter.lower())
        if index < len(options):
            found.append((position, index))

    for match in _CUE_LETTER.finditer(text):
        add(match.start(), match.group(1) or match.group(2))
    for match in _ANSWER_PAREN.finditer(text):
        before = text[max(0, match.start() - 30) : match.start()]
        after = text[match.end() : match.end() + 40]
        if not _REJECTED_BEFORE.search(before) and not _REJECTED_AFTER.match(after):
            add(match.start(), match.group(1))
    for match in _LETTER_IS_CORRECT.finditer(text):
        add(match.start(), match.group(1) or match.group(2))
    for match in _CUE_ONLY.finditer(text):
        if _ENUMERATION.search(text, max(0, match.start() - 20), match.start()):
            continue
        index = _option_at(text[match.end() :], options)
        if index is not None:
            found.append((match.start(), index))

    normalized = [normalize_answer(option) for option in options]
    verdict = _OPENING_VERDICT.match(text)
    if verdict and set(normalized) <= {"yes", "no", "maybe"} and verdict.group(1).lower() in normalized:
        found.append((0, normalized.index(verdict.group(1).lower())))

    if opening_letter and not found:
        opening = _OPENING_LETTER.match(text)
        if opening and len(_ANY_LETTER.findall(text)) == 1:
            letter_index = OPTION_LETTERS.index(opening.group(1).lower())
            if letter_index < len(options) and _option_at(opening.group(2), options) == letter_index:
                found.append((0, letter_index))

    if not found:
        return None
    # Last statement wins; at equal positions the first found (a letter) beats option text.
    return max(found, key=lambda hit: hit[0])[1]


def agrees_with_gold(text: str, example: Example, opening_letter: bool = False) -> bool | None:
    """Whether the answer the rationale states is the gold one; None if it states none."""
    stated = stated_answer(text, example.options, opening_letter=opening_letter)
    return None if stated is None else stated == example.answer


def _dedup_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", strip_lead_in(text).lower()).split())


def is_duplicate(text: str, others: Iterable[str]) -> bool:
    """True if `text` equals one of `others` after normalising case, punctuation, whitespace and lead-in."""
    key = _dedup_key(text)
    return any(_dedup_key(other) == key for other in others)


def clean_rationale(text: str, strip_lead: bool = False) -> str:
    """Rationale cut before any invented follow-up item, optionally without the lead-in, and stripped."""
    text = cut_follow_up(text)
    if strip_lead:
        text = strip_lead_in(text)
    return text.strip()
