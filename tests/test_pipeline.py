"""Pipeline wiring without model weights: the RLWF builder, the CoWest builder, stage reuse."""

import pytest

from cowest import pipeline
from cowest.config import load_profile
from cowest.pipeline import Checkpoint, Run
from cowest.strong import Completion


class NoStrong(Exception):
    pass


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(Run, "weak_prompts", lambda self, weak, task, items, fmt: [f"P:{e.id}" for e in items])
    r = Run(load_profile("smoke"), results_root=tmp_path)
    yield r
    r.close()


def _ckpt(run):
    return Checkpoint(run.cfg.weak, "synth_safety", "cot", "sft", None, "k0")


def _drafts(task, items, k):
    """Hand-made drafts: the first is right and well formed, the others wrong."""
    out = []
    for e in items:
        gold = task.answer_text(e)
        wrong = next(label for label in task.info.labels if label != gold)
        out.append([f"Reasoning: the rule applies.\nAnswer: {gold}"] + [f"Answer: {wrong}"] * (k - 1))
    return out


def test_rlwf_builder_never_calls_the_strong_model(run, monkeypatch):
    task = run.task("synth_safety")
    monkeypatch.setattr(Run, "strong", lambda self, name=None, logprobs=False: (_ for _ in ()).throw(NoStrong(name)))
    monkeypatch.setattr(Run, "drafts", lambda self, ck, items, **kw: _drafts(task, items, kw["k"]))
    prefs = run.preferences(_ckpt(run), feedback="single")
    n = run.cfg.collab.n_queries
    assert prefs["stats"]["queries"] == n and prefs["stats"]["pairs"] > 0
    for p in prefs["pairs"]:
        assert p["chosen"].startswith("Reasoning:") and p["prompt"].startswith("P:")


class ScriptedStrong:
    """Alone: always wrong. Refinement: copies the draft's answer line."""

    mode = "chat"

    def __init__(self, task):
        self.task, self.calls = task, []

    def complete_many(self, prompts, *, stage, **kw):
        self.calls += prompts
        outs = []
        for p in prompts:
            text = p.split("Specialist's draft:\n")[-1] if "Specialist's draft" in p else "Answer: ???"
            outs.append(Completion(text=text, prompt_tokens=1, completion_tokens=1, logprobs=None, cached=False,
                                   error=None, latency_s=0.0))
        return outs


def test_cowest_builder_applies_the_delta_rule(run, monkeypatch):
    task = run.task("synth_safety")
    strong = ScriptedStrong(task)
    monkeypatch.setattr(Run, "strong", lambda self, name=None, logprobs=False: strong)
    monkeypatch.setattr(Run, "drafts", lambda self, ck, items, **kw: _drafts(task, items, kw["k"]))
    prefs = run.preferences(_ckpt(run))
    n, k = run.cfg.collab.n_queries, run.cfg.collab.k
    assert len(strong.calls) == n + n * k  # one standalone answer per query, one refinement per draft
    rec = prefs["records"][0]
    assert rec["alone_score"] == 0.0
    # right and well formed: 7 + 3; a bare wrong answer line: 0 (no reasoning, wrong) -> a tie -> negative
    assert rec["deltas"][0] == 10.0 and all(d == 0.0 for d in rec["deltas"][1:])
    assert prefs["stats"]["pairs"] == n  # the wrong drafts are one text: one distinct pair per query
    assert all(p["chosen"].startswith("Reasoning:") and p["rejected"].startswith("Answer:") for p in prefs["pairs"])
    # a second call reuses the stage: no new strong call
    run.preferences(_ckpt(run))
    assert len(strong.calls) == n + n * k


def test_dpo_without_pairs_keeps_the_start_and_says_why(run):
    start = _ckpt(run)
    with pytest.warns(UserWarning, match="no preference pairs.*collab.k"):
        ck = run.dpo(start, {"pairs": [], "key": "x"}, tag="cowest-r1")
    assert ck.adapter == start.adapter and ck.tag == "cowest-r1" and "DPO did not run" in ck.note
    assert ck.key != start.key


def test_data_splits_are_disjoint_and_sized(run):
    d = run.data("synth_ifqa")
    spec = run.cfg.task("synth_ifqa")
    assert len(d["train"]) == spec.n_train and len(d[pipeline.PREF_SPLIT]) == run.cfg.collab.n_queries
    assert len(d["test"]) == spec.n_test
    ids = [e.id for split in d.values() for e in split]
    assert len(ids) == len(set(ids))
    assert not {e.question for e in d["test"]} & {e.question for e in d["train"] + d[pipeline.PREF_SPLIT]}
