"""Tables (CSV + Markdown) and figures (PNG + PDF), and the paper's numbers to set beside ours.

The paper's numbers are only ever shown in columns or rows labelled "paper", next to ours;
nothing here feeds them into a computation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from cowest.stages import atomic_write_text

# Main table of the paper (percent). Keys: method -> domain -> (metric1, metric2).
PAPER_MAIN: dict[str, dict[str, tuple[float, float]]] = {
    "Weak (SFT)": {"ifqa": (69.71, 72.69), "medmcqa": (73.08, 58.26), "prosocial": (64.29, 62.40)},
    "Strong (CoT)": {"ifqa": (57.42, 65.60), "medmcqa": (71.80, 57.69), "prosocial": (39.00, 39.58)},
    "FLARE": {"ifqa": (62.07, 70.59), "medmcqa": (72.40, 58.89), "prosocial": (55.27, 54.97)},
    "SuperICL": {"ifqa": (68.85, 74.82), "medmcqa": (73.64, 58.33), "prosocial": (66.18, 63.86)},
    "RLWF": {"ifqa": (70.52, 75.04), "medmcqa": (72.01, 57.65), "prosocial": (64.85, 62.10)},
    "CoWest": {"ifqa": (75.85, 77.34), "medmcqa": (75.10, 60.13), "prosocial": (68.33, 65.61)},
}
PAPER_MODELS = "weak: Llama-3-8B; strong: GPT-4 (IfQA, MedMCQA), GPT-3.5-Turbo (ProsocialDialog)"
# Strong-model ablation of the paper (accuracy, IfQA / Prosocial).
PAPER_STRONG_ABLATION = {"GPT-4": (75.9, 38.2), "Llama-3-70B": (72.1, 62.3), "GPT-3.5-Turbo": (70.8, 68.3),
                         "Llama-2-70B": (68.5, 55.7)}
# The paper domain each synthetic domain stands in for.
PAPER_DOMAIN = {"synth_ifqa": "ifqa", "synth_med": "medmcqa", "synth_safety": "prosocial",
                "ifqa": "ifqa", "medmcqa": "medmcqa", "prosocial": "prosocial"}


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.1f}") -> str:
    """A GitHub Markdown table (no extra dependency)."""
    cols = [str(c) for c in df.columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else floatfmt.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, folder: Path, name: str, *, note: str = "") -> pd.DataFrame:
    """Write `name.csv` and `name.md` (with an optional note under the table)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(folder / f"{name}.csv", buf.getvalue())
    atomic_write_text(folder / f"{name}.md", to_markdown(df) + (f"\n{note}\n" if note else ""))
    return df


def save_figure(fig: Any, folder: Path, name: str) -> list[Path]:
    """Write `name.png` and `name.pdf`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        tmp = folder / f".{name}.tmp.{ext}"
        fig.savefig(tmp, bbox_inches="tight", dpi=150)
        tmp.replace(folder / f"{name}.{ext}")
        out.append(folder / f"{name}.{ext}")
    return out


def pct(x: float | None) -> float:
    return float("nan") if x is None else 100.0 * x


def result_row(result: Any, metrics: Sequence[str]) -> dict[str, Any]:
    """Percentages with 95% bootstrap intervals for one `pipeline.Result`."""
    row: dict[str, Any] = {"n": int(result.metrics.get("n", len(result.rows)))}
    for m in metrics:
        v = result.metrics[m]
        row[m] = pct(v)
        row[f"{m} 95% CI"] = f"[{pct(result.metrics[m + '_lo']):.1f}, {pct(result.metrics[m + '_hi']):.1f}]"
    row["unparseable"] = int(result.metrics.get("unparseable", 0))
    return row


def paired_comparison(a: Any, b: Any, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap and McNemar of two Results on the same items (a minus b)."""
    from cowest.metrics import mcnemar, paired_bootstrap

    ids_a = [r["id"] for r in a.rows]
    if ids_a != [r["id"] for r in b.rows]:
        raise ValueError("paired comparison needs the same items in the same order")
    pb = paired_bootstrap(a.scores, b.scores, seed=seed)
    mc = mcnemar([s >= 1.0 for s in a.scores], [s >= 1.0 for s in b.scores])
    return {"a": a.method, "b": b.method, "task": a.task, **{f"bootstrap_{k}": v for k, v in pb.items()},
            **{f"mcnemar_{k}": v for k, v in mc.items()}}


def refinement_breakdown(task: Any, items: Sequence[Any], result: Any) -> dict[str, Any]:
    """What the strong model did with the weak model's drafts, for one collaboration Result.

    Shares (%) over the test items: the draft's own answer correct, the final answer correct,
    drafts the strong model fixed (wrong -> right) or broke (right -> wrong), and finals that
    repeat the draft's answer. CoWest can only help where the strong model reads the draft:
    a strong model that always repeats the draft's answer turns refinement into the weak
    model alone; one that never does turns it into the strong model alone.
    """
    by_id = {e.id: e for e in items}
    n = len(result.rows)
    if n == 0:
        raise ValueError("refinement_breakdown: the result has no rows")
    if any("draft" not in r for r in result.rows):
        raise ValueError(f"refinement_breakdown: {result.method!r} has no drafts (use a 'collab' result)")
    draft_ok = final_ok = fixed = broken = follows = 0
    for r in result.rows:
        e = by_id[r["id"]]
        d = task.extract(r["draft"], e)
        d_ok = d is not None and task.score(d, e) >= 1.0
        f_ok = r["score"] >= 1.0
        draft_ok += d_ok
        final_ok += f_ok
        fixed += (not d_ok) and f_ok
        broken += d_ok and not f_ok
        follows += d is not None and r.get("pred") is not None and str(d).strip().lower() == str(r["pred"]).strip().lower()
    return {"items": n, "draft correct": pct(draft_ok / n), "final correct": pct(final_ok / n),
            "fixed by strong": pct(fixed / n), "broken by strong": pct(broken / n),
            "final repeats draft's answer": pct(follows / n)}


# ----------------------------------------------------------------------------- index
# Every table and figure, by the notebook that makes it (the smoke test checks each exists).
ARTIFACTS: dict[str, dict[str, list[str]]] = {
    "01_data": {"tables": ["data_sizes", "label_balance"], "figures": ["label_balance"]},
    "02_sft": {"tables": ["sft_summary"], "figures": ["sft_loss"]},
    "03_preferences": {"tables": ["preference_stats"], "figures": ["delta_distribution"]},
    "04_dpo": {"tables": ["dpo_summary"], "figures": ["dpo_curves"]},
    "05_evaluation": {"tables": ["main_results", "paired_tests", "refinement_breakdown"],
                      "figures": ["main_results"]},
    "06_format_ablation": {"tables": ["format_ablation"], "figures": ["format_ablation"]},
    "07_strong_ablation": {"tables": ["strong_ablation"], "figures": ["strong_ablation"]},
    "08_weak_ablation": {"tables": ["weak_ablation"], "figures": ["weak_ablation"]},
    "09_preference_volume": {"tables": ["preference_volume"], "figures": ["preference_volume"]},
    "10_beyond_the_paper": {
        "tables": ["rounds", "evaluator_choice", "evaluator_agreement", "theory_check", "cost_latency"],
        "figures": ["rounds"],
    },
}


def expected_files(root: Path) -> list[Path]:
    out = []
    for spec in ARTIFACTS.values():
        out += [root / "tables" / f"{t}.{ext}" for t in spec["tables"] for ext in ("csv", "md")]
        out += [root / "figures" / f"{f}.{ext}" for f in spec["figures"] for ext in ("png", "pdf")]
    return out


def write_index(root: Path, profile: str, manifest: dict[str, Any]) -> Path:
    """`results/<profile>/README.md`: every table and figure, linked to its notebook."""
    lines = [f"# Results of the `{profile}` profile", "",
             "Made by `./reproduce.sh --profile " + profile + "`; see `manifest.json` for the commit, "
             "versions, seeds, wall times and the ledger of strong-model calls.", "",
             "| notebook | status | minutes | tables | figures |", "|---|---|---|---|---|"]
    for nb, spec in ARTIFACTS.items():
        info = manifest.get("notebooks", {}).get(f"{nb}.ipynb", {})
        tables = ", ".join(f"[{t}](tables/{t}.md)" for t in spec["tables"] if (root / "tables" / f"{t}.md").exists())
        figs = ", ".join(f"[{f}](figures/{f}.png)" for f in spec["figures"] if (root / "figures" / f"{f}.png").exists())
        mins = f"{info['seconds'] / 60:.1f}" if "seconds" in info else ""
        lines.append(f"| [{nb}](notebooks/{nb}.ipynb) | {info.get('status', 'not run')} | {mins} | {tables} | {figs} |")
    total = manifest.get("total_seconds")
    if total:
        lines += ["", f"Total wall time of the last full run: {total / 60:.1f} minutes."]
    path = root / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
