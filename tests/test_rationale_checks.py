import pytest

from distillery.rationales.checks import (
    agrees_with_gold,
    clean_rationale,
    is_duplicate,
    is_truncated,
    stated_answer,
)
from distillery.records import Example

FOUR = ("the ocean", "scrap yard", "shot with BBs", "buried")
YES_NO = ("yes", "no")


@pytest.mark.parametrize(
    ("text", "finish_reason", "expected"),
    [
        ("Plants need light.", "stop", False),
        ('He said "stop!"', None, False),
        ("Is it (b)?)", None, False),
        ("Plants need light. The student'", "stop", True),
        ("Plants need light.", "length", True),
        ("", None, True),
    ],
)
def test_is_truncated(text, finish_reason, expected):
    assert is_truncated(text, finish_reason) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Steel is recycled there. So, the answer is (b).", 1),
        ("Let's think step by step.\nSteel is recycled.\nAnswer:\nb\nRationale", 1),
        ("Thus, the correct option is d.", 3),
        ("So, the answer is scrap yard.", 1),
        ("So, the answer is a scrap yard, which recycles cans.", 1),
        ("(c) shot with BBs is the correct answer.", 2),
        ("The answer is (a). Wait, no: the answer is (d).", 3),
        ("So the answer is 'c'.", 2),
        ("That leaves answer (b).", 1),
        ("We can eliminate answer (a). Answer (c) is wrong.", None),
        ("The second option is scrap yard.", None),
        ("The answer is a tree.", None),
        ("The only possible option is (a) and (b).", None),
        ("Cans are made of steel.", None),
    ],
)
def test_stated_answer(text, expected):
    assert stated_answer(text, FOUR) == expected


def test_stated_answer_ignores_an_invented_follow_up_item():
    text = "Cans go to a scrap yard.\nQuestion:\nCans are made of\nOptions:\n(a) paper\n(b) tin\nAnswer:\nb"
    assert stated_answer(text, FOUR) is None
    text = "So, the answer is (b).\n# 11\nQuestion: What is...\nAnswer:\nc"
    assert stated_answer(text, FOUR) == 1


def test_stated_answer_reads_an_opening_yes_no_verdict_only_for_yes_no_options():
    assert stated_answer("Let's think step by step. No, smoking does not increase risk.", YES_NO) == 1
    assert stated_answer("Yes, it is.", YES_NO) == 0
    assert stated_answer("Yes, it is.", FOUR) is None


def test_stated_answer_opening_letter_is_opt_in():
    text = "(b) Scrap yard. Cans are recycled there."
    assert stated_answer(text, FOUR) is None
    assert stated_answer(text, FOUR, opening_letter=True) == 1


def test_agrees_with_gold():
    example = Example(id="x", question="Where do old cans go?", options=FOUR, answer=1)
    assert agrees_with_gold("So, the answer is (b).", example) is True
    assert agrees_with_gold("So, the answer is (d).", example) is False
    assert agrees_with_gold("Cans are recycled.", example) is None


def test_is_duplicate_ignores_case_punctuation_whitespace_and_lead_in():
    assert is_duplicate("Let's think step by step. Cans  are RECYCLED!", ["cans are recycled"])
    assert not is_duplicate("Cans are recycled.", ["Cans are melted."])
    assert not is_duplicate("Cans are recycled.", [])


def test_clean_rationale_cuts_follow_up_items_and_strips_the_lead_in_only_when_asked():
    raw = "Let's think step by step.\nCans are recycled.\n\nQuestion:\nWhat is tin?\n"
    assert clean_rationale(raw) == "Let's think step by step.\nCans are recycled."
    assert clean_rationale(raw, strip_lead=True) == "Cans are recycled."
