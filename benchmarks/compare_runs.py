"""Two runs of one profile side by side: wall time per notebook, and whether they did the same work.

    .venv/bin/python benchmarks/compare_runs.py --before-commit 8df4f45 --after /tmp/results/tiny \\
        --out results/benchmarks/tiny_before_after

``--before-commit C`` reads ``results/<profile>/`` as committed at C (manifest and tables);
``--before DIR`` reads a results folder instead. Writes ``OUT.json`` and ``OUT.md``:

- seconds per notebook before and after, the ratio, and the totals;
- the work: the profile hash, the item counts (``n``) of every row of the main table, and
  the strong-model requests each run sent (the ledger);
- the outputs: every metric of the main table before and after, with the largest difference
  (equal work means the same items and the same methods; numbers may move where a lever
  changes numerics, e.g. the compact LM head's float summation order, which the table shows).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def _git_show(commit: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


def load(commit: str | None, folder: Path | None, profile: str) -> tuple[dict[str, Any], pd.DataFrame]:
    if commit:
        manifest = json.loads(_git_show(commit, f"results/{profile}/manifest.json"))
        main = pd.read_csv(io.StringIO(_git_show(commit, f"results/{profile}/tables/main_results.csv")))
    else:
        assert folder is not None
        manifest = json.loads((folder / "manifest.json").read_text())
        main = pd.read_csv(folder / "tables" / "main_results.csv")
    return manifest, main


def compare(before: tuple[dict, pd.DataFrame], after: tuple[dict, pd.DataFrame]) -> dict[str, Any]:
    (mb, tb), (ma, ta) = before, after
    rows = []
    for nb in sorted(set(mb["notebooks"]) | set(ma["notebooks"])):
        b = mb["notebooks"].get(nb, {}).get("seconds")
        a = ma["notebooks"].get(nb, {}).get("seconds")
        rows.append({"notebook": nb, "before_s": b, "after_s": a,
                     "speed-up": round(b / a, 2) if a and b else None})
    tot_b = sum(r["before_s"] or 0 for r in rows)
    tot_a = sum(r["after_s"] or 0 for r in rows)
    keys = ["task", "method"]
    metric_cols = [c for c in ("ours 1", "ours 2") if c in tb.columns and c in ta.columns]
    cols = [*keys, "n", *metric_cols]
    joined = tb[cols].merge(ta[cols], on=keys, how="outer", suffixes=(" before", " after")).set_index(keys)
    diffs = {c: float((joined[f"{c} after"] - joined[f"{c} before"]).abs().max()) for c in metric_cols}
    ledger = lambda m: (m.get("ledger") or {}).get("totals", {})  # noqa: E731
    return {
        "notebooks": rows, "total_before_s": tot_b, "total_after_s": tot_a,
        "total_speed_up": round(tot_b / tot_a, 2) if tot_a else None,
        "before": {"commit": mb.get("commit"), "profile_hash": mb.get("profile_hash"), "ledger": ledger(mb)},
        "after": {"commit": ma.get("commit"), "profile_hash": ma.get("profile_hash"), "ledger": ledger(ma)},
        "same_items": bool((joined["n before"] == joined["n after"]).all()),
        "main_table": joined.reset_index().to_dict("records"),
        "largest_metric_difference_points": diffs,
    }


def markdown(r: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", "| notebook | before (s) | after (s) | speed-up |", "|---|---:|---:|---:|"]
    for row in r["notebooks"]:
        lines.append(f"| {row['notebook']} | {row['before_s'] or '-'} | {row['after_s'] or '-'} | "
                     f"{row['speed-up'] or '-'} |")
    lines.append(f"| total | {r['total_before_s']:.0f} ({r['total_before_s'] / 60:.1f} min) | "
                 f"{r['total_after_s']:.0f} ({r['total_after_s'] / 60:.1f} min) | {r['total_speed_up']} |")
    lb, la = r["before"]["ledger"], r["after"]["ledger"]
    lines += ["", f"Before: commit {r['before']['commit']}; after: commit {r['after']['commit']}.",
              f"Same items in every row of the main table: {r['same_items']}. Strong-model requests: "
              f"{lb.get('calls', '?')} before ({lb.get('cache_hits', '?')} from the cache), "
              f"{la.get('calls', '?')} after ({la.get('cache_hits', '?')} from the cache).",
              "Largest difference of a main-table metric between the runs (points): "
              + ", ".join(f"{k}: {v:.1f}" for k, v in r["largest_metric_difference_points"].items()) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny", help="the profile both runs used")
    ap.add_argument("--before-commit", help="read the committed results of this commit")
    ap.add_argument("--before", type=Path, help="or a results folder (results/<profile>)")
    ap.add_argument("--after", type=Path, required=True, help="the results folder of the new run")
    ap.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    ap.add_argument("--title", default="Tiny profile: before and after the throughput levers")
    ap.add_argument("--note", default="", help="how the runs were made (written under the table)")
    a = ap.parse_args(argv)
    if not (a.before_commit or a.before):
        ap.error("give --before-commit or --before")
    r = compare(load(a.before_commit, a.before, a.profile), load(None, a.after, a.profile))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    r["note"] = a.note
    text = markdown(r, a.title) + (f"\n{a.note}\n" if a.note else "")
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    a.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
