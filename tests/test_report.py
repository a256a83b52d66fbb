"""What the strong model did with the drafts: the diagnostics behind the main table's verdict."""

import pytest

from cowest.pipeline import Result
from cowest.report import refinement_breakdown
from cowest.tasks import get_task


def _rows(task, items, drafts, finals):
    rows = []
    for e, d, f in zip(items, drafts, finals):
        pred = task.extract(f, e)
        rows.append({"id": e.id, "draft": d, "final": f, "pred": pred, "score": task.score(pred, e)})
    return rows


def test_breakdown_counts_fixed_broken_and_copied_drafts():
    task = get_task("synth_med")
    items = task.load("test", 4, 0)
    gold = [task.answer_text(e) for e in items]
    wrong = [next(x for x in "ABCD" if x != g) for g in gold]
    drafts = [f"Answer: {gold[0]}", f"Answer: {wrong[1]}", f"Answer: {gold[2]}", f"Answer: {wrong[3]}"]
    finals = [f"Answer: {gold[0]}",  # right draft kept
              f"Answer: {gold[1]}",  # wrong draft fixed
              f"Answer: {wrong[2]}",  # right draft broken
              f"Answer: {wrong[3]}"]  # wrong draft copied
    res = Result("collab", task.info.name, _rows(task, items, drafts, finals), {})
    b = refinement_breakdown(task, items, res)
    assert b == {"items": 4, "draft correct": 50.0, "final correct": 50.0, "fixed by strong": 25.0,
                 "broken by strong": 25.0, "final repeats draft's answer": 50.0}


def test_breakdown_refuses_a_result_without_drafts():
    task = get_task("synth_med")
    items = task.load("test", 1, 0)
    res = Result("strong", task.info.name, [{"id": items[0].id, "final": "Answer: A", "pred": "A", "score": 0.0}], {})
    with pytest.raises(ValueError, match="no drafts"):
        refinement_breakdown(task, items, res)
