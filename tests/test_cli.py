"""The command line: ./reproduce.sh and python -m cowest (options, help, relative profile paths)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _profile_elsewhere(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text(f"extends: {REPO / 'configs' / 'smoke.yaml'}\nname: mine\n")
    return tmp_path


def test_relative_profile_path_is_taken_from_the_callers_folder(tmp_path):
    from cowest.__main__ import resolve_profile_arg

    where = _profile_elsewhere(tmp_path)
    env = {**os.environ, "COWEST_CWD": str(where)}
    old = os.environ.get("COWEST_CWD")
    os.environ["COWEST_CWD"] = str(where)
    try:
        assert resolve_profile_arg("sub/mine.yaml") == str(where / "sub" / "mine.yaml")
        assert resolve_profile_arg("tiny") == "tiny"  # a name stays a name
    finally:
        os.environ.pop("COWEST_CWD") if old is None else os.environ.__setitem__("COWEST_CWD", old)
    # end to end: ./reproduce.sh moves to the repository, the path still means the caller's file
    out = subprocess.run([str(REPO / "reproduce.sh"), "--profile", "sub/mine.yaml", "--dry-run"], cwd=where,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "profile 'mine'" in out.stdout
    missing = subprocess.run([str(REPO / "reproduce.sh"), "--profile", "sub/none.yaml", "--dry-run"], cwd=where,
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode != 0 and "sub/none.yaml" in missing.stderr


def test_every_cli_option_has_help():
    import argparse

    from cowest import __main__ as cli

    parser = cli.build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    out = subprocess.run([sys.executable, "-m", "cowest", "run", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0 and "--profile" in out.stdout and "--check" in out.stdout


def _cli(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: int = 120):
    return subprocess.run([sys.executable, "-m", "cowest", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_check_on_the_paper_profile_offline_without_a_key_fails_fast_one_line_each():
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "VLLM_API_KEY")}
    env["HF_HUB_OFFLINE"] = "1"
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "cowest", "run", "--profile", "paper", "--check"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert time.time() - t0 < 60
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    fails = [ln for ln in lines if ln.strip().startswith("FAIL")]
    assert any("OPENAI_API_KEY is not set" in ln for ln in fails)
    assert any("meta-llama/Meta-Llama-3-8B-Instruct" in ln for ln in fails)
    assert any("no CUDA GPU" in ln for ln in fails)
    assert all("-> fix:" in ln for ln in fails)  # every failure names its fix
    assert "not ready" in out.stderr


def test_check_on_tiny_passes():
    out = _cli("run", "--profile", "tiny", "--check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failed: ready to run" in out.stdout


def test_an_api_model_without_a_price_fails_the_check(tmp_path):
    from cowest.config import load_profile
    from cowest.preflight import check_api

    p = tmp_path / "nopay.yaml"
    p.write_text(f"extends: {REPO / 'configs' / 'tiny.yaml'}\nname: nopay\nstrong_models:\n"
                 "  - {name: paid, model: some-model, backend: api, base_url: 'http://127.0.0.1:9/v1'}\n"
                 "ablations: {strong_models: [paid]}\n")
    fails = [c for c in check_api(load_profile(p)) if c.status == "FAIL"]
    assert any("no price" in c.what and "free: true" in c.fix for c in fails)


def test_user_errors_print_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {REPO / 'configs' / 'smoke.yaml'}\nname: bad\ncollab: {{k: 0}}\n")
    out = _cli("run", "--profile", str(bad), "--dry-run")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "collab.k: must be >= 1" in out.stderr


def test_readme_cost_table_matches_the_dry_run():
    """The README's per-notebook API cost and GPU-hours of the paper profile come from the
    dry run; this fails when the profile changes and the table does not."""
    import re

    from cowest.config import load_profile
    from cowest.plan import plan, training_plan

    p = load_profile("paper")
    cost, hours = {}, {}
    for ln in plan(p):
        cost[ln.notebook] = cost.get(ln.notebook, 0.0) + ln.cost
    for t in training_plan(p):
        hours[t.notebook] = hours.get(t.notebook, 0.0) + t.gpu_hours
    text = (REPO / "README.md").read_text()
    table = text[text.index("| notebook | API cost (USD) | GPU-hours of training |"):].split("\n\n")[0]
    for row in table.splitlines()[2:]:
        nb, usd, gpu = [c.strip() for c in row.strip("|").split("|")]
        if nb == "total":
            assert float(usd) == pytest.approx(sum(cost.values()), abs=1)
            assert float(gpu) == pytest.approx(sum(hours.values()), abs=0.1)
            continue
        num = re.match(r"\d\d", nb).group(0)
        assert float(usd) == pytest.approx(cost.get(num, 0.0), abs=1), nb
        assert float(gpu) == pytest.approx(hours.get(num, 0.0), abs=0.1), nb


def test_the_dry_run_counts_the_ablations_and_baselines_sizes():
    """`ablations.n_queries` shrinks every ablation's mining and `baselines.n_test` FLARE and
    SuperICL's calls, in the plan as in the run."""
    from cowest.config import load_profile
    from cowest.plan import plan

    def calls(*overrides, nb=None, what=""):
        return sum(ln.calls for ln in plan(load_profile("tiny", overrides=list(overrides)))
                   if (nb is None or ln.notebook == nb) and what in ln.what)

    few, many = calls("ablations.n_queries=4", nb="10"), calls("ablations.n_queries=null", nb="10")
    assert 0 < few < many
    assert calls("ablations.n_queries=null", what="mining the main system") == 0
    assert calls("ablations.n_queries=4", what="mining the main system") > 0
    tiny = load_profile("tiny")
    assert calls("baselines.n_test=10", what="SuperICL") == sum(min(10, t.n_test) for t in tiny.tasks)  # one call per item
    assert calls("baselines.n_test=2", what="FLARE") < calls(what="FLARE")  # tiny: 4
