"""The artifact: source notebooks without outputs, the whole smoke profile end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cowest.notebooks import NOTEBOOKS, expected_files
from cowest.paths import NOTEBOOK_DIR

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_of_the_list_exists_and_vice_versa():
    assert [p.stem for p in SOURCES] == [nb.stem for nb in NOTEBOOKS]


@pytest.mark.parametrize("nb", SOURCES, ids=lambda p: p.name)
def test_source_notebooks_have_no_outputs_a_parameters_cell_and_open_the_run(nb):
    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{nb.name} has outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    assert all(f"{name} =" in "".join(params[0]["source"]) for name in ("profile", "results", "force", "overrides"))
    assert "open_run(profile, results=results, force=force, overrides=overrides)" in "".join(code[1]["source"])


def _outputs(nb: Path) -> list[dict]:
    return [o for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", [])]


def test_paper_dry_run_needs_no_network_and_no_key():
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "cowest", "run", "--profile", "paper", "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "gpt-4" in out.stdout and "total:" in out.stdout and "$" in out.stdout


def test_smoke_profile_runs_every_notebook_and_writes_every_artifact(tmp_path):
    env = {**os.environ, "COWEST_RESULTS": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "cowest", "run", "--profile", "smoke"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the terminal gets the run's lines, not the kernels' start-up warning (execute.KERNEL_ARGS)
    assert "running over TCP" not in proc.stdout + proc.stderr
    root = tmp_path / "smoke"
    missing = [str(p.relative_to(root)) for p in expected_files(root) if not p.exists()]
    assert not missing, f"missing artifacts: {missing}"
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["notebooks"]) == {nb.file for nb in NOTEBOOKS}
    assert all(v["status"] == "ok" for v in manifest["notebooks"].values())
    assert manifest["ledger"]["totals"]["calls"] > 0 and manifest["profile_hash"]
    machine_paths = [str(tmp_path), str(ROOT), sys.prefix, "site-packages"]
    for nb in (root / "notebooks").glob("*.ipynb"):
        outputs = _outputs(nb)
        assert not [o for o in outputs if o.get("output_type") == "error"], f"{nb.name} has an error cell"
        assert not [o for o in outputs if o.get("name") == "stderr"], f"{nb.name} shows stderr (progress or warnings)"
        assert "<progress" not in json.dumps(outputs), f"{nb.name} shows a trainer's HTML progress bar"
        papermill = dict(json.loads(nb.read_text())["metadata"]["papermill"])
        papermill.pop("parameters")  # they name tmp_path here, a results root outside the repository (tests only)
        text = json.dumps([outputs, papermill])
        assert not [p for p in machine_paths if p in text], f"{nb.name} shows a machine path"
    assert (root / "README.md").exists()
    # the whole chain ran: some task's CoWest pairs reached DPO, and that model was evaluated
    trained = list((root / "runs" / "by-name" / "dpo").glob("*/*/cot/cowest-r1/adapter/train_log.json"))
    assert trained, "no CoWest DPO ran in the smoke profile"
    task = trained[0].parts[-5]
    assert list((root / "runs" / "by-name" / "eval" / task / "cowest").glob("*/*/n*/predictions.jsonl"))
    # a second run right after the first builds no stage and sends no strong-model request
    # (counted per notebook by the runner: the stage store's journal and the ledger)
    proc = subprocess.run([sys.executable, "-m", "cowest", "run", "--profile", "smoke"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((root / "manifest.json").read_text())
    again = second["notebooks"]
    assert {nb: v["stages_built"] for nb, v in again.items() if v["stages_built"]} == {}
    # the cached rerun does not erase the record of the run that did the work
    kept = {h["notebook"]: h for h in second["history"]}
    assert {nb for nb, v in manifest["notebooks"].items() if v["stages_built"]} <= set(kept)
    assert all(kept[nb]["seconds"] == v["seconds"] for nb, v in manifest["notebooks"].items() if nb in kept)
    assert sum(v["strong_requests_sent"] for v in again.values()) == 0
    assert sum(v["stages_reused"] for v in again.values()) > 0


def test_the_readme_lists_the_notebooks_of_the_list():
    """The list is written once (cowest.notebooks); the README's table must follow it."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## What each notebook does", 1)[1].split("\n\n")[1]
    stems = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
    assert stems == [nb.stem for nb in NOTEBOOKS]
    for nb in NOTEBOOKS:
        row = next(line for line in table.splitlines() if f"`{nb.stem}`" in line)
        assert all(name in row for name in nb.tables + nb.figures), f"README row of {nb.stem} misses an artifact"


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_a_failed_notebook_error_is_scrubbed_before_the_manifest(monkeypatch, ending):
    from cowest.config import load_profile
    from cowest.execute import _scrub

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456789" + ending)
    text = "AuthenticationError: b'Bearer sk-test-123456789\\n' rejected (sk-test-123456789)"
    assert "sk-test" not in _scrub(text, load_profile("paper"))


def test_rendered_notebooks_keep_no_absolute_path_in_papermill_metadata(tmp_path):
    from cowest.execute import _strip_machine_paths
    from cowest.paths import NOTEBOOK_DIR

    out = tmp_path / "smoke" / "notebooks" / "02_sft.ipynb"
    out.parent.mkdir(parents=True)
    meta = {"papermill": {"input_path": str(NOTEBOOK_DIR / "02_sft.ipynb"), "output_path": str(out)}}
    out.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    _strip_machine_paths(out, tmp_path)
    pm = json.loads(out.read_text())["metadata"]["papermill"]
    assert pm == {"input_path": "notebooks/02_sft.ipynb", "output_path": "<results>/smoke/notebooks/02_sft.ipynb"}
    repo_out = ROOT / "results" / "x" / "02.ipynb"  # inside the repository: repository-relative
    assert not str(tmp_path) in json.dumps(pm) and repo_out.relative_to(ROOT).as_posix() == "results/x/02.ipynb"


def _python_without_quiet_variables(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose environment lacks the variables quiet() sets."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                        "HF_HUB_DISABLE_PROGRESS_BARS")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)


def test_quiet_silences_the_libraries_without_importing_them():
    """A notebook that only reads finished stages does not pay for importing transformers;
    when a later cell imports it, its logs and progress bars are silenced all the same."""
    code = (
        "import sys, logging\n"
        "from cowest.notebooks import quiet\n"
        "quiet()\n"
        "print('transformers' in sys.modules, 'datasets' in sys.modules)\n"
        "import transformers, datasets\n"
        "print(transformers.utils.logging.get_verbosity() == logging.ERROR,\n"
        "      transformers.utils.logging.is_progress_bar_enabled(),\n"
        "      datasets.is_progress_bar_enabled())\n"
    )
    out = _python_without_quiet_variables(code)
    assert out.stdout.split() == ["False", "False", "True", "False", "False"], out.stdout + out.stderr


def test_quiet_also_silences_libraries_imported_before_it():
    code = (
        "import logging, transformers, datasets\n"
        "from cowest.notebooks import quiet\n"
        "quiet()\n"
        "print(transformers.utils.logging.get_verbosity() == logging.ERROR,\n"
        "      transformers.utils.logging.is_progress_bar_enabled(),\n"
        "      datasets.is_progress_bar_enabled())\n"
    )
    out = _python_without_quiet_variables(code)
    assert out.stdout.split() == ["True", "False", "False"], out.stdout + out.stderr


def test_a_cached_rerun_keeps_the_working_runs_entry_in_the_history():
    from cowest.execute import _keep_work

    manifest = {"notebooks": {"02_sft.ipynb": {"status": "ok", "seconds": 983.0, "stages_built": {"sft": 3},
                                               "strong_requests_sent": 0},
                              "01_data.ipynb": {"status": "ok", "seconds": 4.0, "stages_built": {},
                                                "strong_requests_sent": 0}}}
    _keep_work(manifest, "02_sft.ipynb", "abc1234")
    _keep_work(manifest, "01_data.ipynb", "abc1234")  # it did nothing: nothing to keep
    _keep_work(manifest, "05_evaluation.ipynb", "abc1234")  # never ran before
    assert manifest["history"] == [{"notebook": "02_sft.ipynb", "commit": "abc1234", "status": "ok",
                                    "seconds": 983.0, "stages_built": {"sft": 3}, "strong_requests_sent": 0}]
