"""What the strong model did with the drafts (the diagnostics behind the main table), and the
paper's reported numbers as loaded from `cowest/tasks/paper_numbers.yaml`."""

import fnmatch
import tomllib
from pathlib import Path

import pytest

import cowest.tasks as tasks_pkg
from cowest.pipeline import Result
from cowest.report import refinement_breakdown
from cowest.tasks import TASKS, get_task, paper_numbers


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
    drafts[1] = f"Reasoning: {items[1].knowledge}\n{drafts[1]}"  # one draft states its fact
    finals = [f"Answer: {gold[0]}",  # right draft kept
              f"Answer: {gold[1]}",  # wrong draft fixed
              f"Answer: {wrong[2]}",  # right draft broken
              f"Answer: {wrong[3]}"]  # wrong draft copied
    res = Result("collab", task.info.name, _rows(task, items, drafts, finals), {})
    b = refinement_breakdown(task, items, res)
    assert b == {"items": 4, "draft correct": 50.0, "final correct": 50.0, "fixed by strong": 25.0,
                 "broken by strong": 25.0, "final repeats draft's answer": 50.0, "draft states the fact": 25.0}


def test_breakdown_refuses_a_result_without_drafts():
    task = get_task("synth_med")
    items = task.load("test", 1, 0)
    res = Result("strong", task.info.name, [{"id": items[0].id, "final": "Answer: A", "pred": "A", "score": 0.0}], {})
    with pytest.raises(ValueError, match="no drafts"):
        refinement_breakdown(task, items, res)


# ------------------------------------------------------------ the paper's numbers

PAPER_MAIN = {  # the values report.py held as constants before they moved to YAML
    "Weak (SFT)": {"ifqa": (69.71, 72.69), "medmcqa": (73.08, 58.26), "prosocial": (64.29, 62.40)},
    "Strong (CoT)": {"ifqa": (57.42, 65.60), "medmcqa": (71.80, 57.69), "prosocial": (39.00, 39.58)},
    "FLARE": {"ifqa": (62.07, 70.59), "medmcqa": (72.40, 58.89), "prosocial": (55.27, 54.97)},
    "SuperICL": {"ifqa": (68.85, 74.82), "medmcqa": (73.64, 58.33), "prosocial": (66.18, 63.86)},
    "RLWF": {"ifqa": (70.52, 75.04), "medmcqa": (72.01, 57.65), "prosocial": (64.85, 62.10)},
    "CoWest": {"ifqa": (75.85, 77.34), "medmcqa": (75.10, 60.13), "prosocial": (68.33, 65.61)},
}


def test_paper_numbers_loader_returns_the_reported_values():
    p = paper_numbers()
    assert p.main["CoWest"]["ifqa"] == (75.85, 77.34)
    assert p.main == PAPER_MAIN
    assert list(p.main) == list(PAPER_MAIN)  # table row order
    assert p.models == ("weak: Llama-3-8B; strong: GPT-4 (IfQA, MedMCQA), GPT-3.5-Turbo "
                        "(ProsocialDialog)")
    assert p.strong_ablation == {"GPT-4": (75.9, 38.2), "Llama-3-70B": (72.1, 62.3),
                                 "GPT-3.5-Turbo": (70.8, 68.3), "Llama-2-70B": (68.5, 55.7)}
    assert p.domain == {"synth_ifqa": "ifqa", "synth_med": "medmcqa", "synth_safety": "prosocial",
                        "ifqa": "ifqa", "medmcqa": "medmcqa", "prosocial": "prosocial"}
    # every task has a paper domain, and every paper domain has a main-table entry
    assert set(p.domain) == set(TASKS)
    assert all(set(row) == set(p.domain.values()) for row in p.main.values())


def test_paper_numbers_are_cached_but_not_shared():
    a = paper_numbers()
    a.main["CoWest"]["ifqa"] = (0.0, 0.0)
    a.domain.clear()
    b = paper_numbers()
    assert b.main["CoWest"]["ifqa"] == (75.85, 77.34) and b.domain["synth_med"] == "medmcqa"


def test_paper_numbers_live_in_the_yaml_only():
    import cowest.report as report

    assert not [k for k in vars(report) if k.startswith("PAPER_")]
    text = (Path(tasks_pkg.__file__).parent / "paper_numbers.yaml").read_text()
    assert "reported numbers" in text.splitlines()[0].lower() and "never computed on" in text.lower()
    assert "75.85" in text
    # the YAML ships with the package
    cfg = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["cowest"]
    assert any(fnmatch.fnmatch("tasks/paper_numbers.yaml", pat) for pat in patterns)


def test_paired_comparison_pairs_the_items_both_answered():
    from cowest import report

    a = Result("cowest", "t", [{"id": str(i), "score": 1.0} for i in range(6)], {})
    b = Result("sft", "t", [{"id": str(i), "score": 0.0} for i in range(6) if i != 2], {})  # item 2 failed for b
    out = report.paired_comparison(a, b)
    assert out["paired items"] == 5 and out["bootstrap_diff"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no item answered by both"):
        report.paired_comparison(a, Result("x", "t", [], {}))


def _res(method, scores, preds=None):
    preds = preds or [f"{method}-{i}" for i in range(len(scores))]
    return Result(method, "t", [{"id": str(i), "score": s, "pred": p} for i, (s, p) in enumerate(zip(scores, preds))], {})


def test_verdict_three_way_on_hand_made_cases():
    from cowest import report

    # a clear win: a right on 40 items where b is wrong, both right on 10
    win = report.paired_comparison(_res("a", [1.0] * 50), _res("b", [0.0] * 40 + [1.0] * 10))
    assert win["verdict"] == "higher" and win["bootstrap_ci_low"] > 0
    lose = report.paired_comparison(_res("b", [0.0] * 40 + [1.0] * 10), _res("a", [1.0] * 50))
    assert lose["verdict"] == "lower"
    # a tie on point estimates is never an ordering
    tie = report.paired_comparison(_res("a", [1.0, 0.0] * 10), _res("b", [0.0, 1.0] * 10))
    assert tie["bootstrap_diff"] == 0 and tie["verdict"] == "not distinguishable"
    # a small lead on few items: point estimate ahead, interval across 0
    small = report.paired_comparison(_res("a", [1.0] * 3 + [0.0] * 7), _res("b", [1.0] * 2 + [0.0] * 8))
    assert small["bootstrap_diff"] > 0 and small["verdict"] == "not distinguishable"
    assert "not distinguishable" in report.verdict_line(small) and "+10.0 points" in report.verdict_line(small)
    # an interval that touches 0 is no ordering, even when rounding puts its bound at -4e-18
    # (the mini run's CoWest vs standard refinement: [-0.178, -4.44e-18], p = 0.051)
    touch = {"bootstrap_ci_low": -0.178, "bootstrap_ci_high": -4.44e-18}
    assert report.verdict(touch) == "not distinguishable"
    assert report.verdict({"bootstrap_ci_low": 4.44e-18, "bootstrap_ci_high": 0.2}) == "not distinguishable"
    assert report.verdict({"bootstrap_ci_low": -0.178, "bootstrap_ci_high": -0.005}) == "lower"


def test_an_interval_above_0_with_mcnemar_above_alpha_is_not_an_ordering():
    from cowest import report

    # as tiny's synth_safety: a right on 4 items where b is wrong, none the other way, 8 items.
    # The percentile bootstrap's interval is above 0, the exact McNemar p is 0.125.
    a = _res("cowest", [1.0] * 5 + [0.0] * 3)
    b = _res("refine", [1.0] + [0.0] * 7)
    out = report.paired_comparison(a, b)
    assert out["bootstrap_ci_low"] > 0 and out["mcnemar_p_value"] == pytest.approx(0.125)
    assert report.tests_disagree(out) and out["verdict"] == "not distinguishable"
    line = report.verdict_line(out)
    assert "not distinguishable" in line and "McNemar's p=0.125 does not reach 0.05" in line
    assert "4 discordant items are too few" in line
    # the same lead on 6 discordant items: both tests agree (exact p = 0.031)
    big = report.paired_comparison(_res("a", [1.0] * 7 + [0.0]), _res("b", [1.0] + [0.0] * 7))
    assert big["mcnemar_p_value"] < 0.05 and big["verdict"] == "higher" and not report.tests_disagree(big)
    # with seeds on a side McNemar is not computed: the bootstrap decides alone
    seeded = {**out, "mcnemar_p_value": float("nan")}
    assert report.verdict(seeded) == "higher" and report.disagreement(seeded) == ""
    # vectors that are not a Result's scores get the same two tests
    vec = report.compare_vectors([1.0] * 5 + [0.0] * 3, [1.0] + [0.0] * 7)
    assert vec["verdict"] == "not distinguishable" and vec["mcnemar_b"] == 4 and report.tests_disagree(vec)
    assert report.compare_vectors([1.0] * 40, [0.0] * 40)["verdict"] == "higher"
    with pytest.raises(ValueError, match="one length"):
        report.compare_vectors([1.0], [1.0, 0.0])


def test_a_finding_says_when_its_two_tests_disagree():
    from cowest import experiments, report

    c = {**report.paired_comparison(_res("a", [1.0] * 5 + [0.0] * 3), _res("b", [1.0] + [0.0] * 7)),
         "a": "CoWest", "b": "RLWF"}
    assert experiments.outcome([c]) == "not distinguishable"
    why = experiments.reason([c], premise=None)
    assert why.startswith("CoWest vs RLWF: the bootstrap interval excludes 0") and "items detect" not in why


def test_identical_systems_are_never_ordered():
    from cowest import report

    preds = [str(i % 4) for i in range(40)]
    a = _res("cowest", [1.0] * 30 + [0.0] * 10, preds)
    # the same answers on 39 of 40 items (97.5%), scored differently on that one item
    b_preds = preds[:-1] + ["other"]
    b = _res("sft", [1.0] * 30 + [0.0] * 10, b_preds)
    out = report.paired_comparison(a, b)
    assert out["identical"] and out["same answer %"] == pytest.approx(97.5)
    assert out["verdict"] == "identical systems" and "same answer on 98%" in report.verdict_line(out)
    # a large difference between identical-answer systems still is not an ordering
    forced = {**report.paired_comparison(_res("a", [1.0] * 50), _res("b", [0.0] * 50)), "identical": True}
    assert report.verdict(forced) == "identical systems"


def test_trend_needs_a_distinguishable_paired_test():
    from cowest import report

    assert report.trend([20.0, 20.0]) == "not distinguishable (no paired test)"
    flat = report.paired_comparison(_res("v3", [1.0, 0.0] * 5), _res("v0", [0.0, 1.0] * 5))
    assert report.trend([20.0, 20.0], flat) == "flat within the noise"
    up = report.paired_comparison(_res("v3", [1.0] * 50), _res("v0", [0.0] * 40 + [1.0] * 10))
    assert report.trend([20.0, 100.0], up) == "rises"
    same = report.paired_comparison(_res("v3", [1.0] * 5, ["x"] * 5), _res("v0", [1.0] * 5, ["x"] * 5))
    assert report.trend([20.0, 20.0], same) == "identical systems"


def test_detectable_difference():
    from cowest import report

    assert report.detectable_difference(200, 0.2) == pytest.approx(2.8 * (0.2 / 200) ** 0.5)
    # 40 items with a 30% disagreement cannot detect less than ~24 points
    assert report.detectable_difference(40, 0.3) > 0.24
    assert report.detectable_difference(800, 0.3) < report.detectable_difference(200, 0.3)
    with pytest.raises(ValueError):
        report.detectable_difference(0, 0.2)


def test_preference_volumes_are_nested_subsets():
    from types import SimpleNamespace

    from cowest.pipeline import Pipeline

    pool = {"pairs": [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(30)]}
    fake = SimpleNamespace(cfg=SimpleNamespace(seed=3))
    by_volume = {v: Pipeline.dpo_pairs(fake, pool, v) for v in (5, 10, 20, 50)}
    for small, large in [(5, 10), (10, 20), (20, 50)]:
        assert by_volume[small] == by_volume[large][:small]  # each volume extends the smaller one
    assert len(by_volume[50]) == 30 and by_volume[5] != pool["pairs"][:5]  # shuffled, capped at the pool
    assert Pipeline.dpo_pairs(fake, pool, None) == pool["pairs"]


def test_paired_comparison_averages_seeds_per_item():
    from cowest import report

    # three seeds of a: items 0-29 right in every seed; item 30 + s right in seed s only (30, 31, 32)
    seeds = [_res("cowest", [1.0] * 30 + [1.0 if k == s else 0.0 for k in range(10)]) for s in range(3)]
    b = _res("sft", [1.0] * 20 + [0.0] * 20)
    out = report.paired_comparison(seeds, b)
    # per item: items 20-29 +1 (right vs wrong), items 30-32 +1/3; mean over 40 items
    assert out["bootstrap_diff"] == pytest.approx((10 * 1.0 + 3 / 3) / 40)
    assert out["seeds a"] == 3 and out["seeds b"] == 1
    assert out["mcnemar_p_value"] != out["mcnemar_p_value"]  # NaN: no single right/wrong per item
    # discordant: per seed, items 20-29 plus that seed's one item of 30-39 → 11/40
    assert out["discordant %"] == pytest.approx(100 * 11 / 40)
    line = report.verdict_line(out)
    assert "averaged over 3 seeds of cowest" in line and "McNemar" not in line
    # a tie over seeds stays a tie; one run against one run keeps McNemar
    tie = report.paired_comparison([_res("a", [1.0, 0.0] * 10), _res("a", [0.0, 1.0] * 10)], _res("b", [0.5] * 20))
    assert tie["bootstrap_diff"] == pytest.approx(0.0) and tie["verdict"] == "not distinguishable"
    assert "McNemar p=" in report.verdict_line(report.paired_comparison(_res("a", [1.0] * 5), _res("b", [0.0] * 5)))


def test_paired_comparison_uses_items_every_seed_answered():
    from cowest import report

    a1 = _res("cowest", [1.0] * 6)
    a2 = Result("cowest", "t", [r for r in a1.rows if r["id"] != "3"], {})  # seed 2 lost item 3 to a failed call
    out = report.paired_comparison([a1, a2], _res("sft", [0.0] * 6))
    assert out["paired items"] == 5


def test_markdown_tables_keep_small_values_readable():
    import pandas as pd

    from cowest.report import to_markdown

    df = pd.DataFrame({"name": ["a|b"], "share": [0.459], "loss": [0.049], "p": [0.03125], "EM": [93.75],
                       "zero": [0.0], "missing": [float("nan")], "n": [200]})
    assert to_markdown(df).splitlines()[-1] == "| a\\|b | 0.459 | 0.049 | 0.0312 | 93.8 | 0.0 |  | 200 |"


def test_markdown_tables_leave_missing_nullable_values_empty():
    import pandas as pd

    from cowest.report import to_markdown

    df = pd.DataFrame([{"task": "a", "queries": 13}, {"task": "b"}]).convert_dtypes()
    assert to_markdown(df).splitlines()[-2:] == ["| a | 13 |", "| b |  |"]
