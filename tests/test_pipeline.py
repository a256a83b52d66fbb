"""Pipeline wiring: the RLWF builder, the CoWest builder, stage identity and reuse."""

import shutil

import pytest

from cowest import pipeline, prompts
from cowest.replies import Completion
from cowest.config import load_profile
from cowest.pipeline import Checkpoint, Pipeline


class NoStrong(Exception):
    pass


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(Pipeline, "weak_prompts", lambda self, weak, task, items, fmt: [f"P:{e.id}" for e in items])
    r = Pipeline(load_profile("smoke"), results=tmp_path)
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
    monkeypatch.setattr(Pipeline, "strong", lambda self, name=None, logprobs=False: (_ for _ in ()).throw(NoStrong(name)))
    monkeypatch.setattr(Pipeline, "drafts", lambda self, ck, items, **kw: _drafts(task, items, kw["k"]))
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
    monkeypatch.setattr(Pipeline, "strong", lambda self, name=None, logprobs=False: strong)
    monkeypatch.setattr(Pipeline, "drafts", lambda self, ck, items, **kw: _drafts(task, items, kw["k"]))
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
    assert ck.key == start.key  # the same weights: its drafts are the start's, computed once


def test_data_splits_are_disjoint_and_sized(run):
    d = run.data("synth_ifqa")
    spec = run.cfg.task("synth_ifqa")
    assert len(d["train"]) == spec.n_train and len(d[pipeline.PREF_SPLIT]) == run.cfg.collab.n_queries
    assert len(d["test"]) == spec.n_test
    ids = [e.id for split in d.values() for e in split]
    assert len(ids) == len(set(ids))
    assert not {e.question for e in d["test"]} & {e.question for e in d["train"] + d[pipeline.PREF_SPLIT]}


# ----------------------------------------------------------------------------- stage identity
# Keys are computed from each stage's declared inputs (the `*_inputs` methods) with the real
# tokenizer and prompts; nothing is trained here.
def _keys(p: Pipeline, task="synth_ifqa"):
    w, c = p.cfg.weak, p.cfg.collab
    start = Checkpoint(w, task, c.format, "sft", None, "k0")
    items = p.test_items(task)
    pairs = [{"prompt": "P", "chosen": "a", "rejected": "b"}]
    k = p.store.key
    return {
        "data": k("data", p.data_inputs(task)),
        "sft": k("sft", p.sft_inputs(task, w, c.format)),
        "drafts": k("drafts", p.drafts_inputs(start, items, 1, 0.0)),
        "prefs-collab": k("prefs", p.preferences_inputs(start, "collab", c.evaluator, p.cfg.strong_for(task).name)),
        "prefs-single": k("prefs", p.preferences_inputs(start, "single", c.evaluator, None)),
        "dpo": k("dpo", p.dpo_inputs(start, pairs, p.cfg.seed)),
        "dpo-last-seed": k("dpo", p.dpo_inputs(start, pairs, p.dpo_seeds(task)[-1])),
        "eval-weak": k("eval", p.evaluate_inputs("weak", task, items, start, None)),
        "eval-strong": k("eval", p.evaluate_inputs("strong", task, items, None, p.cfg.strong_for(task).name)),
        "eval-collab": k("eval", p.evaluate_inputs("collab", task, items, start, p.cfg.strong_for(task).name)),
        "eval-flare": k("eval", p.evaluate_inputs("flare", task, items, None, p.cfg.strong_for(task).name)),
        "eval-supericl": k("eval", p.evaluate_inputs("supericl", task, items, start, p.cfg.strong_for(task).name)),
    }


def _changed(a, b):
    return sorted(s for s in a if a[s] != b[s])


@pytest.fixture()
def pipe(tmp_path):
    def make(*overrides):
        p = Pipeline(load_profile("smoke", overrides=list(overrides)), results=tmp_path)
        return p
    return make


def test_changing_dpo_beta_keeps_the_sft_stage(pipe):
    base = _keys(pipe())
    beta = _keys(pipe("weak_models.smollm2-135m.dpo.beta=0.5"))
    assert _changed(base, beta) == ["dpo", "dpo-last-seed"]


def test_editing_a_prompt_redoes_exactly_the_stages_that_render_it(pipe, tmp_path, monkeypatch):
    copy = tmp_path / "prompts"
    shutil.copytree(prompts.PROMPT_DIR, copy)
    monkeypatch.setattr(prompts, "PROMPT_DIR", copy)
    prompts._load.cache_clear()
    base = _keys(pipe())

    def edit(name):
        f = copy / f"{name}.txt"
        f.write_text(f.read_text() + "\nBe brief.\n")  # the text changes, the version line does not
        prompts._load.cache_clear()
        return _keys(pipe())

    try:
        refine = edit("strong_refine")
        assert _changed(base, refine) == ["eval-collab", "prefs-collab"]
        weak = edit("weak_cot")
        assert _changed(refine, weak) == ["drafts", "eval-collab", "eval-supericl", "eval-weak", "prefs-collab",
                                          "prefs-single", "sft"]
    finally:
        prompts._load.cache_clear()


def test_changing_a_task_size_redoes_that_task_only(pipe):
    tasks = ["synth_ifqa", "synth_med", "synth_safety"]
    base = {t: _keys(pipe(), t) for t in tasks}
    bigger = pipe("tasks.synth_ifqa.n_train=6")
    after = {t: _keys(bigger, t) for t in tasks}
    assert {"data", "sft"} <= set(_changed(base["synth_ifqa"], after["synth_ifqa"]))
    assert _changed(base["synth_med"], after["synth_med"]) == []
    assert _changed(base["synth_safety"], after["synth_safety"]) == []
    more_test = pipe("tasks.synth_ifqa.n_test=6")
    changed = _changed(base["synth_ifqa"], _keys(more_test, "synth_ifqa"))
    assert "sft" not in changed and {"eval-weak", "eval-strong", "eval-collab"} <= set(changed)


# every field of the stage-level specs, with another value; a new field fails the test until it is wired
FIELD_CHANGES = {
    "collab.format": ["collab.format=direct"],
    "collab.n_queries": ["collab.n_queries=3"],
    "collab.k": ["collab.k=3"],
    "collab.temperature": ["collab.temperature=0.5"],
    "collab.evaluator": ["collab.evaluator=llm_judge"],
    "collab.judge": ["collab.evaluator=llm_judge", "collab.judge=gemma3-270m-server"],
    "collab.pairing": ["collab.pairing=extremes"],
    "collab.max_pairs_per_query": ["collab.max_pairs_per_query=1"],
    "collab.dpo_seeds": ["collab.dpo_seeds=2"],
    "baselines.flare.threshold": ["baselines.flare.threshold=0.2"],
    "baselines.flare.top_k": ["baselines.flare.top_k=1"],
    "baselines.flare.max_steps": ["baselines.flare.max_steps=2"],
    "baselines.flare.lookahead_tokens": ["baselines.flare.lookahead_tokens=8"],
    "baselines.supericl.n_demos": ["baselines.supericl.n_demos=1"],
    "tasks.n_train": ["tasks.synth_ifqa.n_train=6"],
    "tasks.n_validation": ["tasks.synth_ifqa.n_validation=3"],
    "tasks.n_test": ["tasks.synth_ifqa.n_test=3"],
    "tasks.params": ["tasks.synth_ifqa.params={n_entities: 5}"],
    "tasks.strong": ["tasks.synth_ifqa.strong=gemma3-270m-server"],
    "tasks.dpo_seeds": ["tasks.synth_ifqa.dpo_seeds=2"],
    "tasks.n_queries": ["tasks.synth_ifqa.n_queries=3"],
}


def test_every_stage_setting_reaches_a_stage_key(pipe):
    from cowest.config import CollabSpec, FlareSpec, SuperICLSpec, TaskSpec

    fields = ([f"collab.{f}" for f in CollabSpec.model_fields] + [f"baselines.flare.{f}" for f in FlareSpec.model_fields]
              + [f"baselines.supericl.{f}" for f in SuperICLSpec.model_fields]
              + [f"tasks.{f}" for f in TaskSpec.model_fields if f != "name"])
    assert sorted(fields) == sorted(FIELD_CHANGES), "a spec field is new (or gone): wire it and list it here"
    for field, overrides in FIELD_CHANGES.items():
        before = _keys(pipe(*overrides[:-1]))
        after = _keys(pipe(*overrides))
        assert _changed(before, after), f"{field} changes no stage key"
        if not field.startswith("tasks.n_") and field != "tasks.params":
            assert "sft" not in _changed(before, after) or field == "collab.format", f"{field} retrains SFT"


def test_the_same_dpo_under_two_tags_trains_once(run, monkeypatch):
    from cowest import train

    trained = []

    def record(base, adapter, pairs, out_dir, *, weak, seed, checkpoints=None, on_trainer=None):  # writes what a training would
        trained.append(len(pairs))
        out_dir.mkdir(parents=True)
        (out_dir / "adapter_config.json").write_text("{}")
        (out_dir / "adapter_model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(train, "dpo", record)
    start = _ckpt(run)
    prefs = {"pairs": [{"prompt": "P", "chosen": "a", "rejected": "b"}], "key": "x"}
    a = run.dpo(start, prefs, tag="cowest-r1")
    b = run.dpo(start, prefs, tag="cowest-r1-gold")
    assert trained == [1] and a.adapter == b.adapter and a.key == b.key
    by_name = run.store.root / "by-name" / "dpo" / run.cfg.weak.name / "synth_safety" / "cot"
    assert (by_name / "cowest-r1").resolve() == (by_name / "cowest-r1-gold").resolve() == a.adapter.parent.resolve()


class FlakyStrong(ScriptedStrong):
    """Like ScriptedStrong, but the refinement of every first draft fails (an error, no text)."""

    def complete_many(self, prompts, *, stage, **kw):
        outs = super().complete_many(prompts, stage=stage, **kw)
        return [Completion(text="", prompt_tokens=0, completion_tokens=0, logprobs=None, cached=False,
                           error="HTTP 500 after 3 attempts", latency_s=0.0)
                if "Reasoning: the rule applies." in p else o for p, o in zip(prompts, outs)]


def test_a_failed_reply_is_never_scored_and_leaves_the_stage_unfinished(run, monkeypatch):
    task = run.task("synth_safety")
    strong = FlakyStrong(task)
    monkeypatch.setattr(Pipeline, "strong", lambda self, name=None, logprobs=False: strong)
    monkeypatch.setattr(Pipeline, "drafts", lambda self, ck, items, **kw: _drafts(task, items, kw["k"]))
    with pytest.warns(UserWarning, match="failed; it is left unfinished"):
        prefs = run.preferences(_ckpt(run))
    n = run.cfg.collab.n_queries
    assert prefs["stats"]["failed"] == n  # the right draft's refinement failed on every query
    assert all(r["deltas"][0] is None for r in prefs["records"])
    assert prefs["pairs"] == []  # the remaining drafts are all wrong: a failure never makes a "worse" draft
    calls = len(strong.calls)
    assert run.preferences(_ckpt(run))["stats"] == prefs["stats"]  # the same run sees the same result
    assert len(strong.calls) == calls
    rerun = Pipeline(run.cfg, results=run.root.parent)  # the next run retries the unfinished stage
    with pytest.warns(UserWarning):
        rerun.preferences(_ckpt(rerun))
    assert len(strong.calls) == 2 * calls


def test_dpo_seeds_add_runs_without_touching_the_first(pipe):
    """More DPO seeds add DPO stages (keyed by their seed) and change no existing stage."""
    base = _keys(pipe())
    assert _changed(base, _keys(pipe("collab.dpo_seeds=3"))) == ["dpo-last-seed"]
    p = pipe("collab.dpo_seeds=3")
    assert p.dpo_seeds("synth_ifqa") == [p.cfg.seed, p.cfg.seed + 1, p.cfg.seed + 2]
    assert pipe("collab.dpo_seeds=3", "tasks.synth_med.dpo_seeds=1").dpo_seeds("synth_med") == [p.cfg.seed]
    start = Checkpoint(p.cfg.weak, "synth_ifqa", p.cfg.collab.format, "sft", None, "k0")
    pairs = [{"prompt": "P", "chosen": "a", "rejected": "b"}]
    keys = {p.store.key("dpo", p.dpo_inputs(start, pairs, s)) for s in p.dpo_seeds("synth_ifqa")}
    assert len(keys) == 3 and base["dpo"] in keys


def test_a_task_can_mine_its_own_number_of_queries(pipe):
    base = pipe()
    own = pipe("tasks.synth_med.n_queries=2")
    assert own.cfg.n_queries("synth_med") == 2 and own.cfg.n_queries("synth_ifqa") == base.cfg.collab.n_queries
    assert len(own.data("synth_med")[pipeline.PREF_SPLIT]) == 2
    assert _keys(own, "synth_ifqa") == _keys(base, "synth_ifqa")  # the other tasks keep every stage
    assert "data" in _changed(_keys(base, "synth_med"), _keys(own, "synth_med"))


def test_the_confidence_span_is_where_the_draft_wrote_its_answer():
    """A choice scored by its content extracts as a letter the draft never wrote (the v1 tiny
    run stopped on this in SuperICL's confidence)."""
    from cowest.pipeline import _answer_span

    assert _answer_span("Reasoning: 6 x 5 = 30.\nAnswer: 30 mg", "A") == "30 mg"
    assert _answer_span("Reasoning: ...\nAnswer: B", "B") == "B"
    assert _answer_span("Reasoning: ...\nAnswer: **30 mg**", "A") == "30 mg"
    assert _answer_span("Reasoning: ...\nAnswer: **30** mg", "A") is None  # the cleaned segment is not verbatim
    assert _answer_span("anything", "") is None


def test_the_collaborator_gets_the_strong_models_answer_tokens(pipe):
    p = pipe("strong_models.smollm2-135m-server.answer_tokens=9")
    assert p.collaborator("synth_ifqa").answer_tokens == 9  # no server starts: clients start on a cache miss
    assert pipe().collaborator("synth_ifqa").answer_tokens is None  # smoke: null, no answer pass


def test_the_ablations_mine_a_prefix_of_the_queries(run, monkeypatch):
    """`ablations.n_queries` mines only the first queries: fewer strong calls, its own stage,
    and the main mining is untouched."""
    task = run.task("synth_safety")
    strong = ScriptedStrong(task)
    monkeypatch.setattr(Pipeline, "strong", lambda self, name=None, logprobs=False: strong)
    monkeypatch.setattr(Pipeline, "drafts", lambda self, ck, items, **kw: _drafts(task, items, kw["k"]))
    n, k = run.cfg.collab.n_queries, run.cfg.collab.k
    few = run.cfg.ablation_queries("synth_safety")
    assert few is not None and few < n  # the smoke profile sets ablations.n_queries below collab.n_queries
    prefs = run.preferences(_ckpt(run), n_queries=few)
    assert prefs["stats"]["queries"] == few and len(strong.calls) == few * (1 + k)
    assert [r["id"] for r in prefs["records"]] == [e.id for e in run.data("synth_safety")[pipeline.PREF_SPLIT][:few]]
    full = run.preferences(_ckpt(run))
    assert full["stats"]["queries"] == n and full["key"] != prefs["key"]


def test_ablation_queries_are_none_when_they_cover_the_task(pipe):
    p = pipe()
    assert p.cfg.ablation_queries("synth_ifqa") == p.cfg.ablations.n_queries < p.cfg.n_queries("synth_ifqa")
    assert pipe(f"ablations.n_queries={p.cfg.n_queries('synth_ifqa')}").cfg.ablation_queries("synth_ifqa") is None
    assert pipe("ablations.n_queries=null").cfg.ablation_queries("synth_ifqa") is None


def test_the_premise_is_per_task(tmp_path):
    """A gate that failed on one task is that task's premise, not the others'."""
    from cowest.artifacts import write_json

    run = Pipeline(load_profile("smoke"), results=tmp_path)
    tasks = [t.name for t in run.cfg.tasks]
    good, bad = tasks[0], tasks[1]

    def row(task, gate, passed, strong):
        return {"gate": gate, "task": task, "value": 1.0 if passed else 0.0, "threshold": 0.5,
                "passed": passed, "n": 4, "detail": f"{task} {gate}", "strong": strong}

    run.root.mkdir(parents=True, exist_ok=True)
    write_json(run.root / "gates.json", [
        row(good, "weak_knowledge", True, None), row(good, "draft_use", True, run.cfg.strong_for(good).name),
        row(bad, "weak_knowledge", True, None), row(bad, "draft_use", False, run.cfg.strong_for(bad).name),
        row(bad, "strong_skill", False, "some-other-candidate"),  # not the strong model this run uses
    ])
    assert run.premise([good]) is None
    note = run.premise([bad])
    assert f"failed on {bad} ({bad} draft_use" in note and "strong_skill" not in note
    both = run.premise()
    assert f"failed on {bad} " in both and f"Every applicable gate passed on {good}" in both
    run.close()


def test_a_new_generator_version_redoes_that_task_only(pipe, monkeypatch):
    """Code that makes other items from the same parameters rebuilds the data stage: it is keyed
    by the generator's version from version 2 on (version-1 keys are unchanged). The stages after
    it are keyed by the items themselves, so they follow when the items differ."""
    from cowest.tasks.synthetic.safety import SynthSafety

    tasks = ["synth_ifqa", "synth_med", "synth_safety"]
    base = {t: _keys(pipe(), t) for t in tasks}
    assert "generator_version" not in pipe().data_inputs("synth_safety")
    monkeypatch.setattr(SynthSafety, "generator_version", 2)
    after = {t: _keys(pipe(), t) for t in tasks}
    assert pipe().data_inputs("synth_safety")["generator_version"] == 2
    assert _changed(base["synth_safety"], after["synth_safety"]) == ["data"]  # same items here
    assert _changed(base["synth_ifqa"], after["synth_ifqa"]) == []
    assert _changed(base["synth_med"], after["synth_med"]) == []


def test_the_sparse_dropout_sampler_retrains_sft_only_and_torch_keeps_the_old_keys(pipe):
    """`lora.dropout_sampler` came after the committed runs: at its default ("torch") it is in no
    key and not in the profile hash; "sparse" draws other dropout masks, so it retrains SFT (and
    what follows from the new adapter), and nothing before it."""
    base = pipe("weak_models.smollm2-135m.lora.dropout=0.05")  # smoke trains without dropout
    assert "dropout_sampler" not in base.sft_inputs("synth_ifqa", base.cfg.weak, "cot")["lora"]
    assert "dropout_sampler" not in base.cfg.to_dict()["weak_models"][0]["lora"]
    sparse = pipe("weak_models.smollm2-135m.lora.dropout=0.05", "weak_models.smollm2-135m.lora.dropout_sampler=sparse")
    assert sparse.sft_inputs("synth_ifqa", sparse.cfg.weak, "cot")["lora"]["dropout_sampler"] == "sparse"
    assert _changed(_keys(base), _keys(sparse)) == ["sft"]  # _keys holds the later stages' start fixed
    assert sparse.cfg.hash() != base.cfg.hash()
    # without dropout there is no mask to draw: "sparse" keeps the SFT stage
    assert _changed(_keys(pipe()), _keys(pipe("weak_models.smollm2-135m.lora.dropout_sampler=sparse"))) == []


def test_the_committed_runs_are_what_their_profiles_resolve_to():
    """The profile hash of each committed run's manifest is the hash its profile has today (a
    field added with a default must not change it: config.LATE_DEFAULTS)."""
    import json

    from cowest import paths

    for name in ("tiny", "mini"):
        manifest = json.loads((paths.REPO_ROOT / "results" / name / "manifest.json").read_text())
        assert manifest["profile_hash"] == load_profile(name).hash(), name


def test_stages_of_one_checkpoint_load_the_weak_model_once(run, monkeypatch):
    """The drafts and the confidences of one checkpoint share one load; close() drops it."""
    from cowest import weak

    loads = []
    real = weak.load_weak
    monkeypatch.setattr(weak, "load_weak", lambda *a, **k: loads.append(k.get("adapter")) or real(*a, **k))
    ckpt = Checkpoint(run.cfg.weak, "synth_ifqa", "cot", "sft", None, "base")
    first = run.weak_for_inference(ckpt)
    assert run.weak_for_inference(ckpt) is first and len(loads) == 1
    run.close()
    assert run.weak_for_inference(ckpt) is not first and len(loads) == 2
    preds, conf = run._weak_predictions(ckpt, run.test_items("synth_ifqa")[:2])  # a drafts and a confidence stage
    assert len(conf) == 2 and len(loads) == 2
    other = Checkpoint(run.cfg.weak_models[1], "synth_ifqa", "cot", "sft", None, "base")
    run.weak_for_inference(other)
    assert len(loads) == 3 and run.weak_for_inference(ckpt) is not first and len(loads) == 4
