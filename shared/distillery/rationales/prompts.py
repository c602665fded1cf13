"""Prompt rendering: teacher-forced chain-of-thought prompts and the student's task inputs/targets.

Teacher prompts are versioned: every stored rationale records the template version it was generated
with, so a template is never edited in place; a changed prompt is a new entry in `TEMPLATES`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from distillery.records import OPTION_LETTERS, Demonstration, Example

LEAD_IN = "Let's think step by step."


@dataclass(frozen=True)
class PromptTemplate:
    """The wording of one teacher prompt version (plain-completion and chat renderings)."""

    version: str
    instruction: str
    system: str
    chat_request: str
    # Asked in a chat demonstration that has no rationale; its assistant turn is the gold answer.
    chat_answer_request: str = "Which option is correct?"
    question_label: str = "Question:"
    options_label: str = "Answer Choices:"
    context_label: str = "Context:"
    answer_label: str = "Answer:"
    rationale_label: str = "Rationale:"
    lead_in: str = LEAD_IN
    # Where a completion model's rationale ends: it starts the next item of the few-shot pattern.
    stop: tuple[str, ...] = ("\nQuestion:", "\n\n\n")


TEMPLATES: dict[str, PromptTemplate] = {
    "cot-tf-v1": PromptTemplate(
        version="cot-tf-v1",
        instruction=(
            "Each question below is followed by its correct answer and a rationale that explains, "
            "step by step, why that answer is correct."
        ),
        system=(
            "You are a careful teacher. You are given a multiple-choice question together with its "
            "correct answer. Explain step by step why that answer is correct. Do not argue for another "
            "option, do not write new questions, and finish with a complete sentence."
        ),
        chat_request="Explain step by step why this answer is correct.",
    ),
}
TEMPLATE_VERSION = "cot-tf-v1"

ANSWER_PREFIX = "predict: "
# The official TinyLLM prefixes for the paper's two teachers, so imported paper rationales train the
# student exactly as in the published code; any other teacher gets `rationale (<name>): `.
PAPER_TEACHER_PREFIXES: dict[str, str] = {
    "flan-t5-xl": "explain: ",
    "llama-2-7b-chat": "rationale: ",
}


def get_template(version: str = TEMPLATE_VERSION) -> PromptTemplate:
    """The template registered under `version`; ValueError naming the known versions otherwise."""
    try:
        return TEMPLATES[version]
    except KeyError:
        raise ValueError(
            f"unknown prompt template version {version!r}; known versions: {', '.join(sorted(TEMPLATES))}"
        ) from None


def option_letter(index: int) -> str:
    """The letter naming option `index` (0 -> 'a')."""
    if not 0 <= index < len(OPTION_LETTERS):
        raise ValueError(f"option index {index} out of range 0..{len(OPTION_LETTERS) - 1}")
    return OPTION_LETTERS[index]


def format_options(options: Sequence[str], label: str = "Answer Choices:") -> str:
    """`Answer Choices:` followed by one `(a) text` line per option, as in the official TinyLLM prompts."""
    lines = [f"({option_letter(i)}) {text.strip()}" for i, text in enumerate(options)]
    return "\n".join([label, *lines])


# The student's answer-task target: `option_text` is the official TinyLLM / distilling-step-by-step label
# (the gold option's text), `letter_text` is `(b) option text` (what teachers are shown). With the letter
# format only about one target token in ten carries the choice, and small students collapse to a letter.
AnswerFormat = Literal["option_text", "letter_text"]
ANSWER_FORMATS: tuple[AnswerFormat, ...] = ("option_text", "letter_text")


def answer_target(example: Example, answer_format: AnswerFormat = "letter_text") -> str:
    """Gold answer in `answer_format`: `(b) option text` (as shown to teachers) or `option text`.

    `parse_answer` reads both forms back, so a student trained on either is scored the same way.
    """
    if answer_format == "option_text":
        return example.gold.strip()
    if answer_format != "letter_text":
        raise ValueError(f"unknown answer format {answer_format!r}; known: {', '.join(ANSWER_FORMATS)}")
    return f"({example.gold_letter}) {example.gold.strip()}"


def _question_block(example: Example, template: PromptTemplate, with_answer: bool = True) -> list[str]:
    lines = [f"{template.question_label} {example.question.strip()}"]
    lines.append(format_options(example.options, template.options_label))
    if example.context:
        lines.append(f"{template.context_label} {example.context.strip()}")
    if with_answer:
        lines.append(f"{template.answer_label} {answer_target(example)}")
    return lines


def _with_lead_in(rationale: str, lead_in: str) -> str:
    # Demonstrations open with the same cue that ends the prompt, so the teacher sees the pattern it
    # is asked to continue; rationales that already carry the cue are not doubled.
    rationale = rationale.strip()
    if rationale.lower().startswith(lead_in.lower()):
        return rationale
    return f"{lead_in} {rationale}"


def teacher_prompt(
    example: Example, demonstrations: Sequence[Demonstration], version: str = TEMPLATE_VERSION
) -> str:
    """Plain-completion teacher-forced CoT prompt (for base models); ends with `Rationale: <lead-in>`.

    Each demonstration is rendered Question / Answer Choices / (Context) / Answer / Rationale; a
    demonstration without a rationale is shown without the Rationale line. The target follows with its
    gold answer, so the teacher explains the correct option instead of picking one.
    """
    template = get_template(version)
    blocks = [template.instruction]
    for demo in demonstrations:
        lines = _question_block(demo.example, template)
        if demo.rationale.strip():
            lines.append(f"{template.rationale_label} {_with_lead_in(demo.rationale, template.lead_in)}")
        blocks.append("\n".join(lines))
    target = _question_block(example, template)
    target.append(f"{template.rationale_label} {template.lead_in}")
    blocks.append("\n".join(target))
    return "\n\n".join(blocks)


def teacher_messages(
    example: Example, demonstrations: Sequence[Demonstration], version: str = TEMPLATE_VERSION
) -> list[dict[str, str]]:
    """Chat rendering of the teacher prompt: a system message, few-shot user/assistant turns, the target.

    A demonstration with a rationale is the target's pattern (question and gold answer, the request for
    an explanation, the rationale as the assistant's reply). One without a rationale is still shown, as
    the question asked plainly and the gold answer as the reply: an empty assistant turn would teach the
    model to answer with nothing, and leaving it out would make the job the without-in-context ablation
    (completion prompts show it too, without a Rationale line). Every demonstration is shown either way.
    """
    template = get_template(version)
    messages = [{"role": "system", "content": template.system}]
    for demo in demonstrations:
        if demo.rationale.strip():
            user = "\n".join([*_question_block(demo.example, template), "", template.chat_request])
            reply = _with_lead_in(demo.rationale, template.lead_in)
        else:
            user = "\n".join(
                [
                    *_question_block(demo.example, template, with_answer=False),
                    "",
                    template.chat_answer_request,
                ]
            )
            reply = f"{template.answer_label} {answer_target(demo.example)}"
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": reply})
    user = "\n".join([*_question_block(example, template), "", template.chat_request])
    messages.append({"role": "user", "content": user})
    return messages


def demonstration_provenance(demonstrations: Sequence[Demonstration]) -> tuple[list[str], list[bool]]:
    """What a rationale row records of its prompt: the ids of the demonstrations shown (every one, for
    both renderings) and, for each, whether it was shown with a rationale."""
    return (
        [demo.example.id for demo in demonstrations],
        [bool(demo.rationale.strip()) for demo in demonstrations],
    )


def teacher_prefix(teacher_name: str, overrides: Mapping[str, str] | None = None) -> str:
    """Prefix of a teacher's rationale task: an override, else the paper's, else `rationale (<name>): `."""
    if overrides and teacher_name in overrides:
        return overrides[teacher_name]
    return PAPER_TEACHER_PREFIXES.get(teacher_name, f"rationale ({teacher_name}): ")


def task_prefixes(teacher_names: Iterable[str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Prefix per teacher; ValueError if two tasks (the answer task included) would share one."""
    prefixes = {name: teacher_prefix(name, overrides) for name in teacher_names}
    seen: dict[str, str] = {ANSWER_PREFIX: "the answer task"}
    for name, prefix in prefixes.items():
        if prefix in seen:
            raise ValueError(
                f"teacher {name!r} would use prefix {prefix!r}, already used by {seen[prefix]}; "
                "give it a distinct prefix"
            )
        seen[prefix] = f"teacher {name!r}"
    return prefixes


def student_input(example: Example, prefix: str) -> str:
    """Student task input: `prefix + question`, then the options, then the context (if any).

    The context comes last because it is the long part (PubMedQA abstracts): when the input is cut to
    the maximum length, the question and options survive.
    """
    parts = [f"{prefix}{example.question.strip()}", format_options(example.options)]
    if example.context:
        parts.append(f"Context: {example.context.strip()}")
    return "\n".join(parts)


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d")


def normalize_answer(text: str) -> str:
    """Comparison form of an answer text: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


_LEADING_CUE = re.compile(r"^\s*(?:the\s+)?(?:correct\s+)?answer\s*(?:is\b|:)\s*", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"^\(([a-z])\)", re.IGNORECASE)
_BARE_LETTER = re.compile(r"^([a-z])\s*[).:]?\s*$", re.IGNORECASE)
_LETTER_THEN_TEXT = re.compile(r"^([a-z])[).:]\s+\S", re.IGNORECASE)


def parse_answer(text: str, options: Sequence[str]) -> int | None:
    """Map a generated answer to an option index, or None.

    Accepted, in this order (after dropping a leading `Answer:` / `The answer is`): a parenthesised
    letter at the start (`(b)`, `(b) option text`); a lone letter (`b`, `B)`, `b.`); a letter with a
    closing bracket/dot followed by text (`b) text`); the text of exactly one option, compared with
    `normalize_answer`. Letters beyond the number of options give None.
    """
    text = _LEADING_CUE.sub("", text.strip(), count=1).strip()
    if not text:
        return None
    for pattern in (_PAREN_LETTER, _BARE_LETTER, _LETTER_THEN_TEXT):
        match = pattern.match(text)
        if match:
            index = OPTION_LETTERS.index(match.group(1).lower())
            return index if index < len(options) else None
    wanted = normalize_answer(text)
    hits = [i for i, option in enumerate(options) if normalize_answer(option) == wanted]
    return hits[0] if len(hits) == 1 else None
