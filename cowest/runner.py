"""Execute the numbered notebooks with papermill and write the run manifest.

    results/<profile>/notebooks/NN_name.ipynb   rendered notebooks
    results/<profile>/manifest.json             commit, profile hash, versions, seeds,
                                                wall time per notebook, ledger totals

A failed notebook stops the run; the message names the notebook and the failing cell's
error. Stages that finished are reused by the next run (see `cowest.stages`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cowest import prompts
from cowest.assets import REPO_ROOT
from cowest.config import Profile, load_profile
from cowest.report import write_index
from cowest.stages import read_json, write_json

NOTEBOOKS = REPO_ROOT / "notebooks"
RESULTS = Path(os.environ.get("COWEST_RESULTS", REPO_ROOT / "results"))  # tests point this elsewhere
PACKAGES = ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "openai",
            "llama_cpp_python", "papermill", "bm25s", "pandas", "matplotlib", "seaborn"]


class NotebookFailed(RuntimeError):
    pass


def notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def number(nb: Path) -> int:
    return int(nb.name[:2])


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "cowest" if "cowest" in KernelSpecManager().find_kernel_specs() else "python3"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def run(profile: str, *, only: int | None = None, start: int | None = None, force: bool = False,
        results_root: Path = RESULTS) -> Path:
    """Run the notebooks of a profile in order; returns the manifest path."""
    import papermill as pm

    cfg: Profile = load_profile(profile)
    out_dir = results_root / cfg.name
    nb_out = out_dir / "notebooks"
    nb_out.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest: dict[str, Any] = read_json(manifest_path) if manifest_path.exists() else {}
    if manifest.get("profile_hash") != cfg.hash():
        manifest = {"notebooks": {}}
    manifest.update({
        "profile": cfg.name, "profile_source": str(Path(cfg.source).resolve().relative_to(REPO_ROOT))
        if Path(cfg.source).resolve().is_relative_to(REPO_ROOT) else cfg.source,
        "profile_hash": cfg.hash(), "commit": _git_commit(), "seed": cfg.seed, "versions": versions(),
        "prompt_versions": prompts.versions(), "machine": f"{platform.machine()}, {platform.processor() or ''}".strip(", "),
    })
    selected = [nb for nb in notebooks()
                if (only is None or number(nb) == only) and (start is None or number(nb) >= start)]
    if not selected:
        raise SystemExit(f"no notebook matches (only={only}, from={start}) in {NOTEBOOKS}")
    kernel = _kernel()
    for nb in selected:
        print(f"[cowest] {cfg.name}: running {nb.name}", flush=True)
        t0 = time.time()
        target = nb_out / nb.name
        try:
            pm.execute_notebook(
                str(nb), str(target), parameters={"profile": profile if Path(profile).suffix else cfg.name,
                                                  "force": force},
                kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False, report_mode=False,
            )
        except pm.PapermillExecutionError as e:
            manifest["notebooks"][nb.name] = {"status": "failed", "seconds": round(time.time() - t0, 1),
                                              "error": f"{e.ename}: {e.evalue}"}
            _finish(manifest, manifest_path, out_dir)
            raise NotebookFailed(
                f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                f"The rendered notebook with the traceback is {target}"
            ) from None
        manifest["notebooks"][nb.name] = {"status": "ok", "seconds": round(time.time() - t0, 1)}
        _finish(manifest, manifest_path, out_dir)
    manifest["total_seconds"] = round(sum(v["seconds"] for v in manifest["notebooks"].values()), 1)
    _finish(manifest, manifest_path, out_dir)
    return manifest_path


def _finish(manifest: dict[str, Any], path: Path, out_dir: Path) -> None:
    from cowest.cache import Ledger

    db = out_dir / "cache.sqlite"
    if db.exists():
        ledger = Ledger(db)
        manifest["ledger"] = {"totals": ledger.totals(), "by_stage": ledger.summary()}
    write_json(path, manifest)
    write_index(out_dir, manifest.get("profile", out_dir.name), manifest)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cowest", description="CoWest reproduction")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the notebooks of a profile")
    r.add_argument("--profile", default="tiny")
    r.add_argument("--only", type=int)
    r.add_argument("--from", dest="start", type=int)
    r.add_argument("--force", action="store_true")
    r.add_argument("--dry-run", action="store_true")
    sub.add_parser("prepare-models", help="join and verify the offline models, convert the weak ones")
    args = ap.parse_args(argv)
    if args.cmd == "prepare-models":
        from cowest.assets import prepare_all

        for name, path in prepare_all(convert=["smollm2-135m", "gemma3-270m"]).items():
            print(f"{name}: {path}")
        return 0
    if args.dry_run:
        from cowest.plan import print_plan

        print_plan(load_profile(args.profile))
        return 0
    try:
        path = run(args.profile, only=args.only, start=args.start, force=args.force)
    except NotebookFailed as e:
        print(f"[cowest] error: {e}", file=sys.stderr)
        return 1
    print(f"[cowest] done: {path}")
    return 0
