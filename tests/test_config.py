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
