"""Tables (CSV + Markdown), figures (PNG + PDF) and the diagnostics behind them.

The paper's reported numbers live in `cowest/tasks/paper_numbers.yaml` and are loaded with
`cowest.tasks.paper_numbers()`; they are only ever shown in columns or rows labelled
"paper", next to ours, and nothing here feeds them into a computation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from cowest.artifacts import atomic_write_text


def number(v: float) -> str:
    """One decimal from 1 up (metrics in points, seconds); below 1, three significant digits,
    so that shares, losses and p-values keep their information (0.459, 0.049, 0.0312)."""
    if pd.isna(v):
        return ""
    return f"{v:.1f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (no extra dependency); floats as :func:`number` writes them."""
    cols = [str(c) for c in df.columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return number(v)
        if v is pd.NA:  # a missing value of a nullable column (DataFrame.convert_dtypes)
            return ""
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


def interval(text: str) -> tuple[float, float]:
    """The widest interval in a CI cell: ``"[1.0, 2.0]"`` or several joined by ``"; "`` (seeds)."""
    parts = [[float(x) for x in p.strip().strip("[]").split(",")] for p in str(text).split(";") if p.strip()]
    return min(lo for lo, _ in parts), max(hi for _, hi in parts)


def bar_with_intervals(ax: Any, df: pd.DataFrame, *, x: str, y: str, hue: str, ci: str,
                       order: Sequence[Any] | None = None, hue_order: Sequence[Any] | None = None) -> None:
    """Grouped bars of ``y`` with the interval of column ``ci`` (:func:`interval`) on each bar.

    The y-axis starts at 0 (bars are shares), so no break is hidden; the legend is the
    caller's to place."""
    import matplotlib.pyplot as plt

    order = list(order) if order is not None else list(dict.fromkeys(df[x]))
    hues = [h for h in (hue_order if hue_order is not None else dict.fromkeys(df[hue])) if h in set(df[hue])]
    width = 0.8 / max(len(hues), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, h in enumerate(hues):
        sub = df[df[hue] == h].set_index(x)
        xs = [i - 0.4 + width * (j + 0.5) for i, v in enumerate(order) if v in sub.index]
        vals = [float(sub.loc[v, y]) for v in order if v in sub.index]
        ivs = [interval(sub.loc[v, ci]) for v in order if v in sub.index]
        ax.bar(xs, vals, width=width * 0.95, label=str(h), color=colors[j % len(colors)])
        ax.errorbar(xs, vals, yerr=[[max(v - lo, 0) for v, (lo, _) in zip(vals, ivs)],
                                    [max(hi - v, 0) for v, (_, hi) in zip(vals, ivs)]],
                    fmt="none", ecolor="k", elinewidth=0.8, capsize=2)
    ax.set_xticks(range(len(order)), [str(v) for v in order])
    ax.set_xlabel(x)
    ax.set_ylim(bottom=0)


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
    row["failed calls"] = int(result.metrics.get("failed", 0))
    return row


#: share of items with the same answer above which two systems count as the same system
IDENTICAL_SHARE = 0.95


def _same_answer(x: Any, y: Any) -> bool:
    return str(x).strip().lower() == str(y).strip().lower()


def _runs(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def paired_comparison(a: Any, b: Any, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap and McNemar of two systems on the same items (a minus b), and a verdict.

    ``a`` and ``b`` are Results, or lists of Results of one system trained with several
    seeds (``collab.dpo_seeds``). With seeds, an item's score is its mean over the seeds,
    and the bootstrap resamples items: the interval covers the items' variation with the
    seeds' variation averaged in. McNemar needs one right/wrong per item, so it is
    reported only when both sides are single runs.

    Also ``same answer %`` (items where both gave the same prediction), ``discordant %``
    (items one gets right and the other wrong; with seeds, both are means over the
    seed-matched runs) and ``verdict`` (:func:`verdict`): systems that give the same
    answer on at least ``IDENTICAL_SHARE`` of the items are reported as ``"identical
    systems"``, never ordered.
    """
    from cowest.metrics import mcnemar, paired_bootstrap

    ra, rb = _runs(a), _runs(b)
    by_id = [{r["id"]: r for r in x.rows} for x in ra + rb]
    # the items every run answered (a failed call is left out of a Result's rows, not scored as wrong)
    ids = [r["id"] for r in ra[0].rows if all(r["id"] in m for m in by_id)]
    if not ids:
        raise ValueError(f"paired comparison of {ra[0].method} and {rb[0].method}: no item answered by both")
    ma, mb = by_id[:len(ra)], by_id[len(ra):]
    sa = [sum(m[i]["score"] for m in ma) / len(ma) for i in ids]
    sb = [sum(m[i]["score"] for m in mb) / len(mb) for i in ids]
    pairs = [(ma[min(k, len(ma) - 1)], mb[min(k, len(mb) - 1)]) for k in range(max(len(ma), len(mb)))]
    n_pairs = len(ids) * len(pairs)
    same = sum(_same_answer(x[i].get("pred"), y[i].get("pred")) for x, y in pairs for i in ids) / n_pairs
    # items one run gets right and the other wrong (the variance of a paired difference)
    discordant = sum((x[i]["score"] >= 1.0) != (y[i]["score"] >= 1.0) for x, y in pairs for i in ids) / n_pairs
    pb = paired_bootstrap(sa, sb, seed=seed)
    if len(ra) == 1 and len(rb) == 1:
        mc = mcnemar([s >= 1.0 for s in sa], [s >= 1.0 for s in sb])
    else:
        mc = {"b": float("nan"), "c": float("nan"), "p_value": float("nan")}
    out = {"a": ra[0].method, "b": rb[0].method, "task": ra[0].task, "paired items": len(ids),
           "seeds a": len(ra), "seeds b": len(rb), "same answer %": pct(same), "discordant %": pct(discordant),
           "identical": same >= IDENTICAL_SHARE,
           **{f"bootstrap_{k}": v for k, v in pb.items()}, **{f"mcnemar_{k}": v for k, v in mc.items()}}
    out["verdict"] = verdict(out)
    return out


def compare_vectors(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap and McNemar of two 0/1 vectors over the same items (a minus b), and a
    :func:`verdict`: for a per-item quantity that is not a Result's score (e.g. notebook 10's
    "this draft did not help")."""
    from cowest.metrics import mcnemar, paired_bootstrap

    if len(a) != len(b) or not a:
        raise ValueError(f"compare_vectors: need two non-empty vectors of one length, got {len(a)} and {len(b)}")
    out: dict[str, Any] = {"paired items": len(a), "identical": False,
                           **{f"bootstrap_{k}": v for k, v in paired_bootstrap(a, b, seed=seed).items()},
                           **{f"mcnemar_{k}": v for k, v in mcnemar([x >= 1.0 for x in a], [y >= 1.0 for y in b]).items()}}
    out["verdict"] = verdict(out)
    return out


ZERO = 1e-9  # an interval bound closer to 0 than this touches 0
ALPHA = 0.05  # McNemar's level, where it is computed (single runs on both sides)


def _mcnemar_p(cmp: dict[str, Any]) -> float | None:
    p = cmp.get("mcnemar_p_value")
    return None if p is None or p != p else float(p)  # NaN: not computed (seeds on a side)


def tests_disagree(cmp: dict[str, Any]) -> bool:
    """The bootstrap's interval excludes 0 but McNemar's p is at or above ``ALPHA``.

    The percentile bootstrap is anti-conservative on a handful of discordant items: 3 items
    that only one system gets right give an interval above 0 while the exact McNemar p is
    0.25 (a sign test on 3 coin flips cannot reach 0.05 with fewer than 6).
    """
    if cmp.get("identical"):
        return False
    p = _mcnemar_p(cmp)
    excludes = cmp["bootstrap_ci_low"] > ZERO or cmp["bootstrap_ci_high"] < -ZERO
    return excludes and p is not None and p >= ALPHA


def verdict(cmp: dict[str, Any]) -> str:
    """Three-way verdict of a :func:`paired_comparison` (a against b).

    ``"identical systems"`` when they answer the same on >= ``IDENTICAL_SHARE`` of the
    items (or ``cmp["identical"]`` says so for another reason, e.g. DPO did not run);
    ``"higher"`` / ``"lower"`` when the paired bootstrap's 95% interval of a - b lies above /
    below 0 and, where McNemar's test is computed (a single run on each side), its p is
    below ``ALPHA`` too; otherwise ``"not distinguishable"`` (:func:`tests_disagree` tells
    when the two tests disagree). Never an ordering from point estimates, and never from an
    interval that touches 0: a bound within ``ZERO`` of 0 is 0 (the bootstrap's bounds are
    sums of item scores, so a bound of exactly 0 can come out as -4e-18).
    """
    if cmp.get("identical"):
        return "identical systems"
    if tests_disagree(cmp):
        return "not distinguishable"
    lo, hi = cmp["bootstrap_ci_low"], cmp["bootstrap_ci_high"]
    if lo > ZERO:
        return "higher"
    if hi < -ZERO:
        return "lower"
    return "not distinguishable"


def disagreement(cmp: dict[str, Any]) -> str:
    """Why a comparison whose interval excludes 0 is still "not distinguishable" ("" otherwise)."""
    if not tests_disagree(cmp):
        return ""
    n = int(cmp.get("mcnemar_b", 0)) + int(cmp.get("mcnemar_c", 0))
    why = (f"{n} discordant item{'s' if n != 1 else ''} are too few to order the two" if n < 25
           else f"its {n} discordant items do not order the two")
    return (f"the bootstrap interval excludes 0 but McNemar's p={cmp['mcnemar_p_value']:.3g} does not "
            f"reach {ALPHA:g}: {why}")


def verdict_line(cmp: dict[str, Any], scale: float = 100.0) -> str:
    """One sentence: ``a vs b: <verdict> (diff +x.x points, 95% CI [lo, hi], McNemar p, n)``."""
    why = ""
    if cmp.get("identical"):
        why = f"; the two give the same answer on {cmp.get('same answer %', float('nan')):.0f}% of the items"
        if cmp.get("identical_reason"):
            why = f"; {cmp['identical_reason']}"
    elif tests_disagree(cmp):
        why = f"; {disagreement(cmp)}"
    seeds = [f"{cmp.get(k, 1)} seeds of {cmp[x]}" for k, x in (("seeds a", "a"), ("seeds b", "b")) if cmp.get(k, 1) > 1]
    test = (f"McNemar p={cmp['mcnemar_p_value']:.3g}" if cmp["mcnemar_p_value"] == cmp["mcnemar_p_value"]
            else "item scores averaged over " + " and ".join(seeds))
    return (f"{cmp['a']} vs {cmp['b']} ({cmp.get('task', '')}): {verdict(cmp)} "
            f"(difference {scale * cmp['bootstrap_diff']:+.1f} points, 95% CI "
            f"[{scale * cmp['bootstrap_ci_low']:+.1f}, {scale * cmp['bootstrap_ci_high']:+.1f}], "
            f"{test}, {cmp['paired items']} paired items{why})")


def detectable_difference(n: int, discordant_share: float, z_alpha: float = 1.96, z_power: float = 0.84) -> float:
    """The smallest paired difference (a share, 0-1) that ``n`` items detect at 5% / 80% power.

    Normal approximation of the paired difference of two correctness vectors: the variance
    of one item's difference is about the share of items on which the two disagree
    (``discordant_share``), so the detectable difference is ``(z_alpha + z_power) *
    sqrt(discordant_share / n)``. Example: 200 items, systems disagreeing on 20% of them:
    about 0.089 (8.9 points).
    """
    if n <= 0:
        raise ValueError("detectable_difference: n must be positive")
    if not 0 <= discordant_share <= 1:
        raise ValueError("detectable_difference: discordant_share must be in [0, 1]")
    return (z_alpha + z_power) * (discordant_share / n) ** 0.5


def trend(values: Sequence[float], comparison_first_last: dict[str, Any] | None = None) -> str:
    """A computed word for a series (e.g. accuracy over preference volumes).

    Without a paired comparison of the last point against the first, or when that
    comparison is not distinguishable (or identical systems), the answer is "flat within
    the noise" whatever the point estimates do; "rises" / "falls" only when the interval
    says so.
    """
    if comparison_first_last is None:
        return "not distinguishable (no paired test)"
    v = verdict(comparison_first_last)
    if v == "higher":
        return "rises"
    if v == "lower":
        return "falls"
    return "flat within the noise" if v == "not distinguishable" else "identical systems"


def refinement_breakdown(task: Any, items: Sequence[Any], result: Any) -> dict[str, Any]:
    """What the strong model did with the weak model's drafts, for one collaboration Result.

    Shares (%) over the test items: the draft's own answer correct, the final answer correct,
    drafts the strong model fixed (wrong -> right) or broke (right -> wrong), finals that
    repeat the draft's answer, and drafts that state the item's fact (`Task.states_fact`;
    NaN for a task that cannot tell). CoWest can only help where the strong model reads the draft:
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
    stated: list[bool | None] = []
    for r in result.rows:
        e = by_id[r["id"]]
        stated.append(task.states_fact(r["draft"], e))
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
            "final repeats draft's answer": pct(follows / n),
            # the fact a synthetic domain's answer needs, stated in the draft (the strong model can't know it)
            "draft states the fact": (pct(sum(bool(x) for x in stated) / n) if all(x is not None for x in stated)
                                      else float("nan"))}


# ----------------------------------------------------------------------------- index
def write_index(root: Path, profile: str, manifest: dict[str, Any]) -> Path:
    """`results/<profile>/README.md`: every table and figure, linked to its notebook."""
    lines = [f"# Results of the `{profile}` profile", "",
             "Made by `./reproduce.sh --profile " + profile + "`; see `manifest.json` for the commit, "
             "versions, seeds, wall times and the ledger of strong-model calls.", "",
             "| notebook | status | minutes | tables | figures |", "|---|---|---|---|---|"]
    from cowest.notebooks import NOTEBOOKS

    for nb in NOTEBOOKS:
        info = manifest.get("notebooks", {}).get(nb.file, {})
        tables = ", ".join(f"[{t}](tables/{t}.md)" for t in nb.tables if (root / "tables" / f"{t}.md").exists())
        figs = ", ".join(f"[{f}](figures/{f}.png)" for f in nb.figures if (root / "figures" / f"{f}.png").exists())
        mins = f"{info['seconds'] / 60:.1f}" if "seconds" in info else ""
        lines.append(f"| [{nb.stem}](notebooks/{nb.file}) | {info.get('status', 'not run')} | {mins} | {tables} | {figs} |")
    total = manifest.get("total_seconds")
    if total:
        lines += ["", f"Total wall time of the last full run: {total / 60:.1f} minutes."]
    path = root / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
