"""One training stage as a script, for `accelerate launch` (several GPUs) or a plain process.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m cowest.stage sft \\
        --profile paper --task ifqa
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m cowest.stage dpo \\
        --profile paper --task ifqa --feedback collab

The stage gets the same key and folder as when a notebook asks for it (`Pipeline.sft` /
`Pipeline.dpo` with the same profile), so a notebook run afterwards reuses it instead of
training again. Every process trains (data-parallel, through the Trainer's accelerate
integration); only the main process (``RANK`` 0) goes through the stage store: it holds the
stage's lock, writes the adapter and records the stage as built. The others write nothing
but their share of the gradients. DPO needs its preference pairs mined first (notebook 03):
strong-model calls never run under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cowest.stage", description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["sft", "dpo"], help="the stage to build")
    ap.add_argument("--profile", default="tiny", help="a profile name or a YAML path")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile value, as for python -m cowest run")
    ap.add_argument("--task", required=True, help="the task (a name from the profile's tasks)")
    ap.add_argument("--weak", help="the weak model (default: the profile's first)")
    ap.add_argument("--fmt", help="the draft format (default: collab.format)")
    ap.add_argument("--feedback", choices=["collab", "single"], default="collab",
                    help="dpo: CoWest's collaborative pairs or RLWF's single-model pairs")
    ap.add_argument("--results", help="the results root (default: results/ or $COWEST_RESULTS)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from cowest import paths, train
    from cowest.__main__ import resolve_profile_arg
    from cowest.config import load_profile
    from cowest.pipeline import Pipeline

    a = build_parser().parse_args(argv)
    cfg = load_profile(resolve_profile_arg(a.profile), overrides=a.overrides)
    run = Pipeline(cfg, results=Path(a.results) if a.results else paths.results_root())
    weak = cfg.weak_model(a.weak) if a.weak else cfg.weak
    fmt = a.fmt or cfg.collab.format
    try:
        if a.stage == "sft":
            if _rank() == 0:
                ckpt = run.sft(a.task, weak, fmt)
            else:
                folder = run.store.folder("sft", run.store.key("sft", run.sft_inputs(a.task, weak, fmt)))
                with tempfile.TemporaryDirectory() as tmp:
                    train.sft(run.weak_base(weak), run.sft_rows(a.task, weak, fmt), Path(tmp) / "adapter",
                              weak=weak, seed=cfg.seed, checkpoints=folder / "checkpoints", commit=False)
                return 0
        else:
            sft = run.sft(a.task, weak, fmt)
            prefs_done = run.store.is_done("prefs", run.store.key("prefs", run.preferences_inputs(
                sft, a.feedback, cfg.collab.evaluator,
                cfg.strong_for(a.task).name if a.feedback == "collab" else None)), [])
            if not prefs_done:
                print("[cowest] error: mine the preference pairs first (notebook 03: "
                      f"./reproduce.sh --profile {cfg.name} --only 3)", file=sys.stderr)
                return 1
            prefs = run.preferences(sft, feedback=a.feedback)
            tag = "cowest-r1" if a.feedback == "collab" else "rlwf"
            if _rank() == 0:
                ckpt = run.dpo(sft, prefs, tag=tag)
            else:
                pairs = run.dpo_pairs(prefs, None)
                folder = run.store.folder("dpo", run.store.key("dpo", run.dpo_inputs(sft, pairs, cfg.seed)))
                with tempfile.TemporaryDirectory() as tmp:
                    train.dpo(run.weak_base(weak), sft.adapter, pairs, Path(tmp) / "adapter", weak=weak,
                              seed=cfg.seed, checkpoints=folder / "checkpoints", commit=False)
                return 0
    finally:
        run.close()
    print(f"[cowest] {a.stage} stage ready: {ckpt.adapter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
