"""Real-dataset loaders on small files in the real formats, and the offline error."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from cowest.tasks import DatasetUnavailable, get_task
from cowest.tasks import real
from cowest.tasks.base import FORMATS


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _round_trip(task, examples):
    for ex in examples:
        for fmt in FORMATS:
            target = task.target(ex, fmt)
            assert target.splitlines()[-1].startswith("Answer: ")
            assert task.score(task.extract(target, ex), ex) == 1.0, target


# ---------------------------------------------------------------------------- IfQA

def _ifqa_rows(n: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": f"If {prefix} city {i} moved north, what would "
             f"its capital be?", "answer": [f"Capital {i}", f"cap {i}"],
             "passage": f"City {i} lies south. Its capital is Capital {i}. More text here."}
            for i in range(n)]


def test_ifqa_directory_of_official_files(tmp_path):
    (tmp_path / "ifqa_train.json").write_text(json.dumps(_ifqa_rows(20, "tr")))
    # dev: JSON lines, answers as a list of dicts
    _jsonl(tmp_path / "ifqa_dev.jsonl",
           [{"question": f"If dev {i}?", "answers": [{"text": f"D{i}"}, {"text": f"d-{i}"}]}
            for i in range(6)])
    # test: {"data": [...]} with a single-string answer and a numeric answer
    (tmp_path / "ifqa_test.json").write_text(json.dumps({"data": [
        {"question": "If two plus two were five, what is 2+2?", "answer": "five"},
        {"question": "If a year had 400 days?", "answer": 400},
        {"question": "No answer here", "answer": []},
    ]}))
    task = get_task("ifqa", path=str(tmp_path), max_rationale_words=9)
    train = task.load("train")
    assert len(train) == 20 and len({e.id for e in train}) == 20
    ex = next(e for e in train if e.id == "tr3")
    assert ex.golds == ["Capital 3", "cap 3"]
    assert ex.knowledge == "City 3 lies south. Its capital is Capital 3."
    dev = task.load("validation")
    assert {tuple(e.golds) for e in dev} == {(f"D{i}", f"d-{i}") for i in range(6)}
    test = task.load("test")
    assert sorted(e.golds[0] for e in test) == ["400", "five"]  # the answerless row is skipped
    assert task.load("train", 5, seed=1) == task.load("train", 5, seed=1)
    assert task.load("train", 5, seed=1) != task.load("train", 5, seed=2)
    _round_trip(task, train + dev + test)
    assert task.target(test[0], "cot").startswith("Reasoning: The answer is")
    assert any("Capital" in d for d in task.corpus())
    res = task.evaluate(["Capital 3", None], [ex, ex])
    assert res == {"em": 0.5, "f1": 0.5, "n": 2, "unparseable": 1}


def test_ifqa_without_validation_holds_out_train(tmp_path):
    files = {"train": str(_jsonl(tmp_path / "a_train.jsonl", _ifqa_rows(50, "t"))),
             "test": str(_jsonl(tmp_path / "b_test.jsonl", _ifqa_rows(5, "x")))}
    task = get_task("ifqa", path=files, val_size=10)
    train, val = task.load("train"), task.load("validation")
    assert len(val) == 10 and len(train) == 40
    assert not {e.id for e in train} & {e.id for e in val}


# ------------------------------------------------------------------------- MedMCQA

def _med_rows(n: int, prefix: str, base: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": f"Which nerve {prefix}{i}?",
             "opa": f"a{i}", "opb": f"b{i}", "opc": f"c{i}", "opd": f"d{i}",
             "cop": (i % 4) + base, "choice_type": "single",
             "exp": f"Ans. is the nerve {i}. It supplies the muscle. Extra words." if i % 3 else "",
             "subject_name": "Anatomy", "topic_name": "Nerves"} for i in range(n)]


def test_medmcqa_official_json_lines_one_based(tmp_path):
    # the official release: JSON lines in .json files, cop counted from 1
    _jsonl(tmp_path / "train.json", _med_rows(40, "tr", base=1))
    _jsonl(tmp_path / "dev.json", _med_rows(8, "dv", base=1))
    _jsonl(tmp_path / "test.json", [{**r, "cop": None} for r in _med_rows(4, "te", 1)])
    task = get_task("medmcqa", path=str(tmp_path), val_size=8)
    test = task.load("test")  # <- the dev file
    assert {e.id for e in test} == {f"dv{i}" for i in range(8)}
    by_id = {e.id: e for e in test}
    assert by_id["dv0"].golds == ["A"] and by_id["dv3"].golds == ["D"]
    assert by_id["dv1"].options == ["a1", "b1", "c1", "d1"]
    assert by_id["dv1"].knowledge == "Ans. is the nerve 1."
    assert by_id["dv1"].rationale.startswith("Ans. is the nerve 1. It supplies")
    train, val = task.load("train"), task.load("validation")
    assert len(val) == 8 and len(train) == 32
    assert not {e.id for e in train} & {e.id for e in val}
    assert all(e.id.startswith("tr") for e in train + val)
    text = task.render_question(by_id["dv1"])
    assert text.splitlines()[1:] == ["A) a1", "B) b1", "C) c1", "D) d1"]
    assert task.extract("Answer: c1", by_id["dv1"]) == "C"
    _round_trip(task, test + train)
    res = task.evaluate([e.golds[0] for e in test[:4]] + [None] * 4, test)
    assert res["accuracy"] == 0.5 and res["unparseable"] == 4 and 0 < res["macro_f1"] < 1
    assert all("nerve" in d for d in task.corpus())


def test_medmcqa_parquet_zero_based(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, rows in [("train", _med_rows(30, "p", 0)), ("validation", _med_rows(6, "v", 0))]:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{split}-00000-of-00001.parquet")
    task = get_task("medmcqa", path=str(tmp_path))
    test = task.load("test")
    assert Counter(e.golds[0] for e in test) == {"A": 2, "B": 2, "C": 1, "D": 1}
    assert len(task.load("validation")) == 6  # val_size capped at a fifth of train


def test_medmcqa_ambiguous_cop_base(tmp_path):
    rows = [r for r in _med_rows(12, "z", 1) if r["cop"] in (2, 3)]
    _jsonl(tmp_path / "train.jsonl", rows)
    _jsonl(tmp_path / "validation.jsonl", rows)
    with pytest.raises(ValueError, match="cop_base"):
        get_task("medmcqa", path=str(tmp_path)).load("test")
    test = get_task("medmcqa", path=str(tmp_path), cop_base=1).load("test")
    assert {e.golds[0] for e in test} == {"B", "C"}


# ----------------------------------------------------------------- ProsocialDialog

_RAW = ["__casual__", "__possibly_needs_caution__", "__probably_needs_caution__",
        "__needs_caution__", "__needs_intervention__"]


def _pro_rows(n: int, prefix: str) -> list[dict]:
    return [{"context": f"{prefix} utterance {i}", "response": "Let's talk.",
             "rots": [f"It's wrong to do thing {i}", "You should be kind"],
             "safety_label": _RAW[i % 5], "safety_annotations": ["casual"],
             "safety_annotation_reasons": [f"Reason {i}."], "source": "sbic",
             "etc": None, "dialogue_id": i // 2, "response_id": i % 2, "episode_done": False}
            for i in range(n)]


def test_prosocial_jsonl_three_and_five_classes(tmp_path):
    _jsonl(tmp_path / "train.jsonl", _pro_rows(50, "tr"))
    _jsonl(tmp_path / "valid.jsonl", _pro_rows(10, "va"))
    _jsonl(tmp_path / "test.jsonl", _pro_rows(20, "te"))
    task = get_task("prosocial", path=str(tmp_path))
    test = task.load("test")
    assert len(test) == 20
    assert Counter(e.golds[0] for e in test) == {"needs caution": 12, "casual": 4,
                                                 "needs intervention": 4}
    ex = next(e for e in test if e.meta["raw_label"] == "__possibly_needs_caution__")
    assert ex.golds == ["needs caution"] and '"te utterance' in ex.question
    assert ex.knowledge.startswith("It's wrong to do thing")
    assert ex.rationale.endswith("Reason 1.") or "Reason" in ex.rationale
    assert "Labels: casual, needs caution, needs intervention" in task.render_question(ex)
    _round_trip(task, test)
    assert len(task.load("validation")) == 10

    five = get_task("prosocial", path=str(tmp_path), granularity=5)
    labels5 = Counter(e.golds[0] for e in five.load("test"))
    assert set(labels5) == set(five.info.labels) and len(five.info.labels) == 5
    _round_trip(five, five.load("test"))

    balanced = get_task("prosocial", path=str(tmp_path), balanced=True).load("train", 30)
    assert Counter(e.golds[0] for e in balanced) == {"casual": 10, "needs caution": 10,
                                                     "needs intervention": 10}
    assert "You should be kind" in task.corpus()


def test_prosocial_csv_with_list_strings(tmp_path):
    rows = _pro_rows(10, "c")
    with (tmp_path / "prosocial_test.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            reasons = json.dumps(r["safety_annotation_reasons"])
            writer.writerow({**r, "rots": str(r["rots"]), "safety_annotation_reasons": reasons})
    task = get_task("prosocial", path=str(tmp_path / "prosocial_test.csv"))
    test = task.load("test")
    assert len(test) == 10 and test[0].knowledge.startswith("It's wrong")
    with pytest.raises(DatasetUnavailable, match="no 'train' split"):
        task.load("train")


def test_bad_params():
    with pytest.raises(ValueError, match="nonsense"):
        get_task("prosocial", nonsense=1)
    with pytest.raises(ValueError, match="granularity"):
        get_task("prosocial", granularity=4)
    with pytest.raises(ValueError, match="cop_base"):
        get_task("medmcqa", cop_base=2)


# ------------------------------------------------------------------- no hub access

@pytest.mark.parametrize("name,hub_id", [("ifqa", "jeggers/ifqa"),
                                         ("medmcqa", "openlifescienceai/medmcqa"),
                                         ("prosocial", "allenai/prosocial-dialog")])
def test_offline_mode_gives_clear_error(monkeypatch, tmp_path, name, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    task = get_task(name)  # constructing never touches the hub
    start = time.monotonic()
    with pytest.raises(DatasetUnavailable) as err:
        task.load("test", 5)
    assert time.monotonic() - start < 2
    msg = str(err.value)
    assert hub_id in msg and "path" in msg and "offline" in msg
    assert task.title in msg


def test_unreachable_hub_gives_clear_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(real.common, "_hub_reachable", lambda timeout: False)
    with pytest.raises(DatasetUnavailable, match="cannot be reached"):
        get_task("medmcqa").load("train", 3)


def test_reachability_probe_is_quick(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    assert real.common._hub_reachable(1.0) is False
    assert time.monotonic() - start < 3


def test_missing_path(tmp_path):
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        get_task("ifqa", path=str(tmp_path / "nope")).load("train")
    with pytest.raises(DatasetUnavailable, match="no train"):
        get_task("ifqa", path=str(tmp_path)).load("train")


def test_trim_words():
    assert real.trim_words("One two. Three four five. Six.", 5) == "One two. Three four five."
    assert real.trim_words("a b c d e f g", 3) == "a b c ..."
    assert real.trim_words("", 10) == ""


def test_sentences_keep_abbreviations():
    assert real.sentences("Ans. is 'a' i.e. Radial nerve. It runs. Dr. Who came.") == [
        "Ans. is 'a' i.e. Radial nerve.", "It runs.", "Dr. Who came."]


def test_package_layout_and_params():
    # one module per dataset; importing the package registers the three tasks
    from cowest.config import task_params
    from cowest.tasks import TASKS

    assert TASKS["ifqa"] is real.IfQA and real.IfQA.__module__ == "cowest.tasks.real.ifqa"
    assert TASKS["medmcqa"] is real.MedMCQA and real.MedMCQA.__module__.endswith(".medmcqa")
    assert TASKS["prosocial"] is real.Prosocial and real.Prosocial.__module__.endswith(".prosocial")
    common = ["connect_timeout", "hub_id", "max_rationale_words", "path", "revision", "split_seed", "val_size"]
    assert task_params("ifqa") == common
    assert task_params("medmcqa") == sorted(common + ["cop_base"])
    assert task_params("prosocial") == sorted(common + ["balanced", "granularity"])
    # the package docstring: the overview, the loading rules and every dataset's section
    for part in ("params: {path:", "granularity=5", "cop_base", "held out of train",
                 "Field mapping and choices", "ifqa (`jeggers/ifqa`", "corpus(): the distinct"):
        assert part in real.__doc__, part
