"""The artifact: source notebooks without outputs, the whole smoke profile end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cowest.report import ARTIFACTS, expected_files
from cowest.runner import notebooks

ROOT = Path(__file__).resolve().parent.parent


def test_every_notebook_of_the_index_exists_and_vice_versa():
    assert [nb.stem for nb in notebooks()] == list(ARTIFACTS)


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_source_notebooks_have_no_outputs_and_a_parameters_cell(nb):
    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{nb.name} has outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "profile =" in "".join(params[0]["source"])


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
    root = tmp_path / "smoke"
    missing = [str(p.relative_to(root)) for p in expected_files(root) if not p.exists()]
    assert not missing, f"missing artifacts: {missing}"
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["notebooks"]) == {nb.name for nb in notebooks()}
    assert all(v["status"] == "ok" for v in manifest["notebooks"].values())
    assert manifest["ledger"]["totals"]["calls"] > 0 and manifest["profile_hash"]
    for nb in (root / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb.name} has an error cell"
    assert (root / "README.md").exists()
    # the whole chain ran: some task's CoWest pairs reached DPO, and that model was evaluated
    trained = list((root / "runs" / "dpo").glob("*/*/cot/cowest-r1/adapter/train_log.json"))
    assert trained, "no CoWest DPO ran in the smoke profile"
    task = trained[0].parts[-5]
    assert list((root / "runs" / "eval" / task / "cowest").glob("*/*/n*/predictions.jsonl"))
    # a second run reuses every finished stage and makes no new strong-model call
    calls = manifest["ledger"]["totals"]["calls"] - manifest["ledger"]["totals"].get("cache_hits", 0)
    proc = subprocess.run([sys.executable, "-m", "cowest", "run", "--profile", "smoke", "--only", "5"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((root / "manifest.json").read_text())["ledger"]["totals"]
    assert again["calls"] - again.get("cache_hits", 0) == calls
