"""The delta rule and pairing on hand-made scores; the evaluators; the RLWF builder."""

import pytest

from cowest import preferences
from cowest.preferences import GoldEvaluator, is_positive, parse_judge_score, summarize
from cowest.tasks import get_task

PAIRING = {"pairing": "all", "max_pairs": 4, "seed": 0}  # the values under test override these


def make_pairs(*args, **kw):
    return preferences.make_pairs(*args, **{**PAIRING, **kw})


def make_single_feedback_pairs(*args, **kw):
    return preferences.make_single_feedback_pairs(*args, **{**PAIRING, **kw})


def test_delta_rule_ties_are_negative():
    assert is_positive(0.5) and not is_positive(0.0) and not is_positive(-3)


def test_pairs_positive_with_negative_of_same_query():
    pairs = make_pairs("q1", "P", ["a", "b", "c", "d"], [2.0, 0.0, -1.0, 3.0], pairing="all", max_pairs=10)
    assert {(p.chosen, p.rejected) for p in pairs} == {("a", "b"), ("a", "c"), ("d", "b"), ("d", "c")}
    assert all(p.query_id == "q1" and p.prompt == "P" for p in pairs)


def test_only_positives_or_only_negatives_give_no_pair():
    assert make_pairs("q", "P", ["a", "b"], [1.0, 2.0]) == []
    assert make_pairs("q", "P", ["a", "b"], [0.0, -2.0]) == []
    assert make_pairs("q", "P", ["a", "b"], [0.0, 0.0]) == []  # all ties: negatives


def test_cap_and_determinism():
    drafts = [f"d{i}" for i in range(6)]
    deltas = [1, 1, 1, -1, -1, -1]
    p1 = make_pairs("q", "P", drafts, deltas, max_pairs=4, seed=3)
    p2 = make_pairs("q", "P", drafts, deltas, max_pairs=4, seed=3)
    assert len(p1) == 4 and p1 == p2


def test_extremes_pairs_best_with_worst():
    pairs = make_pairs("q", "P", ["good", "ok", "bad", "meh"], [5.0, 1.0, -4.0, 0.0], pairing="extremes", max_pairs=4)
    assert [(p.chosen, p.rejected) for p in pairs] == [("good", "bad"), ("ok", "meh")]


def test_identical_texts_are_never_paired():
    assert make_pairs("q", "P", ["same", "same "], [1.0, -1.0]) == []


def test_unknown_pairing_is_an_error():
    with pytest.raises(ValueError, match="unknown pairing"):
        make_pairs("q", "P", ["a", "b"], [1, -1], pairing="best")


def test_single_feedback_pairs_use_the_drafts_own_scores():
    pairs = make_single_feedback_pairs("q", "P", ["a", "b", "c"], [10.0, 3.0, 10.0], max_pairs=10)
    assert {(p.chosen, p.rejected) for p in pairs} == {("a", "b"), ("c", "b")}
    assert make_single_feedback_pairs("q", "P", ["a", "b"], [7.0, 7.0]) == []


def test_summary_counts():
    records = [{"deltas": [1.0, -1.0]}, {"deltas": [2.0, 3.0]}, {"deltas": [0.0, 0.0]}]
    pairs = make_pairs("q0", "P", ["x", "y"], [1.0, -1.0])
    s = summarize(records, pairs)
    assert s["queries"] == 3 and s["drafts"] == 6 and s["pairs"] == 1
    assert s["positive_share"] == pytest.approx(3 / 6)
    assert s["queries_only_positive"] == 1 and s["queries_only_negative"] == 1


@pytest.mark.parametrize(
    "text,score",
    [("Score: 7", 7.0), ("score = 10/10", 10.0), ("**Score:** 3", 3.0), ("I'd say... Score: 4\nScore: 6", 6.0),
     ("8", 8.0), ("Score: 15", 10.0), ("no idea", None), ("", None)],
)
def test_judge_score_parsing(text, score):
    assert parse_judge_score(text) == score


def test_gold_evaluator_rewards_agreement_and_form():
    task = get_task("synth_safety")
    ex = task.load("test", 1, 0)[0]
    gold = task.answer_text(ex)
    wrong = next(l for l in task.info.labels if l != gold)
    ev = GoldEvaluator()
    good, bare, bad, junk = ev.score(
        task, [ex] * 4,
        [f"Reasoning: the norm applies here, so\nAnswer: {gold}", f"Answer: {gold}",
         f"Reasoning: the norm applies here, so\nAnswer: {wrong}", "???"],
    )
    assert good == 10.0 and bare == 7.0 and bad == 3.0 and junk == 0.0


def test_compare_pair_sets_counts_overlap_and_stated_facts():
    from cowest.preferences import compare_pair_sets
    from cowest.tasks import get_task

    task = get_task("synth_ifqa")
    ex = task.load("train", 2, 0)
    fact, bare = f"Reasoning: {ex[0].knowledge}\nAnswer: 1", "Reasoning: adding.\nAnswer: 2"
    collab = [{"query_id": ex[0].id, "chosen": fact, "rejected": bare},
              {"query_id": ex[1].id, "chosen": f"Reasoning: {ex[1].knowledge}", "rejected": "x"}]
    single = [{"query_id": ex[0].id, "chosen": bare, "rejected": fact},  # the same pair, the other way round
              {"query_id": ex[1].id, "chosen": f"Reasoning: {ex[1].knowledge}", "rejected": "x"}]
    out = compare_pair_sets(task, ex, collab, single)
    assert out["in both"] == 1 and out["ordered oppositely"] == 1
    assert out["CoWest chosen state the fact %"] == 100.0 and out["CoWest rejected state the fact %"] == 0.0
    assert out["RLWF chosen state the fact %"] == 50.0 and out["RLWF rejected state the fact %"] == 50.0
