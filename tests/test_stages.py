import pytest

from cowest.stages import MARKER, atomic_dir, read_jsonl, stable_hash, stage, write_jsonl


def test_stage_is_reused_when_key_matches_and_redone_otherwise(tmp_path):
    calls = []

    def build(folder):
        calls.append(1)
        write_jsonl(folder / "out.jsonl", [{"n": len(calls)}])
        return len(calls)

    assert stage(tmp_path / "s", {"a": 1}, build) == 1
    assert stage(tmp_path / "s", {"a": 1}, build) is None and len(calls) == 1  # reused
    stage(tmp_path / "s", {"a": 2}, build)  # key changed
    stage(tmp_path / "s", {"a": 2}, build, force=True)  # forced
    assert len(calls) == 3
    assert read_jsonl(tmp_path / "s" / "out.jsonl") == [{"n": 3}]


def test_failed_stage_leaves_no_marker(tmp_path):
    def boom(folder):
        write_jsonl(folder / "partial.jsonl", [{"x": 1}])
        raise RuntimeError("died")

    with pytest.raises(RuntimeError):
        stage(tmp_path / "s", 1, boom)
    assert not (tmp_path / "s" / MARKER).exists()
    ran = []
    stage(tmp_path / "s", 1, lambda f: ran.append(1))
    assert ran == [1]


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as d:
        (d / "w.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "w.txt").write_text("half")
            raise RuntimeError
    assert (target / "w.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_stable_hash_ignores_dict_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_stage_is_redone_when_a_declared_output_is_missing(tmp_path):
    """Adapters are not committed: a committed marker without its adapter must retrain."""
    ran = []

    def build(folder):
        ran.append(1)
        (folder / "adapter").mkdir(exist_ok=True)
        (folder / "adapter" / "w.bin").write_text("w")

    stage(tmp_path / "s", 1, build, outputs=["adapter/w.bin"])
    stage(tmp_path / "s", 1, build, outputs=["adapter/w.bin"])
    assert ran == [1]
    (tmp_path / "s" / "adapter" / "w.bin").unlink()
    stage(tmp_path / "s", 1, build, outputs=["adapter/w.bin"])
    assert ran == [1, 1]
