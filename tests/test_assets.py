"""The offline model registry: every model loads from the cache folder and generates."""

import hashlib
import json
import os

import pytest

from cowest import assets
from cowest.assets import ASSETS, Asset, AssetError


@pytest.mark.parametrize("name", list(ASSETS))
def test_each_offline_model_generates_from_the_cache_folder(name):
    from llama_cpp import Llama

    path = assets.gguf_path(name)
    assert path.parent == assets.home() / "models" and path.exists()
    rec = json.loads((path.parent / (path.name + ".sha256")).read_text())
    assert rec["sha256"] == ASSETS[name].sha256 and rec["size"] == path.stat().st_size
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


PARTS = (("cowest", "artifacts.py"), ("cowest", "config.py"))  # any two files of an installed package


def _fake_asset(sha: str) -> Asset:
    return Asset("fake", "fake.gguf", sha, PARTS, None, True, "test")


def _blob() -> bytes:
    return b"".join((assets._package_dir(pkg) / rel).read_bytes() for pkg, rel in PARTS)


def test_sha256_mismatch_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COWEST_HOME", str(tmp_path))
    monkeypatch.setitem(ASSETS, "fake", _fake_asset("0" * 64))
    with pytest.raises(AssetError, match="sha256 of the joined file.*reinstall"):
        assets.gguf_path("fake")
    assert not list((tmp_path / "models").glob("fake*"))  # nothing half-written is left


def test_parts_are_joined_in_order_and_verified(tmp_path, monkeypatch):
    import cowest

    blob = _blob()
    monkeypatch.setenv("COWEST_HOME", str(tmp_path))
    monkeypatch.setitem(ASSETS, "fake", _fake_asset(hashlib.sha256(blob).hexdigest()))
    path = assets.gguf_path("fake")
    assert path.read_bytes() == blob and cowest


def test_unknown_model_and_missing_package():
    with pytest.raises(AssetError, match="unknown offline model 'nope'"):
        assets.gguf_path("nope")
    with pytest.raises(AssetError, match="not installed.*requirements-models.txt"):
        assets._package_dir("no_such_package_xyz")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A small offline model `fake` in a private COWEST_HOME, joined and verified."""
    monkeypatch.setenv("COWEST_HOME", str(tmp_path))
    monkeypatch.setitem(ASSETS, "fake", _fake_asset(hashlib.sha256(_blob()).hexdigest()))
    return assets.gguf_path("fake")


def _flip_a_byte(path, keep_mtime: bool) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def test_the_marker_records_what_was_checked(fake):
    rec = json.loads(fake.with_name("fake.gguf.sha256").read_text())
    st = fake.stat()
    assert rec == {"file": "fake.gguf", "sha256": ASSETS["fake"].sha256, "size": st.st_size,
                   "mtime_ns": st.st_mtime_ns}


def test_a_flipped_byte_that_changes_the_mtime_is_caught_by_gguf_path(fake):
    _flip_a_byte(fake, keep_mtime=False)
    with pytest.raises(AssetError) as e:
        assets.gguf_path("fake")
    msg = str(e.value)
    assert str(fake) in msg and "damaged or was replaced" in msg
    assert f"rm {fake}" in msg and "./reproduce.sh setup joins it again" in msg
    fake.unlink()  # the fix: delete it, and it is joined again
    assert assets.gguf_path("fake").read_bytes() == _blob()


def test_a_flipped_byte_with_size_and_mtime_restored_is_caught_by_verify(fake):
    _flip_a_byte(fake, keep_mtime=True)
    assert assets.gguf_path("fake") == fake  # unchanged size and mtime: trusted without re-hashing
    with pytest.raises(AssetError, match=r"fake\.gguf has sha256 [0-9a-f]{64}, expected .*reproduce\.sh setup"):
        assets.verify(["fake"])


def test_verify_rehashes_and_joins_what_is_missing(fake, monkeypatch):
    hashed = []
    real = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda p, *a: (hashed.append(p.name), real(p, *a))[1])
    assets.gguf_path("fake")
    assert hashed == []  # the marker matches: no re-hash
    assert assets.verify(["fake", "fake"]) == {"fake": fake} and hashed == ["fake.gguf"]
    fake.unlink()
    assert assets.verify(["fake"]) == {"fake": fake} and fake.read_bytes() == _blob()


def test_an_old_marker_or_none_means_a_rehash(fake):
    marker = fake.with_name("fake.gguf.sha256")
    marker.write_text(ASSETS["fake"].sha256 + "\n")  # the old format: the hash alone
    assert assets.gguf_path("fake") == fake
    assert json.loads(marker.read_text())["sha256"] == ASSETS["fake"].sha256  # upgraded
    marker.unlink()
    assert assets.gguf_path("fake") == fake and marker.exists()
    marker.write_text(ASSETS["fake"].sha256 + "\n")
    _flip_a_byte(fake, keep_mtime=True)  # an old marker is never trusted on its own
    with pytest.raises(AssetError, match="damaged or was replaced"):
        assets.gguf_path("fake")


def test_a_run_verifies_the_offline_models_of_its_profile_once(tmp_path, monkeypatch, capsys):
    from cowest import execute

    seen = []
    monkeypatch.setattr(assets, "verify", lambda names: seen.append(list(names)))
    with pytest.raises(SystemExit, match="no notebook matches"):
        execute.run("smoke", only=99, results_root=tmp_path)
    assert seen == [["smollm2-135m", "gemma3-270m"]]  # weak models and local strong models, each once
    assert "[cowest] verified 2 model files (sha256)" in capsys.readouterr().out
    seen.clear()
    with pytest.raises(SystemExit):
        execute.run("smoke", only=99, results_root=tmp_path,
                    overrides=["strong_models.gemma3-270m-server.backend=api",
                               "strong_models.gemma3-270m-server.base_url=http://127.0.0.1:9/v1",
                               "strong_models.gemma3-270m-server.free=true",
                               "weak_models.gemma3-270m.model=smollm2-135m"])
    assert seen == [["smollm2-135m"]]  # an API model is not an offline asset
