"""`python -m cowest`: the command line behind ./reproduce.sh.

Errors a user can fix (a bad profile, a missing model or dataset, a strong-model failure, a
failed notebook) print as one line naming the problem and the fix, not as a traceback;
``COWEST_TRACEBACK=1`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path


def resolve_profile_arg(profile: str) -> str:
    """A relative YAML path is taken from the caller's folder (``$COWEST_CWD``, which
    ./reproduce.sh sets before it moves to the repository; else the current folder), and made
    absolute before anything else sees it; a profile name is left as it is."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") and not p.is_absolute():
        return str((Path(os.environ.get("COWEST_CWD") or os.getcwd()) / p).resolve())
    return profile


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cowest", description="CoWest reproduction")
    sub = ap.add_subparsers(dest="cmd", required=True, help="what to do")
    r = sub.add_parser("run", help="render the notebooks of a profile into results/<profile>/")
    r.add_argument("--profile", default="tiny",
                   help="a profile name (configs/NAME.yaml) or a YAML path, relative to where you call from")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile value, checked like the file (e.g. --set collab.k=8); repeatable")
    r.add_argument("--only", type=int, metavar="N", help="render only notebook N")
    r.add_argument("--from", dest="start", type=int, metavar="N",
                   help="start at notebook N (earlier stages are reused)")
    r.add_argument("--force", action="store_true", help="rebuild every stage once (default: reuse finished ones)")
    r.add_argument("--dry-run", action="store_true", help="print the planned strong-model calls and cost; run nothing")
    r.add_argument("--check", action="store_true",
                   help="check keys, servers, models, hub access, prices, budget and GPU in seconds; run nothing "
                        "(a run of a profile that uses an API or the hub does this first)")
    sub.add_parser("prepare-models", help="join and verify the offline models, convert the weak ones")
    return ap


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) if not isinstance(e, KeyboardInterrupt) else "interrupted"
    return text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "prepare-models":
        from cowest.assets import prepare_all

        for name, path in prepare_all(convert=["smollm2-135m", "gemma3-270m"]).items():
            print(f"{name}: {path}")
        return 0
    from cowest.assets import AssetError
    from cowest.client import StrongModelError
    from cowest.config import ConfigError, load_profile
    from cowest.execute import NotebookFailed, run
    from cowest.tasks import DatasetUnavailable

    args.profile = resolve_profile_arg(args.profile)
    try:
        cfg = load_profile(args.profile, overrides=args.overrides)
        if args.dry_run:
            from cowest.plan import print_plan

            print_plan(cfg)
            return 0
        if args.check or _needs_check(cfg):
            from cowest.preflight import print_checks

            if not print_checks(cfg):
                print("[cowest] error: the profile is not ready (the lines marked FAIL say what to fix)",
                      file=sys.stderr)
                return 1
            if args.check:
                return 0
        path = run(args.profile, only=args.only, start=args.start, force=args.force, overrides=args.overrides)
    except ConfigError as e:
        # a profile error lists every problem, one per line, each naming its key
        print(f"[cowest] error in the profile:\n{e}", file=sys.stderr)
        return 1
    except (NotebookFailed, AssetError, StrongModelError, DatasetUnavailable, KeyboardInterrupt) as e:
        if os.environ.get("COWEST_TRACEBACK"):
            traceback.print_exc()
        print(f"[cowest] error: {_one_line(e)}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    print(f"[cowest] done: {path}")
    return 0


def _needs_check(cfg) -> bool:
    from cowest.preflight import needs_check

    return needs_check(cfg)


if __name__ == "__main__":
    sys.exit(main())
