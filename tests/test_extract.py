"""Answer extraction on hand-written messy model outputs."""

from __future__ import annotations

import pytest

from cowest.tasks import get_task
from cowest.tasks.base import Example
from cowest.tasks.extract import answer_segment, extract_choice, extract_free, extract_label

OPTIONS = ["120 mg", "160 mg", "the lungs", "Velorazine"]


@pytest.mark.parametrize("text,expected", [
    ("Answer: 10", "10"),
    ("Reasoning: 7 + 3 = 10.\nAnswer: 10", "10"),
    ("Answer: 7\nWait, I made a mistake.\nFinal answer: 10", "10"),
    ("**Final Answer:** Brimsholt", "Brimsholt"),
    ("answer:   ten  ", "ten"),
    ("Answer:\n\n  1732\n", "1732"),
    ("The answer is 42.", "42."),
    ("I think it is\n\nQuellmoor", "Quellmoor"),
    ("Answer: \\boxed{12}", "12"),
    ('Answer: "Paris"', "Paris"),
    ("Answer: I believe the answer is 9 bridges.", "9 bridges."),
    ("", None),
    ("   \n  ", None),
    (None, None),
    ("Answer:", None),
])
def test_extract_free(text, expected):
    assert extract_free(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Answer: B", "B"),
    ("Answer: (C)", "C"),
    ("Answer: D) Velorazine", "D"),
    ("Answer: b", "B"),
    ("The correct option is B.", "B"),
    ("Reasoning: the dose is 4 x 30 = 120 mg, so option A.\nAnswer: A", "A"),
    ("Answer: option c", "C"),
    ("Final answer: [A]", "A"),
    ("**Answer:** B. 160 mg", "B"),
    ("Answer: 160 mg", "B"),             # content, no letter
    ("Answer: 120", "A"),                # unique prefix of an option's content
    ("Answer: The drug is Velorazine", "D"),
    ("Answer: It affects the lungs.", "C"),
    ("Reasoning: A is wrong.\nAnswer: C is correct", "C"),
    ("Answer: I think the answer is (B).", "B"),
    ("Velorazine treats it.\nSo the dose is 160 mg", "B"),  # no marker: last line
    ("Answer: E", None),                 # not an option
    ("Answer: none of these", None),
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


def test_extract_choice_without_options_reads_letters_only():
    assert extract_choice("Answer: (B)") == "B"
    assert extract_choice("Answer: 160 mg") is None


def test_choice_content_prefers_longest_option():
    opts = ["liver", "liver cells", "kidneys", "heart"]
    assert extract_choice("Answer: liver cells", opts) == "B"
    assert extract_choice("Answer: the liver", opts) == "A"


LABELS3 = ["casual", "needs caution", "needs intervention"]
LABELS5 = ["casual", "possibly needs caution", "probably needs caution", "needs caution",
           "needs intervention"]


@pytest.mark.parametrize("text,labels,expected", [
    ("Answer: casual", LABELS3, "casual"),
    ("Answer: Needs Caution", LABELS3, "needs caution"),
    ("Answer: __needs_intervention__", LABELS3, "needs intervention"),
    ("It breaks the rule.\nFinal answer: needs intervention.", LABELS3, "needs intervention"),
    ("Answer: possibly needs caution", LABELS5, "possibly needs caution"),
    ("Answer: probably_needs_caution", LABELS5, "probably needs caution"),
    ("Answer: needs caution", LABELS5, "needs caution"),
    ("Answer: intervention", LABELS3, "needs intervention"),   # unique word
    ("Answer: caution", LABELS5, None),                          # ambiguous word
    ("Answer: needs caution, not casual", LABELS3, "needs caution"),
    ("This is casual chit-chat.", LABELS3, "casual"),
    ("Answer: safe", LABELS3, None),
])
def test_extract_label(text, labels, expected):
    assert extract_label(text, labels) == expected


def test_answer_segment_uses_last_marker():
    text = "Answer: A\nKnowledge: x\nAnswer: C"
    assert answer_segment(text) == "C"


def test_task_extract_and_score():
    med = get_task("synth_med")
    ex = Example("x", "Q?", ["B"], options=OPTIONS)
    assert med.extract("Answer: 160 mg", ex) == "B"
    assert med.score(med.extract("Answer: 160 mg", ex), ex) == 1.0
    assert med.score(None, ex) == 0.0
    qa = get_task("synth_ifqa")
    fx = Example("y", "If ...?", ["10", "ten", "10 bridges"])
    assert qa.score(qa.extract("Answer: Ten."), fx) == 1.0
    assert qa.score_f1(qa.extract("Answer: 10 bridges in all"), fx) == pytest.approx(2 / 3)
    saf = get_task("synth_safety")
    lx = Example("z", "Classify ...", ["needs caution"])
    assert saf.score(saf.extract("Answer: NEEDS CAUTION"), lx) == 1.0


def test_has_answer_marker_tells_a_stated_answer_from_a_cut_output():
    from cowest.tasks.extract import has_answer_marker

    assert has_answer_marker("Reasoning: 47 + 28 = 75.\nAnswer: 75")
    assert has_answer_marker("So the answer is B.")
    assert not has_answer_marker("Reasoning: 47 + 28 is")  # cut before its answer line
    assert not has_answer_marker("Answer:")  # a marker with nothing after it
    assert not has_answer_marker("") and not has_answer_marker(None)


def test_has_answer_line_needs_the_answer_line_itself():
    from cowest.tasks.extract import has_answer_line

    assert has_answer_line("Step one.\nAnswer: 42")
    assert has_answer_line("**Final answer:** C")
    assert not has_answer_line("The answer is not obvious; first we")  # a cut sentence, no answer line
    assert not has_answer_line("Reasoning...\nAnswer:")  # cut right after the marker
    assert not has_answer_line("") and not has_answer_line(None)
