from pathlib import Path

import pytest

from cowest.config import ConfigError, load_profile


@pytest.mark.parametrize("name", ["smoke", "tiny", "paper"])
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert p.name == name
    assert p.tasks and p.weak_models and p.strong_models
    assert len(p.hash()) == 16


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    return f


BASE = """
name: t
description: d
tasks: [{name: synth_ifqa, n_train: 4, n_validation: 2, n_test: 2}]
weak_models:
  - name: w
    model: smollm2-135m
    sft: {epochs: 1, learning_rate: 0.001, batch_size: 2}
    dpo: {epochs: 1, learning_rate: 0.0001, batch_size: 2}
strong_models: [{name: s, model: smollm2-135m}]
"""


def test_minimal_profile_and_defaults(tmp_path):
    p = load_profile(_write(tmp_path, BASE))
    assert p.weak.quantization == "none" and p.collab.k == 4 and p.weak.lora.r == 16
    assert p.source.endswith("p.yaml")


def test_unknown_key_is_named(tmp_path):
    f = _write(tmp_path, BASE.replace("description: d", "description: d\nsede: 3"))
    with pytest.raises(ConfigError, match=r"unknown key sede.*p\.yaml|p\.yaml.*unknown key sede"):
        load_profile(f)


def test_unknown_nested_key_is_named(tmp_path):
    f = _write(tmp_path, BASE.replace("batch_size: 2}\n    dpo", "batch_size: 2, lr: 3}\n    dpo"))
    with pytest.raises(ConfigError, match=r"weak_models\[0\]\.sft\.lr"):
        load_profile(f)


def test_wrong_type_is_named(tmp_path):
    f = _write(tmp_path, BASE.replace("n_train: 4", "n_train: many"))
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.n_train: expected an integer"):
        load_profile(f)


def test_bool_is_not_an_int(tmp_path):
    f = _write(tmp_path, BASE.replace("n_train: 4", "n_train: true"))
    with pytest.raises(ConfigError, match="n_train"):
        load_profile(f)


def test_bad_literal(tmp_path):
    f = _write(tmp_path, BASE.replace("model: smollm2-135m\n    sft", "model: smollm2-135m\n    quantization: 8bit\n    sft"))
    with pytest.raises(ConfigError, match=r"quantization: '8bit' is not one of"):
        load_profile(f)


def test_missing_required_key(tmp_path):
    f = _write(tmp_path, BASE.replace("description: d\n", ""))
    with pytest.raises(ConfigError, match="missing required key description"):
        load_profile(f)


def test_missing_profile_lists_known():
    with pytest.raises(ConfigError, match=r"profile 'nope' not found.*known profiles: \[.*tiny"):
        load_profile("nope")


def test_unknown_task_and_dangling_names(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'nosuch'"):
        load_profile(_write(tmp_path, BASE.replace("name: synth_ifqa", "name: nosuch")))
    with pytest.raises(ConfigError, match="no entry named 'ghost' in strong_models"):
        load_profile(_write(tmp_path, BASE + "ablations: {strong_models: [ghost]}\n"))


def test_api_backend_needs_base_url(tmp_path):
    f = _write(tmp_path, BASE.replace("{name: s, model: smollm2-135m}", "{name: s, model: gpt-4, backend: api}"))
    with pytest.raises(ConfigError, match="needs base_url"):
        load_profile(f)


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(_write(tmp_path, "name: [unclosed"))


# ----------------------------------------------------------------------------- stricter checks
@pytest.mark.parametrize("old, new, key", [
    ("strong_models:", "ablations: {formats: [direct, knowlege, cot]}\nstrong_models:",
     r"ablations\.formats\[1\]: 'knowlege' is not one of \['direct', 'knowledge', 'cot'\]"),
    ("strong_models:", "ablations: {evaluators: [llm_jduge]}\nstrong_models:",
     r"ablations\.evaluators\[0\]: 'llm_jduge' is not one of \['gold', 'llm_judge'\]"),
    ("learning_rate: 0.0001,", "learning_rate: 0.0001, loss_type: sigmod,",
     r"weak_models\[0\]\.dpo\.loss_type: 'sigmod' is not one of \['sigmoid', .*'sft'\]"),
    ("strong_models:", "collab: {k: -3}\nstrong_models:", r"collab\.k: must be >= 1 \(got -3\)"),
    ("n_test: 2}", "n_test: 2, params: {pth: /x}}",
     r"tasks\[0\]\.params\.pth: unknown parameter pth of task synth_ifqa \(allowed: .*n_entities"),
    ("model: smollm2-135m}", "model: smollm2-135m, top_p: 0}", r"strong_models\[0\]\.top_p: must be > 0"),
    ("model: smollm2-135m}", "model: smollm2-135m, temperature: 2.5}",
     r"strong_models\[0\]\.temperature: must be <= 2"),
    ("strong_models:", "budget_usd: -1\nstrong_models:", r"budget_usd: must be >= 0"),
    ("n_validation: 2", "n_validation: -1", r"tasks\[0\]\.n_validation: must be >= 0"),
    ("learning_rate: 0.001", "learning_rate: '1e-3'", r"weak_models\[0\]\.sft\.learning_rate: expected a number"),
])
def test_bad_value_rejected_with_file_and_key(tmp_path, old, new, key):
    assert old in BASE
    with pytest.raises(ConfigError, match=r"p\.yaml: " + key):
        load_profile(_write(tmp_path, BASE.replace(old, new, 1)))


def test_int_accepted_for_float_fields(tmp_path):
    p = load_profile(_write(tmp_path, BASE.replace("epochs: 1, learning_rate: 0.001", "epochs: 2, learning_rate: 1")))
    assert p.weak.sft.epochs == 2 and p.weak.sft.learning_rate == 1


def test_yaml_error_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"p\.yaml: not valid YAML \(line 3\)"):
        load_profile(_write(tmp_path, "name: t\nseed: 0\n  x: 1\ndescription: d\n"))


def test_all_errors_reported_at_once(tmp_path):
    bad = BASE.replace("n_train: 4", "n_train: 0").replace("strong_models:", "collab: {format: prose}\nstrong_models:")
    with pytest.raises(ConfigError) as e:
        load_profile(_write(tmp_path, bad))
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and all(ln.split(": ")[0].endswith("p.yaml") for ln in lines)
    assert any("tasks[0].n_train: must be >= 1" in ln for ln in lines)
    assert any("collab.format: 'prose' is not one of" in ln for ln in lines)


def test_cross_check_names_key(tmp_path):
    f = _write(tmp_path, BASE + "collab: {judge: ghost}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: collab\.judge: no entry named 'ghost'"):
        load_profile(f)


def test_model_dump_round_trips(tmp_path):
    import yaml

    for name in ("smoke", "tiny", "paper"):
        p = load_profile(name)
        q = load_profile(_write(tmp_path, yaml.safe_dump(p.model_dump(mode="json"))))
        assert q.hash() == p.hash() and q.to_dict() == p.to_dict()
    assert p.weak.dpo.model_dump(mode="json")["loss_type"] == "sigmoid"


def test_profile_is_frozen():
    p = load_profile("smoke")
    with pytest.raises(Exception):
        p.collab.k = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- extends
CHILD = """
extends: base.yaml
name: child
collab: {k: 7}
weak_models:
  - {name: w, sft: {batch_size: 5}}
  - name: w2
    model: smollm2-135m
    sft: {epochs: 1, learning_rate: 0.001, batch_size: 2}
    dpo: {epochs: 1, learning_rate: 0.0001, batch_size: 2}
ablations: {volumes: [3]}
"""


def test_extends_merges(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE + "collab: {k: 2, n_queries: 9}\nablations: {volumes: [1, 2]}\n")
    (tmp_path / "child.yaml").write_text(CHILD)
    p = load_profile(tmp_path / "child.yaml")
    assert p.name == "child" and p.description == "d" and p.source == str(tmp_path / "child.yaml")
    assert (p.collab.k, p.collab.n_queries) == (7, 9)  # nested mapping merged
    assert [w.name for w in p.weak_models] == ["w", "w2"]  # new name appended
    assert p.weak.sft.batch_size == 5 and p.weak.sft.learning_rate == 0.001  # updated by name
    assert p.ablations.volumes == [3]  # plain list replaced
    grand = tmp_path / "sub" / "g.yaml"
    grand.parent.mkdir()
    grand.write_text("extends: ../child.yaml\nname: g\nseed: 5\n")
    g = load_profile(grand)
    assert (g.name, g.seed, g.collab.k) == ("g", 5, 7)
    assert load_profile(_write(tmp_path, "extends: smoke\nname: s2\n")).hash() != load_profile("smoke").hash()


def test_extends_by_profile_name(tmp_path):
    p = load_profile(_write(tmp_path, "extends: tiny\nname: tiny-k8\ncollab: {k: 8}\n"))
    tiny = load_profile("tiny")
    assert p.collab.k == 8 and p.tasks == tiny.tasks and p.strong_models == tiny.strong_models


def test_extends_needs_own_name(tmp_path):
    with pytest.raises(ConfigError, match=r"p\.yaml: name: .*must set its own name"):
        load_profile(_write(tmp_path, "extends: tiny\ncollab: {k: 8}\n"))


def test_extends_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: extends: cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_profile(tmp_path / "a.yaml")


# ----------------------------------------------------------------------------- --set overrides
def test_overrides():
    sets = ["collab.k=8", "tasks.synth_ifqa.n_test=200", "weak_models.smollm2-135m.dpo.beta=0.5",
            "ablations.formats=[direct,knowledge,cot]", "strong_models.qwen2.5-coder-0.5b.max_tokens=32",
            "weak_models.1.max_new_tokens=9", "name=tiny-k8"]
    tiny = load_profile("tiny")
    p = load_profile("tiny", overrides=sets)
    assert (p.collab.k, p.task("synth_ifqa").n_test, p.weak.dpo.beta) == (8, 200, 0.5)
    assert p.ablations.formats == ["direct", "knowledge", "cot"] and p.strong_models[1].max_tokens == 32
    assert p.weak_models[1].max_new_tokens == 9 and p.name == "tiny-k8"
    assert p.task("synth_med") == tiny.task("synth_med") and p.overrides == tuple(sets)
    assert p.hash() != tiny.hash() and "overrides" not in p.to_dict()
    assert load_profile("tiny", overrides=[f"collab.k={tiny.collab.k}"]).hash() == tiny.hash()


@pytest.mark.parametrize("ov, msg", [
    ("collab.kk=3", r"tiny\.yaml \(--set collab\.kk=3\): collab\.kk: unknown key kk \(allowed here: .*k,"),
    ("collab.k=-1", r"\(--set collab\.k=-1\): collab\.k: must be >= 1"),
    ("ablations.formats=[direct,kot]", r"\(--set ablations\.formats=\[direct,kot\]\): ablations\.formats\[1\]: 'kot'"),
    ("weak_models.nosuch.dpo.beta=1", r"\(--set weak_models\.nosuch\.dpo\.beta=1\): weak_models: no entry named 'nosuch'"),
    ("collab.k", r"tiny\.yaml \(--set collab\.k\): expected KEY=VALUE"),
])
def test_bad_overrides(ov, msg):
    with pytest.raises(ConfigError, match=msg):
        load_profile("tiny", overrides=[ov])


def test_relative_path_is_resolved(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    _write(tmp_path / "d", BASE)
    monkeypatch.chdir(tmp_path)
    p = load_profile("d/p.yaml")
    assert p.source == str(tmp_path / "d" / "p.yaml")
