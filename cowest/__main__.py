"""`python -m cowest`: the command line behind ./reproduce.sh."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cowest", description="CoWest reproduction")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="render the notebooks of a profile into results/<profile>/")
    r.add_argument("--profile", default="tiny", help="a profile name (configs/NAME.yaml) or a YAML path")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile value, checked like the file (e.g. --set collab.k=8); repeatable")
    r.add_argument("--only", type=int, help="render only notebook N")
    r.add_argument("--from", dest="start", type=int, help="start at notebook N (earlier stages are reused)")
    r.add_argument("--force", action="store_true", help="rebuild every stage once (default: reuse finished ones)")
    r.add_argument("--dry-run", action="store_true", help="print the planned strong-model calls and cost; run nothing")
    sub.add_parser("prepare-models", help="join and verify the offline models, convert the weak ones")
    args = ap.parse_args(argv)
    if args.cmd == "prepare-models":
        from cowest.assets import prepare_all

        for name, path in prepare_all(convert=["smollm2-135m", "gemma3-270m"]).items():
            print(f"{name}: {path}")
        return 0
    from cowest.config import ConfigError, load_profile
    from cowest.execute import NotebookFailed, run

    try:
        if args.dry_run:
            from cowest.plan import print_plan

            print_plan(load_profile(args.profile, overrides=args.overrides))
            return 0
        path = run(args.profile, only=args.only, start=args.start, force=args.force, overrides=args.overrides)
    except (NotebookFailed, ConfigError) as e:
        print(f"[cowest] error: {e}", file=sys.stderr)
        return 1
    print(f"[cowest] done: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
