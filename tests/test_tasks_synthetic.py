"""The three offline synthetic domains: determinism, splits, coverage, balance, round trip."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter

import pytest

from cowest.tasks import TASKS, get_task
from cowest.tasks.base import FORMATS, OPTION_LETTERS, Task

SYNTH = ["synth_ifqa", "synth_med", "synth_safety"]
SPLITS = ["train", "validation", "test"]


@pytest.fixture(scope="module", params=SYNTH)
def loaded(request):
    task = get_task(request.param)
    data = {s: task.load(s, seed=0) for s in SPLITS}
    return task, data


def test_registry_names():
    for name in SYNTH + ["ifqa", "medmcqa", "prosocial"]:
        assert name in TASKS
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")


@pytest.mark.parametrize("name", SYNTH)
def test_unknown_param_is_named(name):
    with pytest.raises(ValueError, match="bogus_knob"):
        get_task(name, bogus_knob=1)
    with pytest.raises(ValueError, match="template"):
        get_task(name, templates=["no_such_template"])
    with pytest.raises(ValueError, match="difficulty"):
        get_task(name, difficulty="extreme")


@pytest.mark.parametrize("name", SYNTH)
def test_same_seed_same_data_other_seed_other_data(name):
    a = get_task(name).load("train", 50, seed=3)
    b = get_task(name).load("train", 50, seed=3)
    c = get_task(name).load("train", 50, seed=4)
    assert a == b
    assert [e.question for e in a] != [e.question for e in c]
    # a smaller load is a prefix of a larger one
    assert get_task(name).load("train", 20, seed=3) == a[:20]


@pytest.mark.parametrize("name", SYNTH)
def test_kb_seed_changes_facts(name):
    assert get_task(name, kb_seed=1).facts != get_task(name, kb_seed=2).facts
    assert get_task(name, kb_seed=1).facts == get_task(name, kb_seed=1).facts


def test_sizes_and_disjoint_questions(loaded):
    task, data = loaded
    assert [len(data[s]) for s in SPLITS] == [task.sizes[s] for s in SPLITS]
    qs = {s: {e.question for e in data[s]} for s in SPLITS}
    rendered = {s: {task.render_question(e) for e in data[s]} for s in SPLITS}
    for s in SPLITS:
        assert len(qs[s]) == len(data[s])  # no duplicate within a split
    for a, b in [("train", "test"), ("train", "validation"), ("validation", "test")]:
        assert not qs[a] & qs[b], (a, b)
        assert not rendered[a] & rendered[b], (a, b)
    # other sampling seeds still never hit another split's questions
    other = {e.question for e in task.load("test", 100, seed=7)}
    assert not other & {e.question for e in task.load("train", 300, seed=8)}


def test_train_covers_test_facts(loaded):
    task, data = loaded
    train_counts = Counter(f for e in data["train"] for f in e.meta["facts"])
    test_facts = {f for e in data["test"] for f in e.meta["facts"]}
    assert test_facts, "test items must name their facts"
    assert test_facts <= set(task.facts)
    assert min(train_counts[f] for f in test_facts) >= 2
    # and the test set asks about (nearly) every fact of the knowledge base
    assert len(test_facts) >= 0.9 * len(task.facts)


def test_round_trip_every_format(loaded):
    task, data = loaded
    for split in SPLITS:
        for ex in data[split]:
            gold = task.answer_text(ex)
            for fmt in FORMATS:
                target = task.target(ex, fmt)
                assert target.splitlines()[-1] == f"Answer: {gold}"
                assert target.count("Answer:") == 1
                pred = task.extract(target, ex)
                assert pred == gold, (target, pred)
                assert task.score(pred, ex) == 1.0
    preds = [task.extract(task.target(e, "cot"), e) for e in data["test"]]
    res = task.evaluate(preds, data["test"])
    assert res[task.info.metrics[0]] == 1.0 and res[task.info.metrics[1]] == 1.0
    assert res["n"] == len(data["test"]) and res["unparseable"] == 0


def test_texts_are_short(loaded):
    task, data = loaded
    for ex in data["train"] + data["test"]:
        assert len(ex.question.split()) <= 40, ex.question
        assert 0 < len(ex.rationale.split()) <= 35, ex.rationale
        assert ex.knowledge and len(ex.knowledge.split()) <= 40


def test_balance(loaded):
    task, data = loaded
    for split in SPLITS:
        counts = Counter(e.golds[0] for e in data[split])
        if task.info.answer_type == "choice":
            assert set(counts) == set("ABCD")
            # balanced within each question type (a dose question's gold is not mostly D)
            for qtype in {e.meta["qtype"] for e in data[split]}:
                per = Counter(e.golds[0] for e in data[split] if e.meta["qtype"] == qtype)
                assert max(per.values()) - min(per.get(x, 0) for x in "ABCD") <= 1, (split, qtype, per)
        elif task.info.answer_type == "label":
            assert set(counts) == set(task.info.labels)
            assert max(counts.values()) - min(counts.values()) <= 1
        else:
            qtypes = Counter(e.meta["qtype"] for e in data[split])
            assert set(qtypes) == set(task.weights)


def test_render_and_corpus(loaded):
    task, data = loaded
    ex = data["test"][0]
    text = task.render_question(ex)
    assert text.startswith(ex.question)
    if task.info.answer_type == "choice":
        assert len(ex.options) == 4 and len(set(ex.options)) == 4
        for i, opt in enumerate(ex.options):
            assert f"\n{OPTION_LETTERS[i]}) {opt}" in text
    if task.info.answer_type == "label":
        for label in task.info.labels:
            assert label in text.splitlines()[-1]
    docs = task.corpus()
    assert docs and all(isinstance(d, str) and d for d in docs)
    blob = " ".join(docs)
    for fact in list(task.facts)[:5]:
        assert fact.split(".")[0] in blob
    desc = task.describe()
    assert desc["n_facts"] == len(task.facts) and desc["templates"]


def test_answers_are_correct_synth_ifqa():
    task = get_task("synth_ifqa")
    for ex in task.load("test", 100):
        kind = ex.meta["qtype"]
        if kind in ("add", "sub", "merge", "times", "year"):
            assert ex.golds[0].lstrip("-").isdigit()
            assert ex.golds[0] in ex.rationale  # "... = <answer>."
        if kind == "compare":
            assert ex.golds[0] in ex.question


def test_option_orders_differ_between_train_and_test_for_a_fact():
    task = get_task("synth_med")
    train = task.load("train", 300)
    test = task.load("test", 300)
    def letters(data):
        out = {}
        for e in data:
            if e.meta["qtype"] == "two_hop":
                out.setdefault(e.meta["facts"][0], set()).add(e.golds[0])
        return out
    tr, te = letters(train), letters(test)
    shared = set(tr) & set(te)
    assert shared
    assert any(te[f] - tr[f] or len(te[f]) > 1 for f in shared)


def test_safety_labels_follow_norms():
    task = get_task("synth_safety")
    for ex in task.load("test", 150):
        kind = ex.meta["qtype"]
        if kind == "match":
            word = "strictly forbidden" if ex.golds[0] == "needs intervention" else "frowned upon"
            assert word in ex.knowledge
        else:
            assert ex.golds[0] == "casual"


@pytest.mark.parametrize("name", SYNTH)
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_difficulties_and_knobs(name, difficulty):
    task = get_task(name, difficulty=difficulty, sizes={"test": 200})
    test = task.load("test")
    assert len(test) == 200
    assert not {e.question for e in test} & {e.question for e in task.load("train")}


def test_template_and_balance_knobs():
    task = get_task("synth_ifqa", templates={"add": 2, "year": 1})
    kinds = Counter(e.meta["qtype"] for e in task.load("train", 90))
    assert kinds == {"add": 60, "year": 30}
    unbalanced = get_task("synth_med", balance=False).load("train", 200)
    assert len({e.golds[0] for e in unbalanced}) == 4
    no_held = get_task("synth_med", heldout_paraphrases=False)
    tr, te = no_held.load("train", 200), no_held.load("test", 200)
    assert not {e.question for e in tr} & {e.question for e in te}
    small = get_task("synth_safety", n_groups=3, norms_per_group=2, no_rule_per_group=1)
    assert len(small.facts) == 9 and len(small.load("train", 60)) == 60
    assert isinstance(small, Task)


# ------------------------------------------------------------ package layout, golden data

def test_one_module_per_domain_registers_its_task():
    from cowest.tasks import synthetic
    from cowest.tasks.synthetic import common, ifqa, med, safety

    assert TASKS["synth_ifqa"] is ifqa.SynthIfQA
    assert TASKS["synth_med"] is med.SynthMed
    assert TASKS["synth_safety"] is safety.SynthSafety
    for cls in (ifqa.SynthIfQA, med.SynthMed, safety.SynthSafety):
        assert issubclass(cls, common.SyntheticTask)
    # the package docstring (shown by the data notebook) still documents all three domains
    for header in ("Common machinery", "synth_ifqa (", "synth_med (", "synth_safety ("):
        assert header in synthetic.__doc__, header
    assert synthetic.SAFETY_LABELS == get_task("synth_safety").info.labels


# sha256 of the first 50 items of each split (seed 0, `dataclasses.asdict`) and the corpus,
# taken from the single-module generator before it was split into one module per domain.
# A change here means the generated data changed (ids, questions, answers or facts): bump the
# task's `generator_version`, so that runs rebuild their data stage, and update the digest.
# synth_med's changed once on purpose: gold letters are balanced within each question type.
GOLDEN = [
    ("synth_ifqa", {}, "60e6de7e7005586fe68c2a9859ccd5d845e9e6fc3443a8d291a416f91fbb89c8"),
    ("synth_ifqa", {"n_entities": 6}, "47252f522e48c9d33edb5cbf16e83ed2b073b42781367bdedad5ebcc06161bc0"),
    ("synth_med", {}, "d177ce33d0821afce28e3d89f4bf4b42995b54c4638743cf44e1cdfd2c1a4e29"),
    ("synth_med", {"n_drugs": 6}, "64bccdd44b42f8c337095d0de14a18b543f4e23acb09c60becb3f0319191aabd"),
    ("synth_safety", {}, "dd4fdacb1a61d5d9cae67eedcf9fbdfa3974b15ac7da95c287218b34dcb49cd1"),
    ("synth_safety", {"n_groups": 4}, "a1e6ddc428fc0094aeeadee31b4f173801177676cbef017cf44864a72a0c24f4"),
]


@pytest.mark.parametrize("name,params,digest", GOLDEN)
def test_generated_data_is_unchanged(name, params, digest):
    task = get_task(name, **params)
    blob = {s: [dataclasses.asdict(e) for e in task.load(s, 50, seed=0)] for s in SPLITS}
    blob["corpus"] = task.corpus()
    assert hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest() == digest


# ------------------------------------------------------ per-row scoring and intervals

def _old_pipeline_scoring(task, items, finals, seed):
    """The scoring `pipeline.Run.evaluate` did inline before `score_row`/`evaluate_rows`."""
    from cowest.metrics import bootstrap_ci, bootstrap_metric_ci, macro_f1

    rows = [{"id": e.id, "final": f} for e, f in zip(items, finals)]
    for r, e in zip(rows, items):
        r["pred"] = task.extract(r["final"], e)
        r["gold"] = task.answer_text(e)
        r["score"] = task.score(r["pred"], e)
        if task.info.answer_type == "free":
            r["f1"] = task.score_f1(r["pred"], e)
    metrics = dict(task.evaluate([r["pred"] for r in rows], items))
    m1, m2 = task.info.metrics
    lo, hi = bootstrap_ci([r["score"] for r in rows], seed=seed)
    metrics[f"{m1}_lo"], metrics[f"{m1}_hi"] = lo, hi
    if m2 == "f1":
        lo, hi = bootstrap_ci([r["f1"] for r in rows], seed=seed)
    else:
        labels = task.info.labels or []
        lo, hi = bootstrap_metric_ci(
            lambda p, g: macro_f1(p, g, labels), [r["pred"] for r in rows], [r["gold"] for r in rows],
            seed=seed,
        )
    metrics[f"{m2}_lo"], metrics[f"{m2}_hi"] = lo, hi
    return rows, metrics


def _mixed_finals(task, items):
    """Model outputs of every kind: right, failed call, unparseable, near miss, wrong."""
    finals = []
    for i, e in enumerate(items):
        gold = task.answer_text(e)
        kind = task.info.answer_type
        k = i % 5
        if k == 0:
            finals.append(task.target(e, "cot"))
        elif k == 1:
            finals.append(None)
        elif k == 2:
            finals.append("I am not sure what to say here.")
        elif k == 3:  # right answer, said differently (partial F1 for free-form)
            if kind == "free":
                finals.append(f"Answer: maybe {gold} or so")
            elif kind == "choice":
                finals.append(f"Answer: {e.options[OPTION_LETTERS.index(gold)]}")
            else:
                finals.append(f"Answer: {gold.upper()}")
        else:
            if kind == "free":
                finals.append("Answer: 4242")
            else:
                labels = task.info.labels
                finals.append(f"Answer: {labels[(labels.index(gold) + 1) % len(labels)]}")
    return finals


@pytest.mark.parametrize("name", SYNTH)
@pytest.mark.parametrize("seed", [0, 7])
def test_score_row_and_evaluate_rows_give_the_old_pipeline_numbers(name, seed):
    task = get_task(name, **({"n_entities": 6} if name == "synth_ifqa" else {}))
    items = task.load("test", 40, seed=0)
    finals = _mixed_finals(task, items)
    old_rows, old_metrics = _old_pipeline_scoring(task, items, finals, seed)

    rows = [{"id": e.id, "final": f} for e, f in zip(items, finals)]
    for r, e in zip(rows, items):
        r.update(task.score_row(r["final"], e))
    assert rows == old_rows
    assert [list(r) for r in rows] == [list(r) for r in old_rows]  # same keys, same order
    new_metrics = task.evaluate_rows(rows, items, seed=seed)
    assert new_metrics == old_metrics
    assert list(new_metrics) == list(old_metrics)

    # the rows are mixed enough that a wrong interval choice would show
    m1, m2 = task.info.metrics
    assert 0 < new_metrics[m1] < 1 and new_metrics["unparseable"] > 0
    assert new_metrics[f"{m1}_lo"] < new_metrics[m1] < new_metrics[f"{m1}_hi"]
    if task.info.answer_type == "free":
        assert set(r) >= {"pred", "gold", "score", "f1"}
        assert any(0 < r["f1"] < 1 for r in rows)  # f1 differs from EM on some rows
        assert (new_metrics["f1_lo"], new_metrics["f1_hi"]) != (new_metrics["em_lo"], new_metrics["em_hi"])
    else:
        assert "f1" not in rows[0]


def test_score_row_fields():
    qa, med, saf = get_task("synth_ifqa"), get_task("synth_med"), get_task("synth_safety")
    e = qa.load("test", 1)[0]
    assert qa.score_row(qa.target(e, "direct"), e) == {
        "pred": e.golds[0], "gold": e.golds[0], "score": 1.0, "f1": 1.0}
    assert qa.score_row(None, e) == {"pred": None, "gold": e.golds[0], "score": 0.0, "f1": 0.0}
    m = med.load("test", 1)[0]
    wrong = next(x for x in "ABCD" if x != m.golds[0])
    assert med.score_row(f"Answer: {wrong}", m) == {"pred": wrong, "gold": m.golds[0], "score": 0.0}
    s = saf.load("test", 1)[0]
    assert saf.score_row(f"Answer: {s.golds[0].upper()}", s) == {
        "pred": s.golds[0], "gold": s.golds[0], "score": 1.0}


def test_evaluate_rows_checks_rows_against_items():
    task = get_task("synth_med")
    items = task.load("test", 3)
    rows = [{"id": e.id, **task.score_row(task.target(e, "direct"), e)} for e in items]
    with pytest.raises(ValueError, match="2 rows for 3 examples"):
        task.evaluate_rows(rows[:2], items)
    with pytest.raises(ValueError, match="row 0 has id"):
        task.evaluate_rows(rows[::-1], items)
    out = task.evaluate_rows(rows, items)
    assert out["accuracy"] == out["accuracy_lo"] == out["accuracy_hi"] == 1.0
    assert out["macro_f1_lo"] <= out["macro_f1"] <= out["macro_f1_hi"]


# ------------------------------------------------------------ the miniature's knobs and gates

MINI = {
    "synth_ifqa": {"n_entities": 4, "attrs_per_entity": 3, "value_range": [21, 89], "step_range": [11, 49],
                   "templates": {"add": 1, "sub": 1}},
    "synth_med": {"n_drugs": 8, "weight_range": [21, 89], "templates": {"dose": 1}},
    "synth_safety": {"n_groups": 3, "templates": {"match": 2, "contrast": 1}},
}
STYLES = {"fact_step": 2, "answer_only": 1, "step_only": 1}


@pytest.mark.parametrize("name", sorted(MINI))
def test_split_by_question_not_by_fact(name):
    """Train and test share the facts (the weak model must learn them) but never a question."""
    task = get_task(name, **MINI[name])
    train, test = task.load("train", 60), task.load("test", 60)
    assert not {e.question for e in train} & {e.question for e in test}
    train_facts = {f for e in train for f in e.meta["facts"]}
    test_facts = {f for e in test for f in e.meta["facts"]}
    assert test_facts <= train_facts  # every fact a test item needs was taught


@pytest.mark.parametrize("name", sorted(MINI))
def test_recall_items_hold_out_their_wordings(name):
    task = get_task(name, **MINI[name], sft_recall=8)
    train, held = task.recall_items("train"), task.recall_items("validation")
    n_facts = len(task.recall_facts())
    assert n_facts > 0 and len(train) == 8 * n_facts and len(held) == 3 * n_facts
    assert not {e.question for e in train} & {e.question for e in held}
    for e in held:
        assert e.meta["qtype"] == "recall" and task.target(e, "cot").startswith("Reasoning: " + e.knowledge)
    # sft_examples adds the recall questions to the training split
    items = task.load("train", 10)
    assert len(task.sft_examples(items)) == 10 + 8 * n_facts
    assert len(get_task(name, **MINI[name]).sft_examples(items)) == 10  # off by default
    with pytest.raises(ValueError, match="sft_recall"):
        get_task(name, sft_recall=9)


@pytest.mark.parametrize("name", sorted(MINI))
def test_target_styles_mix_and_default(name):
    task = get_task(name, **MINI[name], target_styles=STYLES)
    items = task.load("train", 80)
    styles = Counter(task.target_style(e) for e in items)
    assert set(styles) == set(STYLES) and styles["fact_step"] > styles["answer_only"]
    for e in items:
        tgt, style = task.target(e, "cot"), task.target_style(e)
        assert tgt.splitlines()[-1] == f"Answer: {task.answer_text(e)}"
        if style == "answer_only":
            assert tgt == f"Answer: {task.answer_text(e)}"
        elif style == "step_only":
            assert e.knowledge not in tgt and tgt.startswith("Reasoning: ")
        else:
            assert e.knowledge.split(".")[0] in tgt
        assert task.target(e, "direct") == f"Answer: {task.answer_text(e)}"  # styles only touch cot
    plain = get_task(name, **MINI[name])  # default: every cot target states the fact
    assert all(plain.target_style(e) == "fact_step" for e in plain.load("train", 20))
    with pytest.raises(ValueError, match="unknown target style"):
        get_task(name, target_styles={"poem": 1})


@pytest.mark.parametrize("name", sorted(MINI))
def test_fact_given_items_and_wrong_step_drafts(name):
    task = get_task(name, **MINI[name])
    items = task.load("validation", 30)
    made = 0
    for e in items:
        given = task.with_facts(e)
        assert given.question.startswith(e.knowledge) and given.golds == e.golds and given.id != e.id
        draft = task.wrong_step_draft(e)
        if draft is None:
            continue
        made += 1
        assert e.knowledge.split(".")[0] in draft  # the fact is stated right
        pred = task.extract(draft, e)
        assert pred is not None and task.score(pred, e) == 0.0  # and the answer is wrong
    assert made >= 0.6 * len(items)


def test_states_fact_reads_numbers_and_rules():
    from cowest.tasks import get_task

    ifqa = get_task("synth_ifqa")
    ex = ifqa.load("test", 1, 0)[0]
    num = ex.knowledge and __import__("re").findall(r"\d+", ex.knowledge)
    assert num, ex.knowledge
    assert ifqa.states_fact(f"Reasoning: {ex.knowledge} Adding 3.", ex) is True
    assert ifqa.states_fact("Reasoning: adding 3 gives the total.\nAnswer: 12", ex) is False
    safety = get_task("synth_safety")
    s = safety.load("test", 1, 0)[0]
    assert safety.states_fact(f"Reasoning: {s.knowledge} So it is fine.", s) is True
    assert safety.states_fact("Reasoning: it sounds fine.\nAnswer: casual", s) is False
