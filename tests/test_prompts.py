import pytest

from distillery.rationales.prompts import (
    ANSWER_PREFIX,
    TEMPLATE_VERSION,
    TEMPLATES,
    answer_target,
    demonstration_provenance,
    format_options,
    get_template,
    normalize_answer,
    parse_answer,
    student_input,
    task_prefixes,
    teacher_messages,
    teacher_prefix,
    teacher_prompt,
)
from distillery.records import Demonstration, Example

TARGET = Example(
    id="7-980",
    question="The sun is responsible for",
    options=(
        "puppies learning new tricks",
        "children growing up and getting old",
        "flowers wilting in a vase",
        "plants sprouting, blooming and wilting",
    ),
    answer=3,
)
DEMO = Demonstration(
    example=Example(
        id="7-584",
        question="When standing miles away from Mount Rushmore",
        options=("the mountains seem very close", "the mountains seem smaller than in photographs"),
        answer=1,
    ),
    rationale="Objects look smaller the farther away they are.",
)
PUBMED = Example(
    id="21645374",
    question="Do mitochondria play a role in remodelling lace plant leaves?",
    options=("yes", "no", "maybe"),
    answer=0,
    context="Programmed cell death (PCD) is the regulated death of cells.",
)


def test_format_options_uses_the_official_letters():
    assert format_options(("yes", "no")) == "Answer Choices:\n(a) yes\n(b) no"


def test_answer_target_is_letter_and_text():
    assert answer_target(TARGET) == "(d) plants sprouting, blooming and wilting"


def test_teacher_prompt_contains_demonstrations_then_gold_answer_and_cue():
    prompt = teacher_prompt(TARGET, [DEMO])
    assert "Question: When standing miles away from Mount Rushmore" in prompt
    assert "Answer: (b) the mountains seem smaller than in photographs" in prompt
    assert "Rationale: Let's think step by step. Objects look smaller the farther away they are." in prompt
    assert prompt.index("Mount Rushmore") < prompt.index("The sun is responsible for")
    assert "Answer: (d) plants sprouting, blooming and wilting" in prompt
    assert prompt.endswith(
        "Answer: (d) plants sprouting, blooming and wilting\nRationale: Let's think step by step."
    )


def test_teacher_prompt_shows_context_and_works_without_demonstrations():
    prompt = teacher_prompt(PUBMED, [])
    assert "Context: Programmed cell death" in prompt
    assert "Answer: (a) yes" in prompt
    assert "Rationale:" not in prompt.replace("Rationale: Let's think step by step.", "")


def test_teacher_messages_render_demonstrations_as_few_shot_turns():
    messages = teacher_messages(TARGET, [DEMO, Demonstration(example=PUBMED)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Mount Rushmore" in messages[1]["content"]
    assert messages[2]["content"].endswith("Objects look smaller the farther away they are.")
    assert "Answer: (d) plants sprouting, blooming and wilting" in messages[-1]["content"]


def test_chat_demonstration_without_rationale_is_the_question_then_its_answer():
    messages = teacher_messages(TARGET, [Demonstration(example=PUBMED, rationale="  ")])
    user, reply = messages[1]["content"], messages[2]["content"]
    assert "Do mitochondria play a role" in user and "(c) maybe" in user and "Context: Programmed" in user
    assert "Answer:" not in user and user.endswith(get_template().chat_answer_request)
    assert reply == "Answer: (a) yes"
    assert messages[-1]["content"].endswith(get_template().chat_request)


def test_completion_demonstration_without_rationale_has_no_rationale_line():
    prompt = teacher_prompt(TARGET, [Demonstration(example=PUBMED), DEMO])
    blocks = prompt.split("\n\n")
    assert blocks[1].startswith("Question: Do mitochondria") and blocks[1].endswith("Answer: (a) yes")
    assert blocks[2].endswith(
        "Rationale: Let's think step by step. Objects look smaller the farther away they are."
    )
    assert prompt.count("Rationale:") == 2  # the demonstration with a rationale, and the target's cue


def test_provenance_is_every_demonstration_shown_and_whether_it_had_a_rationale():
    demos = [DEMO, Demonstration(example=PUBMED)]
    assert demonstration_provenance(demos) == (["7-584", "21645374"], [True, False])
    # Both renderings show exactly those demonstrations, in that order.
    chat = teacher_messages(TARGET, demos)
    assert len(chat) == 2 + 2 * len(demos)
    completion = teacher_prompt(TARGET, demos)
    assert completion.index("Mount Rushmore") < completion.index("mitochondria") < completion.index("The sun")


def test_unknown_template_version_names_the_known_ones():
    assert TEMPLATE_VERSION in TEMPLATES
    assert get_template().version == TEMPLATE_VERSION
    with pytest.raises(ValueError, match=TEMPLATE_VERSION):
        teacher_prompt(TARGET, [], version="cot-tf-v0")


def test_student_input_puts_prefix_question_options_then_context():
    text = student_input(PUBMED, ANSWER_PREFIX)
    assert text.startswith("predict: Do mitochondria play a role")
    assert text.index("(c) maybe") < text.index("Context: Programmed cell death")


def test_teacher_prefixes_default_to_the_papers_and_can_be_overridden():
    assert teacher_prefix("flan-t5-xl") == "explain: "
    assert teacher_prefix("llama-2-7b-chat") == "rationale: "
    assert teacher_prefix("qwen") == "rationale (qwen): "
    assert teacher_prefix("qwen", {"qwen": "why: "}) == "why: "
    with pytest.raises(ValueError, match="already used"):
        task_prefixes(["qwen", "gemma"], {"gemma": "rationale (qwen): "})
    with pytest.raises(ValueError, match="answer task"):
        task_prefixes(["qwen"], {"qwen": ANSWER_PREFIX})


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The Mountains, seem   SMALLER! ") == "mountains seem smaller"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(b)", 1),
        ("b", 1),
        ("B)", 1),
        ("b.", 1),
        ("(d) plants sprouting, blooming and wilting", 3),
        ("d) plants", 3),
        ("Answer: (c)", 2),
        ("The answer is b", 1),
        ("Plants sprouting blooming and wilting.", 3),
        ("the flowers wilting in a vase", 2),
        ("(e)", None),
        ("", None),
        ("something else entirely", None),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text, TARGET.options) == expected


def test_parse_answer_reads_option_text_that_starts_with_an_article():
    assert parse_answer("a tree", ("a rock", "a tree")) == 1
    assert parse_answer("yes", ("yes", "no", "maybe")) == 0
