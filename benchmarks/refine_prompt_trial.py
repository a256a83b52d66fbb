"""The refine prompt, chosen by the gates on validation items (2026-11-27, session 6).

Run from a checkout whose results/<profile>/ holds a finished run's SFT stages (the trial
used the first mini run's stage store, /tmp/fresh_mini/results/mini):

    .venv/bin/python benchmarks/refine_prompt_trial.py v1 v2 v3 [--profile mini]

For each variant in benchmarks/refine_prompts/<variant>.txt it points the template loader at a
temporary copy of cowest/prompts/ with that text as strong_refine.txt (the checkout's files are
never written), computes every gate of every task with the profile's strong model
(`Pipeline.gates`: validation items only; strong calls cached) and prints them. Only draft use
and answer lines depend on the refine prompt.
Results: results/benchmarks/refine_prompt_trial.{json,md}.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from cowest import prompts
from cowest.config import load_profile
from cowest.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    args = ap.parse_args()
    original_dir = prompts.PROMPT_DIR
    out: dict[str, dict] = {}
    try:
        for v in args.variants:
            scratch = tempfile.TemporaryDirectory(prefix="refine-prompt-")  # removed even on a failure
            tmp = Path(scratch.name)
            shutil.copytree(original_dir, tmp, dirs_exist_ok=True)
            shutil.copy(ROOT / "benchmarks" / "refine_prompts" / f"{v}.txt", tmp / "strong_refine.txt")
            prompts.PROMPT_DIR = tmp
            prompts._load.cache_clear()  # templates are read once per process
            run = Pipeline(load_profile(args.profile), results=ROOT / "results")
            t0 = time.time()
            out[v] = {}
            for spec in run.cfg.tasks:
                strong = run.cfg.strong_for(spec.name).name
                out[v][spec.name] = {r.gate: {"value": r.value, "passed": r.passed, "n": r.n}
                                     for r in run.gates(spec.name, strong)}
                print(v, spec.name, {g: (r["value"], r["passed"]) for g, r in out[v][spec.name].items()}, flush=True)
            out[v]["seconds"] = round(time.time() - t0, 1)
            run.close()
            scratch.cleanup()
    finally:
        prompts.PROMPT_DIR = original_dir
        prompts._load.cache_clear()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refine_prompt_trial.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
