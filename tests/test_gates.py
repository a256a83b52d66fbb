"""cowest.gates: the arithmetic of the division-of-labour gates on hand-made cases."""

from __future__ import annotations

import pytest

from cowest import gates
from cowest.config import GatesSpec
from cowest.tasks import get_task


@pytest.fixture(scope="module")
def ifqa():
    return get_task("synth_ifqa", n_entities=4, attrs_per_entity=3, value_range=[21, 89], step_range=[11, 49],
                    templates={"add": 1, "sub": 1})


def _answer(e, right: bool) -> str:
    return f"Answer: {e.golds[0] if right else '1000'}"


def test_weak_knowledge_counts_free_text_recall(ifqa):
    items = ifqa.recall_items("validation")[:10]
    drafts = [f"Reasoning: x.\nAnswer: {e.golds[0]}" for e in items[:8]] + ["Answer: 12", "no answer line"]
    r = gates.weak_knowledge(ifqa, items, drafts, 0.8)
    assert r.value == pytest.approx(0.8) and r.passed is True and r.n == 10
    r = gates.weak_knowledge(ifqa, items, drafts[:7] + ["Answer: 1"] * 3, 0.8)
    assert r.value == pytest.approx(0.7) and r.passed is False and "70%" in r.detail
    # a label-style recall answer is read as free text too ("frowned upon")
    safety = get_task("synth_safety")
    rec = safety.recall_items("validation")[:2]
    assert gates.weak_knowledge(safety, rec, [f"Answer: {e.golds[0]}" for e in rec], 0.8).value == 1.0


def test_strong_skill_needs_both_the_level_and_the_gap(ifqa):
    items = [ifqa.with_facts(e) for e in ifqa.load("validation", 10)]
    strong9 = [_answer(e, i < 9) for i, e in enumerate(items)]
    weak5 = [_answer(e, i < 5) for i, e in enumerate(items)]
    weak8 = [_answer(e, i < 8) for i, e in enumerate(items)]
    ok = gates.strong_skill(ifqa, items, strong9, weak5, 0.8, 0.2)
    assert ok.value == pytest.approx(0.9) and ok.passed is True
    no_gap = gates.strong_skill(ifqa, items, strong9, weak8, 0.8, 0.2)  # 90 vs 80: a gap of 10 points
    assert no_gap.passed is False and "80%" in no_gap.detail
    weak_strong = gates.strong_skill(ifqa, items, [_answer(e, i < 7) for i, e in enumerate(items)],
                                     [_answer(e, False) for e in items], 0.8, 0.2)
    assert weak_strong.passed is False  # 70% < 80% even with a large gap


def test_draft_use_and_answer_lines(ifqa):
    items = ifqa.load("validation", 8)
    fixed = [_answer(e, i < 4) for i, e in enumerate(items)]  # half fixed
    assert gates.draft_use(ifqa, items, fixed, 0.5).passed is True
    assert gates.draft_use(ifqa, items, fixed[:3] + [_answer(e, False) for e in items[3:]], 0.5).passed is False
    cut = ["Reasoning: 47 + 28 is"] + [_answer(e, True) for e in items[1:]]  # one output cut before its answer
    r = gates.answer_lines(ifqa, items, cut, 0.02)
    assert r.value == pytest.approx(1 / 8) and r.passed is False
    assert gates.answer_lines(ifqa, items, [_answer(e, True) for e in items], 0.02).passed is True


def test_evaluate_and_premise_note(ifqa):
    spec = GatesSpec()
    val = ifqa.load("validation", 6)
    items = {"recall": ifqa.recall_items("validation")[:5], "fact_given": [ifqa.with_facts(e) for e in val],
             "draft_use": val}
    rows = {"recall": [{"draft": _answer(e, True)} for e in items["recall"]],
            "fact_given": [{"strong": _answer(e, True), "weak": _answer(e, False)} for e in items["fact_given"]],
            "draft_use": [{"final": _answer(e, True)} for e in items["draft_use"]]}
    results = gates.evaluate(ifqa, rows, items, spec)
    assert [r.gate for r in results] == list(gates.GATES) and all(r.passed for r in results)
    assert gates.premise_note(results) is None
    rows["recall"] = [{"draft": "Answer: 0"} for _ in items["recall"]]
    results = gates.evaluate(ifqa, rows, items, spec)
    note = gates.premise_note(results)
    assert note and "weak_knowledge" in note and "premise failed" in note


def test_not_applicable_without_a_fact_base(ifqa):
    r = gates.weak_knowledge(ifqa, [], [], 0.8)
    assert r.passed is None and r.value is None
    assert gates.premise_note([r]) is None  # not applicable is not a failure


def test_choose_the_first_candidate_that_passes_else_the_most_passes():
    def r(gate, passed):
        return gates.GateResult(gate, "t", None if passed is None else float(passed), 0.5, passed, 10, "")

    small = [r("strong_skill", False), r("draft_use", True), r("answer_lines", True)]
    big = [r("strong_skill", True), r("draft_use", True), r("answer_lines", True)]
    bigger = [r("strong_skill", True), r("draft_use", True), r("answer_lines", None)]  # n/a does not count
    assert gates.choose({"0.5b": small, "1.5b": big, "7b": bigger}) == "1.5b"
    assert gates.choose({"0.5b": small, "7b": bigger, "1.5b": big}) == "7b"
    worse = [r("strong_skill", False), r("draft_use", False), r("answer_lines", True)]
    assert gates.choose({"a": worse, "b": small}) == "b"  # none passes all: the most passes
    assert gates.choose({"a": small, "b": list(small)}) == "a"  # a tie: the first listed
    assert gates.choose({}) is None
    assert not gates.passes_all(small) and gates.passes_all(bigger)


def test_when_no_candidate_passes_the_closest_is_the_one_that_does_the_job_best():
    """synth_safety in the mini run: 1.5B 31% skill, 31% draft use, one unreadable output in 32;
    0.5B 31% skill, 0% draft use, every output readable. The 1.5B is the closer one."""
    def r(gate, value, passed):
        return gates.GateResult(gate, "t", value, 0.5, passed, 16, "")

    big = [r("strong_skill", 0.31, False), r("draft_use", 0.31, False), r("answer_lines", 0.03, False)]
    small = [r("strong_skill", 0.31, False), r("draft_use", 0.0, False), r("answer_lines", 0.0, True)]
    assert gates.choose({"0.5b": small, "1.5b": big}) == "1.5b"
    assert not gates.passes_all(big) and not gates.passes_all(small)


def test_the_premise_note_names_only_the_failing_tasks():
    ok = gates.GateResult("draft_use", "synth_ifqa", 0.94, 0.5, True, 16, "fixes 94%")
    bad = gates.GateResult("draft_use", "synth_safety", 0.31, 0.5, False, 16, "fixes 31%")
    note = gates.premise_note([ok, bad])
    assert "failed on synth_safety (" in note and "synth_ifqa" not in note and "that task" in note


def test_a_gate_row_is_in_percent_with_the_direction_of_its_bound():
    from cowest.gates import GateResult

    lines = GateResult("answer_lines", "t", 0.03125, 0.02, False, 32, "").row()
    assert (lines["value %"], lines["needs"], lines["passed"]) == (3.1, "<= 2%", False)
    skill = GateResult("strong_skill", "t", 0.9375, 0.8, True, 16, "").row()
    assert (skill["value %"], skill["needs"]) == (93.8, ">= 80%")
    na = GateResult("weak_knowledge", "t", None, 0.8, None, 0, "no fact base").row()
    assert na["value %"] is None and na["passed"] is None
