"""The offline model registry: every model loads from the cache folder and generates."""

import hashlib

import pytest

from cowest import assets
from cowest.assets import ASSETS, Asset, AssetError


@pytest.mark.parametrize("name", list(ASSETS))
def test_each_offline_model_generates_from_the_cache_folder(name):
    from llama_cpp import Llama

    path = assets.gguf_path(name)
    assert path.parent == assets.home() / "models" and path.exists()
    assert (path.parent / (path.name + ".sha256")).read_text().strip() == ASSETS[name].sha256
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, seed=0)
    out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    assert out["choices"][0]["text"].strip()
    llm.close()


def test_weak_model_safetensors_folder_loads_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.hf_folder("smollm2-135m")
    assert (folder / "config.json").exists() and not list(folder.glob("*.gguf"))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None  # trainers accept it
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def _fake_asset(sha: str) -> Asset:
    return Asset("fake", "fake.gguf", sha, (("cowest", "stages.py"), ("cowest", "config.py")), None, True, "test")


def test_sha256_mismatch_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COWEST_HOME", str(tmp_path))
    monkeypatch.setitem(ASSETS, "fake", _fake_asset("0" * 64))
    with pytest.raises(AssetError, match="sha256 of the joined file.*reinstall"):
        assets.gguf_path("fake")
    assert not list((tmp_path / "models").glob("fake*"))  # nothing half-written is left


def test_parts_are_joined_in_order_and_verified(tmp_path, monkeypatch):
    import cowest

    pkg = assets._package_dir("cowest")
    blob = (pkg / "stages.py").read_bytes() + (pkg / "config.py").read_bytes()
    monkeypatch.setenv("COWEST_HOME", str(tmp_path))
    monkeypatch.setitem(ASSETS, "fake", _fake_asset(hashlib.sha256(blob).hexdigest()))
    path = assets.gguf_path("fake")
    assert path.read_bytes() == blob and cowest


def test_unknown_model_and_missing_package():
    with pytest.raises(AssetError, match="unknown offline model 'nope'"):
        assets.gguf_path("nope")
    with pytest.raises(AssetError, match="not installed.*requirements-models.txt"):
        assets._package_dir("no_such_package_xyz")
