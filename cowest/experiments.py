"""The paper's experiments as functions: the main table, the four ablations, and what they show.

Each function runs (or reuses, through the stage store) what its notebook shows and
returns the numbers: the notebooks 05-09 call them and print or plot the result, and
notebook 05's "what the miniature shows" reads every finding from them. One home for each
experiment's logic, so a reader finds it here and a test can hold it.

| function | notebook | paper's finding it tests |
|---|---|---|
| [`main_table`] | 05 | CoWest beats each model alone, standard refinement and RLWF |
| [`format_ablation`] | 06 | direct < knowledge < chain of thought; aligned > SFT in each format |
| [`strong_ablation`] | 07 | a stronger strong model makes CoWest better |
| [`weak_ablation`] | 08 | a stronger weak model makes CoWest better |
| [`volume_ablation`] | 09 | more preference pairs make CoWest better |
| [`findings`] | 05 | each finding: reproduced / not reproduced / not distinguishable, with numbers and a reason |

Every ordering is a paired test on the same items (`cowest.report.paired_comparison`):
"higher" or "lower" only when the 95% interval of the difference excludes 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import pandas as pd

from cowest import report
from cowest.pipeline import Pipeline, Result

_F = TypeVar("_F", bound=Callable[..., Any])


def _frees_servers(fn: _F) -> _F:
    """Stop the local strong-model servers the experiment started once it is done (its
    results are in the stage store): notebook 05 runs every experiment in one kernel, and
    each experiment's servers (other strong models, FLARE's log-probability pool) would
    otherwise all stay in memory at once. The next experiment starts what it needs."""
    @functools.wraps(fn)
    def run_and_free(run: Pipeline, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(run, *args, **kwargs)
        finally:
            run.close()
    return run_and_free  # type: ignore[return-value]


#: the rows of the main table, in the paper's order
MAIN_METHODS = ("Weak (SFT)", "Strong (CoT)", "FLARE", "SuperICL", "RLWF", "Standard refinement", "CoWest")
#: rows trained with DPO: one run per DPO seed of the task (`Pipeline.dpo_seeds`)
SEEDED = ("RLWF", "CoWest")


#: what makes a task's main-table rows "powered" rather than a demonstration: test items,
#: mined preference pairs and DPO seeds, at least
POWERED = {"test items": 200, "pairs": 150, "seeds": 3}


def sizing(run: Pipeline, task: str) -> str:
    """"powered" when the task reaches every size of :data:`POWERED`, else "demonstration"
    with the sizes that fall short (its verdicts are then mostly "not distinguishable")."""
    have = {"test items": len(run.test_items(task)), "pairs": len(run.preferences(run.sft(task))["pairs"]),
            "seeds": len(run.dpo_seeds(task))}
    short = [f"{v} {k} < {POWERED[k]}" for k, v in have.items() if v < POWERED[k]]
    return "powered" if not short else f"demonstration ({', '.join(short)})"


def _metric(run: Pipeline, task: str) -> str:
    return run.task(task).info.metrics[0]


def _mean(runs: Sequence[Result], metric: str) -> float:
    return sum(r.metrics[metric] for r in runs) / len(runs)


def _seed_label(run: Pipeline, base: str, seed: int) -> str:
    return base if seed == run.cfg.seed else f"{base}-seed{seed}"


# ----------------------------------------------------------------------------- main table
@dataclass
class MainTable:
    """The main table: per task, per method, one Result per DPO seed (one for the others)."""

    results: dict[str, dict[str, list[Result]]]
    frame: pd.DataFrame  # one row per (task, method); seeded rows give the mean over seeds
    seeds: pd.DataFrame  # one row per (task, method, seed) of the seeded methods
    comparisons: dict[str, dict[str, dict[str, Any]]]  # task -> "a vs b" -> paired comparison
    per_seed: pd.DataFrame  # CoWest seed s against standard refinement and against RLWF seed s


def main_results(run: Pipeline, task: str) -> dict[str, list[Result]]:
    """Every row of the main table for one task (CoWest and RLWF once per DPO seed)."""
    sft = run.sft(task)
    n_base = run.cfg.baselines.n_test  # FLARE and SuperICL may run on a prefix of the test items
    out = {
        "Weak (SFT)": [run.evaluate("weak", task, ckpt=sft, label="weak-sft")],
        "Strong (CoT)": [run.evaluate("strong", task)],
        "FLARE": [run.evaluate("flare", task, n=n_base)],
        "SuperICL": [run.evaluate("supericl", task, ckpt=sft, n=n_base)],
        "RLWF": [run.evaluate("collab", task, ckpt=run.rlwf(task, seed=s), label=_seed_label(run, "rlwf", s))
                 for s in run.dpo_seeds(task)],
        "Standard refinement": [run.evaluate("collab", task, ckpt=sft, label="collab-sft")],
        "CoWest": [run.evaluate("collab", task, ckpt=run.cowest(task, seed=s)[0],
                                label=_seed_label(run, "cowest", s)) for s in run.dpo_seeds(task)],
    }
    return {m: out[m] for m in MAIN_METHODS}


def _main_row(run: Pipeline, task: str, method: str, runs: list[Result], paper: Any) -> dict[str, Any]:
    m1, m2 = run.task(task).info.metrics
    strong = run.cfg.strong_for(task)
    rows = [report.result_row(r, [m1, m2]) for r in runs]
    p = paper.main.get(method, {}).get(paper.domain.get(task))
    row: dict[str, Any] = {
        "task": task, "method": method,
        "strong model": strong.model + (f" (substitute for the paper's {strong.stands_in_for})"
                                        if strong.stands_in_for else ""),
        "seeds": len(runs), "metric 1": m1, "ours 1": sum(r[m1] for r in rows) / len(rows),
        "ours 1 CI": "; ".join(r[f"{m1} 95% CI"] for r in rows),
        "ours 1 seed range": (f"{min(r[m1] for r in rows):.1f}-{max(r[m1] for r in rows):.1f}"
                              if len(rows) > 1 else ""),
        "metric 2": m2, "ours 2": sum(r[m2] for r in rows) / len(rows),
        "ours 2 CI": "; ".join(r[f"{m2} 95% CI"] for r in rows),
        "n": rows[0]["n"], "unparseable": sum(r["unparseable"] for r in rows),
        "failed calls": sum(r["failed calls"] for r in rows),
        "paper 1 (reported)": p[0] if p else float("nan"), "paper 2 (reported)": p[1] if p else float("nan"),
    }
    return row


#: the paired comparisons of the main table: (a, b), a minus b
MAIN_COMPARISONS = (
    ("CoWest", "Weak (SFT)"), ("CoWest", "Strong (CoT)"), ("CoWest", "Standard refinement"), ("CoWest", "RLWF"),
    ("CoWest", "FLARE"), ("CoWest", "SuperICL"),
    ("Standard refinement", "Weak (SFT)"), ("Standard refinement", "Strong (CoT)"),
)


@_frees_servers
def main_table(run: Pipeline) -> MainTable:
    """The main table on every task of the profile, with the paired comparisons."""
    from cowest.tasks import paper_numbers

    paper = paper_numbers()
    results = {t.name: main_results(run, t.name) for t in run.cfg.tasks}
    rows, seed_rows, per_seed, comparisons = [], [], [], {}
    for t, by_method in results.items():
        m1 = _metric(run, t)
        size = sizing(run, t)
        for method, runs in by_method.items():
            rows.append({**_main_row(run, t, method, runs, paper), "sizing": size})
            if method in SEEDED:
                for s, r in zip(run.dpo_seeds(t), runs):
                    seed_rows.append({"task": t, "method": method, "seed": s, **report.result_row(r, [m1]),
                                      "metric": m1})
        comparisons[t] = {f"{a} vs {b}": {**report.paired_comparison(by_method[a], by_method[b], seed=run.cfg.seed),
                                          "a": a, "b": b}
                          for a, b in MAIN_COMPARISONS}
        notes = [run.cowest(t, seed=s)[0].note for s in run.dpo_seeds(t)]
        if all(notes):  # DPO never ran: CoWest is standard refinement, whatever the answers say
            key = "CoWest vs Standard refinement"
            comparisons[t][key] = {**comparisons[t][key], "identical": True,
                                   "identical_reason": f"DPO did not run ({notes[0]})"}
            comparisons[t][key]["verdict"] = report.verdict(comparisons[t][key])
        for s, cow, rl in zip(run.dpo_seeds(t), by_method["CoWest"], by_method["RLWF"]):
            for other, res in (("Standard refinement", by_method["Standard refinement"][0]), ("RLWF", rl)):
                c = report.paired_comparison(cow, res, seed=run.cfg.seed)
                per_seed.append({"task": t, "seed": s, "CoWest vs": other, "difference": 100 * c["bootstrap_diff"],
                                 "95% CI": f"[{100 * c['bootstrap_ci_low']:+.1f}, {100 * c['bootstrap_ci_high']:+.1f}]",
                                 "McNemar p": c["mcnemar_p_value"], "verdict": c["verdict"]})
    return MainTable(results, pd.DataFrame(rows), pd.DataFrame(seed_rows), comparisons, pd.DataFrame(per_seed))


# ----------------------------------------------------------------------------- ablations
@dataclass
class Ablation:
    """One ablation: its table, the Results behind each cell, and the verdicts of its ordering."""

    name: str
    frame: pd.DataFrame
    results: dict[tuple[Any, ...], Result] = field(default_factory=dict)
    orderings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> paired comparisons
    notes: list[str] = field(default_factory=list)


def _dpo_cmp(cmp: dict[str, Any], ckpt: Any) -> dict[str, Any]:
    """A comparison of an aligned model against its start: identical systems when DPO did not run."""
    if not ckpt.note:
        return cmp
    out = {**cmp, "identical": True, "identical_reason": f"DPO did not run ({ckpt.note})"}
    out["verdict"] = report.verdict(out)
    return out


@_frees_servers
def format_ablation(run: Pipeline) -> Ablation:
    """Draft formats (direct, knowledge, cot), each SFT only and aligned; paired tests of each
    format against the previous one (aligned) and of aligned against SFT in each format."""
    a, n = run.cfg.ablations, run.cfg.ablations.n_test
    out = Ablation("format", pd.DataFrame())
    rows, ckpts = [], {}
    for t in a.tasks:
        m1 = _metric(run, t)
        for fmt in a.formats:
            sft, cow = run.sft(t, fmt=fmt), run.cowest(t, fmt=fmt, n_queries=run.cfg.ablation_queries(t))[0]
            for stage_name, ck in (("SFT only", sft), ("CoWest (aligned)", cow)):
                res = run.evaluate("collab", t, ckpt=ck, n=n, label=f"fmt-{fmt}-{ck.tag}")
                out.results[t, fmt, stage_name] = res
                ckpts[t, fmt] = cow
                rows.append({"task": t, "format": fmt, "weak model": stage_name, **report.result_row(res, [m1]),
                             "metric": m1, "DPO ran": stage_name != "SFT only" and not ck.note})
        cmps = [{**report.paired_comparison(out.results[t, hi, "CoWest (aligned)"],
                                            out.results[t, lo, "CoWest (aligned)"], seed=run.cfg.seed),
                 "a": f"aligned {hi}", "b": f"aligned {lo}"} for lo, hi in zip(a.formats, a.formats[1:])]
        cmps += [{**_dpo_cmp(report.paired_comparison(out.results[t, fmt, "CoWest (aligned)"],
                                                      out.results[t, fmt, "SFT only"], seed=run.cfg.seed),
                             ckpts[t, fmt]), "a": f"aligned {fmt}", "b": f"SFT {fmt}"} for fmt in a.formats]
        out.orderings[t] = cmps
    out.frame = pd.DataFrame(rows)
    return out


@_frees_servers
def strong_ablation(run: Pipeline) -> Ablation:
    """Each strong model alone, with SFT drafts and with CoWest; CoWest with each strong model
    against CoWest with the previous one (the profile lists them from weaker to stronger)."""
    a, n = run.cfg.ablations, run.cfg.ablations.n_test
    out = Ablation("strong", pd.DataFrame())
    rows = []
    for t in a.tasks:
        m1 = _metric(run, t)
        sft = run.sft(t)
        for s in a.strong_models:
            cow = run.cowest(t, strong=s, n_queries=run.cfg.ablation_queries(t))[0]
            spec = run.cfg.strong_model(s)
            for method, res in (
                ("Strong alone", run.evaluate("strong", t, strong=s, n=n)),
                ("Standard refinement", run.evaluate("collab", t, ckpt=sft, strong=s, n=n, label="collab-sft")),
                ("CoWest", run.evaluate("collab", t, ckpt=cow, strong=s, n=n, label="cowest")),
            ):
                out.results[t, s, method] = res
                rows.append({"task": t, "strong model": s, "served model": spec.model + (
                                 f" (substitute for the paper's {spec.stands_in_for})" if spec.stands_in_for else ""),
                             "method": method, **report.result_row(res, [m1]), "metric": m1,
                             "DPO ran": not cow.note if method == "CoWest" else ""})
        out.orderings[t] = [{**report.paired_comparison(out.results[t, hi, "CoWest"], out.results[t, lo, "CoWest"],
                                                        seed=run.cfg.seed), "a": f"CoWest with {hi}",
                             "b": f"CoWest with {lo}"} for lo, hi in zip(a.strong_models, a.strong_models[1:])]
    out.frame = pd.DataFrame(rows)
    return out


@_frees_servers
def weak_ablation(run: Pipeline) -> Ablation:
    """Each weak model alone, with standard refinement and with CoWest; CoWest with the weak
    model that is better alone against CoWest with the other (paired, same items)."""
    a, n = run.cfg.ablations, run.cfg.ablations.n_test
    out = Ablation("weak", pd.DataFrame())
    rows = []
    for t in a.tasks:
        m1 = _metric(run, t)
        for wname in a.weak_models:
            w = run.cfg.weak_model(wname)
            sft, cow = run.sft(t, weak=w), run.cowest(t, weak=w, n_queries=run.cfg.ablation_queries(t))[0]
            for method, res in (
                ("Weak alone (SFT)", run.evaluate("weak", t, ckpt=sft, n=n, label="weak-sft")),
                ("Standard refinement", run.evaluate("collab", t, ckpt=sft, n=n, label="collab-sft")),
                ("CoWest", run.evaluate("collab", t, ckpt=cow, n=n, label="cowest")),
            ):
                out.results[t, wname, method] = res
                rows.append({"task": t, "weak model": wname, "method": method, **report.result_row(res, [m1]),
                             "metric": m1, "DPO ran": not cow.note if method == "CoWest" else ""})
        # "stronger" = better alone, as measured here
        ranked = sorted(a.weak_models, key=lambda w: out.results[t, w, "Weak alone (SFT)"].metrics[m1])
        out.orderings[t] = [{**report.paired_comparison(out.results[t, hi, "CoWest"], out.results[t, lo, "CoWest"],
                                                        seed=run.cfg.seed),
                             "a": f"CoWest with {hi} (better alone)", "b": f"CoWest with {lo}"}
                            for lo, hi in zip(ranked, ranked[1:])]
    out.frame = pd.DataFrame(rows)
    return out


@_frees_servers
def volume_ablation(run: Pipeline) -> Ablation:
    """CoWest trained on nested subsets of one mined pool (0 = SFT only); the largest volume
    against 0 pairs. A volume above the pool size is not trained again."""
    a, n = run.cfg.ablations, run.cfg.ablations.n_test
    out = Ablation("volume", pd.DataFrame())
    rows = []
    for t in a.tasks:
        m1 = _metric(run, t)
        sft = run.sft(t)
        available = len(run.preferences(sft)["pairs"])
        out.results[t, 0] = res = run.evaluate("collab", t, ckpt=sft, n=n, label="collab-sft")
        rows.append({"task": t, "pairs": 0, **report.result_row(res, [m1]), "metric": m1, "DPO ran": False})
        for v in a.volumes:
            used = min(v, available)
            if (t, used) in out.results:
                out.notes.append(f"{t}: no pairs were mined, so volume {v} is the SFT model" if used == 0 else
                                 f"{t}: volume {v} would use the same {used} pairs as a smaller volume (only "
                                 f"{available} were mined): not trained again")
                continue
            ck = run.cowest(t, volume=v)[0]
            out.results[t, used] = res = run.evaluate("collab", t, ckpt=ck, n=n, label=f"cowest-v{v}")
            rows.append({"task": t, "pairs": used, **report.result_row(res, [m1]), "metric": m1,
                         "DPO ran": not ck.note})
        vols = sorted(v for (task, v) in out.results if task == t)
        out.orderings[t] = []  # "not measured" unless a volume above 0 was trained
        if len(vols) > 1:
            out.orderings[t] = [{**report.paired_comparison(out.results[t, vols[-1]], out.results[t, 0],
                                                            seed=run.cfg.seed),
                                 "a": f"{vols[-1]} pairs", "b": "0 pairs (SFT)"}]
    out.frame = pd.DataFrame(rows)
    return out


# ----------------------------------------------------------------------------- findings
def outcome(cmps: Sequence[dict[str, Any]]) -> str:
    """What a set of paired tests, each "a above b" by the paper, says together.

    "reproduced" when every one is "higher"; "not reproduced" when any is "lower" or
    when a pair is identical systems (nothing changed, so nothing can be ordered, and the
    paper's effect is absent); otherwise "not distinguishable".
    """
    if not cmps:
        return "not measured"
    verdicts = [report.verdict(c) for c in cmps]
    if all(v == "higher" for v in verdicts):
        return "reproduced"
    if any(v in ("lower", "identical systems") for v in verdicts):
        return "not reproduced"
    return "not distinguishable"


def _numbers(c: dict[str, Any]) -> str:
    return (f"{c['a']} vs {c['b']}: {100 * c['bootstrap_diff']:+.1f} points "
            f"[{100 * c['bootstrap_ci_low']:+.1f}, {100 * c['bootstrap_ci_high']:+.1f}] ({report.verdict(c)})")


NOT_MEASURED = "not measured: the profile compares fewer than two variants here"


def reason(cmps: Sequence[dict[str, Any]], premise: str | None, reproduced: bool = False) -> str:
    """A computed likely reason for an outcome that is not "reproduced"; for one that is, only the
    failed premise, which a reproduced ordering must carry too (it cannot show the mechanism)."""
    if not cmps:  # an ablation with one variant: nothing was compared, whatever the premise
        return NOT_MEASURED
    if reproduced:
        return ("the division-of-labour premise failed (notebook 03), so this ordering does not show "
                "the mechanism the paper describes") if premise else ""
    out = []
    if premise:
        out.append("the division-of-labour premise failed (notebook 03)")
    for c in cmps:
        v = report.verdict(c)
        if v == "identical systems":
            out.append(c.get("identical_reason") or
                       f"{c['a']} and {c['b']} give the same answer on {c['same answer %']:.0f}% of the items")
        elif v == "not distinguishable" and report.tests_disagree(c):
            out.append(f"{c['a']} vs {c['b']}: {report.disagreement(c)}")
        elif v == "not distinguishable":
            dd = 100 * report.detectable_difference(c["paired items"], max(c["discordant %"] / 100, 0.05))
            out.append(f"{c['a']} vs {c['b']}: {abs(100 * c['bootstrap_diff']):.1f} points apart, and "
                       f"{c['paired items']} items detect about {dd:.0f}")
        elif v == "lower":
            out.append(f"{c['a']} is below {c['b']}: the opposite of the paper")
    return "; ".join(out)


def findings(run: Pipeline, main: MainTable, fmt: Ablation | None = None, strong: Ablation | None = None,
             weak: Ablation | None = None, volume: Ablation | None = None) -> pd.DataFrame:
    """Each of the paper's findings, per task: reproduced / not reproduced / not distinguishable."""
    rows = []
    sizes = dict(zip(main.frame["task"], main.frame["sizing"])) if "sizing" in main.frame else {}

    def add(finding: str, paper: str, task: str, cmps: list[dict[str, Any]], size: str | None = None) -> None:
        res = outcome(cmps)
        size = sizes.get(task, "") if size is None else size
        rows.append({"finding": finding, "paper": paper, "task": task, "sizing": size, "ours": res,
                     "numbers": "; ".join(_numbers(c) for c in cmps),
                     "likely reason": reason(cmps, run.premise([task]), res == "reproduced")})

    for t, cmp in main.comparisons.items():
        add("collaboration beats each model alone", "CoWest above the weak and the strong model alone", t,
            [cmp["CoWest vs Weak (SFT)"], cmp["CoWest vs Strong (CoT)"]])
        add("alignment adds over standard refinement", "CoWest above standard refinement", t,
            [cmp["CoWest vs Standard refinement"]])
        add("collaborative feedback beats single-model feedback", "CoWest above RLWF", t, [cmp["CoWest vs RLWF"]])
    for abl, finding, paper in (
        (fmt, "draft format ordering", "direct < knowledge < chain of thought (aligned)"),
        (strong, "strong-model ordering", "a stronger strong model gives a better CoWest"),
        (weak, "weak-model ordering", "a stronger weak model gives a better CoWest"),
        (volume, "preference-volume trend", "more preference pairs give a better CoWest"),
    ):
        if abl is None:
            continue
        for t, cmps in abl.orderings.items():
            if abl.name == "format":  # the ranking only; aligned vs SFT per format is the alignment finding
                cmps = [c for c in cmps if not c["b"].startswith("SFT")]
            size = (f"ablation ({cmps[0]['paired items']} test items, 1 DPO seed)" if cmps
                    else "ablation (one variant in this profile)")
            add(finding, paper, t, cmps, size)
    return pd.DataFrame(rows)
