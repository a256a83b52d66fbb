"""The three offline synthetic domains: determinism, splits, coverage, balance, round trip."""

from __future__ import annotations

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
            assert max(counts.values()) - min(counts.values()) <= 1
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
