import os
import stat

import pytest

from cowest.artifacts import (JOURNAL, MARKER, ArtifactError, Store, atomic_dir, atomic_write_text, file_digest,
                              read_json, read_jsonl, stable_hash, write_json, write_jsonl)


def _builder(calls):
    def build(folder):
        calls.append(folder.name)
        write_jsonl(folder / "out.jsonl", [{"n": len(calls)}])
    return build


def test_stage_folder_is_named_by_its_inputs_and_reused(tmp_path):
    calls = []
    store = Store(tmp_path)
    a = store.stage("s", {"a": 1}, _builder(calls), outputs=["out.jsonl"])
    assert a == tmp_path / "s" / store.key("s", {"a": 1})
    assert store.stage("s", {"a": 1}, _builder(calls)) == a and len(calls) == 1  # reused
    b = store.stage("s", {"a": 2}, _builder(calls))  # other inputs: another folder
    assert b != a and len(calls) == 2
    assert read_jsonl(a / "out.jsonl") == [{"n": 1}]  # the first stage's artifact is untouched
    events = read_jsonl(tmp_path / JOURNAL)
    assert [e["event"] for e in events] == ["started", "built", "reused", "started", "built"]
    assert all(e["seconds"] >= 0 for e in events if e["event"] == "built")  # the runner prints these


def test_aliases_point_to_one_folder(tmp_path):
    calls = []
    store = Store(tmp_path)
    a = store.stage("dpo", {"x": 1}, _builder(calls), alias="w/t/cot/cowest-r1")
    b = store.stage("dpo", {"x": 1}, _builder(calls), alias="w/t/cot/cowest-r1-gold")
    assert a == b and len(calls) == 1
    for name in ("cowest-r1", "cowest-r1-gold"):
        link = tmp_path / "by-name" / "dpo" / "w" / "t" / "cot" / name
        assert link.is_symlink() and link.resolve() == a.resolve()
        assert not os.path.isabs(os.readlink(link))  # relative: the results folder can move


def test_force_token_rebuilds_each_stage_once(tmp_path):
    calls = []
    Store(tmp_path).stage("s", 1, _builder(calls))
    forced = Store(tmp_path, force="run-1")
    forced.stage("s", 1, _builder(calls))
    forced.stage("s", 1, _builder(calls))
    Store(tmp_path, force="run-1").stage("s", 1, _builder(calls))  # another notebook of the same forced run
    assert len(calls) == 2
    Store(tmp_path, force="run-2").stage("s", 1, _builder(calls))
    assert len(calls) == 3


def test_failed_stage_leaves_no_marker(tmp_path):
    def boom(folder):
        write_jsonl(folder / "partial.jsonl", [{"x": 1}])
        raise RuntimeError("died")

    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        store.stage("s", 1, boom)
    assert not (store.folder("s", store.key("s", 1)) / MARKER).exists()
    ran = []
    store.stage("s", 1, lambda f: ran.append(1))
    assert ran == [1]


def test_a_stage_without_its_declared_outputs_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="without its outputs"):
        Store(tmp_path).stage("s", 1, lambda f: None, outputs=["adapter/w.bin"])


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

    store = Store(tmp_path)
    folder = store.stage("s", 1, build, outputs=["adapter/w.bin"])
    store.stage("s", 1, build, outputs=["adapter/w.bin"])
    assert ran == [1]
    (folder / "adapter" / "w.bin").unlink()
    store.stage("s", 1, build, outputs=["adapter/w.bin"])
    assert ran == [1, 1]


# -- stage outputs verified by content ------------------------------------------------------


def _rows_builder(calls, n=40):
    def build(folder):
        calls.append(1)
        write_jsonl(folder / "rows.jsonl", [{"i": i, "text": f"row {i}"} for i in range(n)])
        write_json(folder / "stats.json", {"rows": n})
        (folder / "adapter").mkdir(exist_ok=True)
        (folder / "adapter" / "w.bin").write_bytes(b"\0" * 64)
    return build


def test_marker_records_every_file_of_the_stage(tmp_path):
    folder = Store(tmp_path).stage("s", 1, _rows_builder([]))
    files = read_json(folder / MARKER)["files"]
    assert set(files) == {"rows.jsonl", "stats.json", "adapter/w.bin"}  # not the marker, no temp file
    assert files["rows.jsonl"]["lines"] == 40 and len(files["rows.jsonl"]["sha256"]) == 16
    assert files["rows.jsonl"]["size"] == (folder / "rows.jsonl").stat().st_size
    assert files["adapter/w.bin"] == {"size": 64, "sha256": file_digest(folder / "adapter" / "w.bin")}


def test_an_intact_stage_is_reused(tmp_path):
    calls = []
    store = Store(tmp_path)
    store.stage("s", 1, _rows_builder(calls))
    store.stage("s", 1, _rows_builder(calls))
    Store(tmp_path).stage("s", 1, _rows_builder(calls))  # another process
    assert calls == [1]


def test_a_file_cut_at_a_line_end_is_detected(tmp_path):
    calls = []
    store = Store(tmp_path)
    folder = store.stage("s", 1, _rows_builder(calls))
    path = folder / "rows.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:30]))  # still valid JSONL
    with pytest.raises(ArtifactError) as e:
        store.stage("s", 1, _rows_builder(calls))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "has 30 items, the stage recorded 40: the file was cut or edited" in msg
    assert f"delete {folder} to rebuild the stage" in msg
    assert calls == [1]  # not silently used, not silently rebuilt


def test_an_edited_file_is_detected(tmp_path):
    calls = []
    store = Store(tmp_path)
    folder = store.stage("s", 1, _rows_builder(calls))
    path = folder / "rows.jsonl"
    path.write_text(path.read_text().replace('"row 7"', '"row 8"'))  # same size, same lines
    with pytest.raises(ArtifactError, match=r"rows\.jsonl: its content differs .*was edited; delete .* to rebuild"):
        store.stage("s", 1, _rows_builder(calls))
    (folder / "rows.jsonl").unlink()
    store.stage("s", 1, _rows_builder(calls))  # a recorded file missing: rebuilt
    assert calls == [1, 1]
    (folder / "stats.json").write_text('{\n  "rows": 41\n}\n')
    with pytest.raises(ArtifactError, match=r"stats\.json: its content differs"):
        store.stage("s", 1, _rows_builder(calls))


def test_adapter_files_are_checked_by_size(tmp_path):
    calls = []
    store = Store(tmp_path)
    folder = store.stage("s", 1, _rows_builder(calls))
    (folder / "adapter" / "w.bin").write_bytes(b"\1" * 64)  # same size: not re-hashed (large files)
    store.stage("s", 1, _rows_builder(calls))
    (folder / "adapter" / "w.bin").write_bytes(b"\1" * 32)
    with pytest.raises(ArtifactError, match=r"w\.bin: is 32 bytes, the stage recorded 64: the file was cut"):
        store.stage("s", 1, _rows_builder(calls))
    assert calls == [1]


def test_a_marker_without_the_record_is_accepted_as_before(tmp_path):
    calls = []
    store = Store(tmp_path)
    folder = store.stage("s", 1, _rows_builder(calls))
    info = read_json(folder / MARKER)
    del info["files"]
    write_json(folder / MARKER, info)
    (folder / "rows.jsonl").write_text('{"i": 0}\n')
    store.stage("s", 1, _rows_builder(calls))
    assert calls == [1]


# -- errors that say where ---------------------------------------------------------------------


def test_read_jsonl_names_the_file_and_the_real_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n   \n{"a": 3, "b": \n{"a": 4}\n')
    with pytest.raises(ArtifactError) as e:
        read_jsonl(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, line 5: not valid JSON") and "\n" not in msg
    assert "cut or edited" in msg and f"delete {path}" in msg
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]  # blank lines are still skipped


def test_read_jsonl_in_a_stage_says_to_delete_the_stage(tmp_path):
    store = Store(tmp_path)
    folder = store.stage("s", 1, _rows_builder([]))
    (folder / "rows.jsonl").write_text('{"i": 0}\n{"i": 1, "te')
    with pytest.raises(ArtifactError, match=rf"rows\.jsonl, line 2: .*delete {folder} to rebuild the stage"):
        read_jsonl(folder / "rows.jsonl")


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text('{"rows": 4,\n "pairs": ')
    with pytest.raises(ArtifactError, match=rf"^{path}: not valid JSON \(line 2, column 11: .*\).*cut or edited"):
        read_json(path)
    with pytest.raises(ValueError):  # still a ValueError, as json's own error was
        read_json(path)


# -- permissions and durability -----------------------------------------------------------------


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_folders_get_the_usual_permissions(tmp_path, umask022):
    write_json(tmp_path / "a.json", {"x": 1})
    write_jsonl(tmp_path / "b.jsonl", [{"x": 1}])
    with atomic_dir(tmp_path / "adapter") as d:
        (d / "w.bin").write_bytes(b"w")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.jsonl").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755
    os.umask(0o077)
    atomic_write_text(tmp_path / "c.txt", "c")
    assert stat.S_IMODE((tmp_path / "c.txt").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "adapter", "b.jsonl", "c.txt"]  # no temp left


def test_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "a.txt", "a")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]  # file, rename, folder
    events.clear()
    with atomic_dir(tmp_path / "adapter") as d:
        (d / "w.bin").write_bytes(b"w")
    assert events.index(("fsync", False)) < events.index(("replace", None)) < len(events) - 1
    assert events[-1] == ("fsync", True)


def test_a_rebuild_removes_what_a_killed_build_left(tmp_path):
    store = Store(tmp_path)
    folder = store.folder("s", store.key("s", 1))
    (folder / ".adapter.x1y2z3" / "_trainer").mkdir(parents=True)  # a killed atomic_dir
    (folder / ".rows.jsonl.abc.tmp").write_text('{"i": ')  # a killed atomic_write_text
    store.stage("s", 1, _rows_builder([]))
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "adapter", "rows.jsonl", "stats.json"]


def test_read_jsonl_names_the_line_of_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": "\xff"}\n')
    with pytest.raises(ArtifactError, match=r"rows\.jsonl, line 3: not UTF-8 text"):
        read_jsonl(path)


def test_two_processes_asking_for_one_stage_build_it_once(tmp_path):
    """The build lock: the second process waits, then reuses what the first built."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from cowest.artifacts import Store
        def build(folder):
            time.sleep(1.5)
            with open({str(tmp_path / "builds.txt")!r}, "a") as f:
                f.write("x")
            (folder / "out.json").write_text("{{}}")
        Store(Path({str(tmp_path / "runs")!r})).stage("s", 1, build, outputs=["out.json"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert (tmp_path / "builds.txt").read_text() == "x"


def test_progress_lines_reach_the_runner_and_are_not_counted_as_stages(tmp_path, capsys):
    from cowest.execute import _Activity, _JournalTail

    runs = tmp_path / "runs"
    store = Store(runs)
    activity = _Activity(tmp_path)
    with _JournalTail(runs / JOURNAL):
        store.stage("sft", {"a": 1}, lambda folder: store.progress("sft", "sft step 5/10, loss 0.700"))
    out = capsys.readouterr().out
    assert "[cowest]       sft step 5/10, loss 0.700" in out and "building sft" in out
    assert activity.since_mark()["stages_built"] == {"sft": 1}
