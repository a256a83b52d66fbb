"""Driver of the crash test (tests/test_crash.py): one CoWest round for one task, in its own
process, so that the test can kill it with SIGKILL at a chosen point and run it again.

    python tests/crash_driver.py PROFILE RESULTS OUT_JSON --task NAME [--set KEY=VALUE ...]

Opens `cowest.pipeline.Pipeline(load_profile(PROFILE, overrides), results=RESULTS)`, runs
`sft -> preferences -> dpo` (`Pipeline.cowest(task)`), and writes to OUT_JSON what the run
produced: the preference pairs, their stats, and the sha256 of the SFT and DPO adapters.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

T0 = time.monotonic()


def _say(what: str) -> None:
    print(f"[driver] {time.monotonic() - T0:6.1f} s  {what}", flush=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("results")
    ap.add_argument("out")
    ap.add_argument("--task", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    from cowest.artifacts import write_json
    from cowest.config import load_profile
    from cowest.pipeline import Pipeline

    _say("imported")

    cfg = load_profile(args.profile, overrides=args.overrides)
    with Pipeline(cfg, results=Path(args.results)) as run:
        _say("sft")
        sft = run.sft(args.task)
        _say("preferences")
        prefs = run.preferences(sft)
        _say(f"dpo on {len(prefs['pairs'])} pairs")
        (dpo,) = run.cowest(args.task)  # sft and preferences are reused: the same stages
        assert dpo.adapter is not None and sft.adapter is not None
        write_json(Path(args.out), {
            "pairs": prefs["pairs"], "stats": prefs["stats"], "prefs_key": prefs["key"],
            "sft_adapter_sha256": _sha256(sft.adapter / "adapter_model.safetensors"),
            "dpo_adapter_sha256": _sha256(dpo.adapter / "adapter_model.safetensors"),
            "dpo_trained": dpo.adapter != sft.adapter,
            "built": [k for k, _ in run.store.built], "reused": [k for k, _ in run.store.reused],
        })
    _say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
