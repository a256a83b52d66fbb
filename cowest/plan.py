"""Dry run: the strong-model calls, tokens and cost a profile will spend, before spending.

The count mirrors what the notebooks run (one line per notebook stage). Token counts are
estimates (prompt lengths typical of each prompt template; completions at their
`max_tokens` cap, so cost is an upper bound); cached calls are not subtracted. Nothing here
touches the network, loads data or needs a key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from cowest.config import Profile, StrongSpec
from cowest.preferences import JUDGE_MAX_TOKENS

# typical prompt tokens per call kind (measured on the synthetic domains; real datasets with
# long MedMCQA stems or dialogue contexts run longer, hence the margin)
PROMPT_TOKENS = {"alone": 250, "refine": 350, "judge": 300, "flare": 450, "supericl": 700}
FLARE_RETRIEVAL_SHARE = 0.5  # share of items expected to trigger one retrieval (upper estimate)
# Wall seconds per uncached call of local llama.cpp servers on the 2-core CPU machines of this
# project. Qwen: two 1-thread servers with two calls in flight, measured in the first mini run
# (2026-11-27: synth_ifqa mining 832 s for 583 calls, 200 chain-of-thought answers 470 s;
# synth_med / synth_safety outputs are longer, ~3.5 s). The others: one 2-thread server
# (2026-11-26). Used only to print a time estimate.
LOCAL_SECONDS_PER_CALL = {"qwen2.5-coder-1.5b": 1.8, "qwen2.5-coder-0.5b": 0.9, "smollm2-135m": 1.2,
                          "gemma3-270m": 1.2}


@dataclass
class Line:
    notebook: str
    what: str
    model: StrongSpec
    calls: int
    kind: str

    @property
    def prompt_tokens(self) -> int:
        return self.calls * PROMPT_TOKENS[self.kind]

    @property
    def completion_tokens(self) -> int:
        return self.calls * (JUDGE_MAX_TOKENS if self.kind == "judge" else self.model.max_tokens)

    @property
    def cost(self) -> float:
        m = self.model
        return (self.prompt_tokens * m.price_in_per_mtok + self.completion_tokens * m.price_out_per_mtok) / 1e6


def answer_pass_bound(lines: Sequence[Line]) -> tuple[int, float]:
    """The most answer-pass calls (`cowest.collaborate`) the planned calls can add, and their
    cost: one per call whose output could lack its answer line (cut by the limit, or ended without it), each
    sending that call's prompt and output again and getting `answer_tokens` back. Most
    outputs end in time, so this is far above what a run sends; it is kept apart from the
    totals, which count the planned calls."""
    calls, cost = 0, 0.0
    for ln in lines:
        m = ln.model
        if ln.kind == "judge" or not m.answer_tokens:
            continue
        calls += ln.calls
        cost += ln.calls * ((PROMPT_TOKENS[ln.kind] + m.max_tokens + 60) * m.price_in_per_mtok
                            + m.answer_tokens * m.price_out_per_mtok) / 1e6
    return calls, cost


def plan(p: Profile) -> list[Line]:
    c, a = p.collab, p.ablations
    lines: list[Line] = []
    add = lambda nb, what, m, n, kind: lines.append(Line(nb, what, m, n, kind))  # noqa: E731
    mine_judge = c.evaluator == "llm_judge"
    for t in p.tasks:
        s = p.strong_for(t.name)
        q = p.n_queries(t.name)
        judge = p.strong_model(c.judge) if c.judge else s
        add("03", f"{t.name}: strong alone on mined queries", s, q, "alone")
        add("03", f"{t.name}: refinements of k={c.k} drafts", s, q * c.k, "refine")
        if mine_judge:
            add("03", f"{t.name}: judge scores (CoWest + RLWF)", judge, q * (1 + 2 * c.k), "judge")
        n = t.n_test
        add("05", f"{t.name}: strong alone (CoT)", s, n, "alone")
        seeds = p.n_dpo_seeds(t.name)
        add("05", f"{t.name}: refinement of SFT drafts, and of RLWF / CoWest drafts x {seeds} DPO seed(s)", s,
            (1 + 2 * seeds) * n, "refine")
        fl = p.baselines.flare
        nb = min(n, p.baselines.n_test or n)  # FLARE and SuperICL's test items
        retrievals = int(nb * FLARE_RETRIEVAL_SHARE * fl.max_steps)
        add("05", f"{t.name}: FLARE look-ahead passes (log-probabilities)", s, nb + retrievals, "flare")
        if fl.lookahead_tokens is not None:  # the answer is written by the fast server (no retrieval: cached)
            add("05", f"{t.name}: FLARE answers after retrieval", s, int(nb * FLARE_RETRIEVAL_SHARE), "flare")
        add("05", f"{t.name}: SuperICL", s, nb, "supericl")
    for t in a.tasks:
        s = p.strong_for(t)
        fewer = p.ablation_queries(t)  # None: the ablations mine all of the task's queries
        q = fewer or p.n_queries(t)
        judge = p.strong_model(c.judge) if c.judge else s
        n = a.n_test
        others = [f for f in a.formats if f != c.format]
        if fewer:  # the main system mined again on the ablations' fewer queries
            add("06", f"{t}: mining the main system on the ablations' {q} queries", s, q * (1 + c.k), "refine")
        add("06", f"{t}: {len(others)} more formats, mining", s, len(others) * q * c.k, "refine")
        add("06", f"{t}: formats x (SFT, CoWest) refinement", s, 2 * len(a.formats) * n, "refine")
        for name in a.strong_models:
            m = p.strong_model(name)
            if m.name == s.name:
                continue
            add("07", f"{t}: {name} mining", m, q * (1 + c.k), "refine")
            add("07", f"{t}: {name} alone / SFT / CoWest", m, 3 * n, "refine")
        for name in a.weak_models:
            if name == p.weak.name:
                continue
            add("08", f"{t}: {name} mining + collaboration", s, q * c.k + n, "refine")
        add("09", f"{t}: {len(a.volumes)} preference volumes", s, len(a.volumes) * n, "refine")
        add("10", f"{t}: rounds 2..{a.rounds}", s, max(0, a.rounds - 1) * (q * c.k + n), "refine")
        for ev in a.evaluators:
            if ev != c.evaluator and ev == "llm_judge":
                add("10", f"{t}: llm_judge mining", judge, q * (1 + c.k), "judge")
                add("10", f"{t}: CoWest(judge) collaboration", s, n, "refine")
    return lines


# ----------------------------------------------------------------------- GPU training time
# Seconds per optimizer step of 4-bit QLoRA on one GPU, measured by benchmarks/gpu_check.sh
# (results/benchmarks/gpu_check.json, an H200, Llama-3-8B architecture, the paper profile's
# LoRA and batch: SFT 8 x 2 rows of ~630 tokens, DPO 4 x 4 pairs of ~630 tokens per side).
# Other weak models scale by parameter count (an estimate, not a measurement).
GPU_STEP_SECONDS = {"sft": 1.76, "dpo": 4.78}
GPU_MEASURED_BILLIONS = 8.0


# Seconds per optimizer step on this project's 2-core CPU machines, SmolLM2-135M with LoRA on
# every linear layer (benchmarks/suite.py, results/benchmarks/README.md, 2026-11-27: SFT batch 8
# x ~110 tokens, 5.96 s float32 / 4.60 s 4-bit; DPO batch 4 pairs, 5.27 s). Other offline weak
# models scale by parameter count. Used only to print an estimate.
CPU_STEP_SECONDS = {("sft", "none"): 5.96, ("sft", "4bit"): 4.60, ("dpo", "none"): 5.27, ("dpo", "4bit"): 5.26}
CPU_MEASURED_BILLIONS = 0.135


@dataclass
class TrainLine:
    notebook: str
    what: str
    weak: Any
    kind: str  # "sft" or "dpo"
    rows: int  # training rows (SFT) or pairs (DPO), per epoch

    @property
    def steps(self) -> int:
        spec = self.weak.sft if self.kind == "sft" else self.weak.dpo
        return math.ceil(self.rows * spec.epochs / (spec.batch_size * spec.grad_accum))

    @property
    def cpu_minutes(self) -> float:
        from cowest.preflight import _billions

        m = re.search(r"(\d+)m\b", self.weak.model.lower())
        billions = _billions(self.weak.model) or (int(m.group(1)) / 1000 if m else CPU_MEASURED_BILLIONS)
        scale = billions / CPU_MEASURED_BILLIONS
        return self.steps * CPU_STEP_SECONDS[self.kind, self.weak.quantization] * scale / 60

    @property
    def gpu_hours(self) -> float:
        from cowest.preflight import _billions

        scale = (_billions(self.weak.model) or GPU_MEASURED_BILLIONS) / GPU_MEASURED_BILLIONS
        return self.steps * GPU_STEP_SECONDS[self.kind] * scale / 3600


def _offline() -> set[str]:
    from cowest.assets import ASSETS

    return set(ASSETS)


def training_plan(p: Profile) -> list[TrainLine]:
    """The SFT and DPO runs a profile's notebooks train, with their sizes (pairs at the
    mining cap: n_queries x max_pairs_per_query, an upper bound)."""
    c, a = p.collab, p.ablations
    out: list[TrainLine] = []
    for t in p.tasks:
        pairs = p.n_queries(t.name) * c.max_pairs_per_query
        seeds = p.n_dpo_seeds(t.name)
        out.append(TrainLine("02", f"{t.name}: SFT", p.weak, "sft", t.n_train))
        out.append(TrainLine("04", f"{t.name}: DPO (CoWest, RLWF) x {seeds} seed(s)", p.weak, "dpo",
                             2 * seeds * pairs))
    for name in a.tasks:
        t = p.task(name)
        fewer = p.ablation_queries(name)  # None: the ablations mine all of the task's queries
        pairs = (fewer or p.n_queries(name)) * c.max_pairs_per_query
        pool = p.n_queries(name) * c.max_pairs_per_query  # the volume ablation subsets the main pool
        others = [f for f in a.formats if f != c.format]
        dpo_formats = len(others) + (fewer is not None)  # the main format again, on the fewer queries
        out.append(TrainLine("06", f"{name}: SFT + DPO in {len(others)} more formats", p.weak, "sft",
                             len(others) * t.n_train))
        out.append(TrainLine("06", f"{name}: DPO in {dpo_formats} more formats"
                             + (" (the main one on the ablations' queries too)" if fewer else ""),
                             p.weak, "dpo", dpo_formats * pairs))
        out.append(TrainLine("07", f"{name}: DPO with {len(a.strong_models) - 1} other strong models", p.weak, "dpo",
                             max(0, len(a.strong_models) - 1) * pairs))
        for wname in a.weak_models:
            if wname != p.weak.name:
                w = p.weak_model(wname)
                out.append(TrainLine("08", f"{name}: {wname} SFT", w, "sft", t.n_train))
                out.append(TrainLine("08", f"{name}: {wname} DPO", w, "dpo", pairs))
        out.append(TrainLine("09", f"{name}: DPO at volumes {a.volumes}", p.weak, "dpo", sum(min(v, pool) for v in a.volumes)))
        out.append(TrainLine("10", f"{name}: rounds 2..{a.rounds} and the other evaluator", p.weak, "dpo",
                             (max(0, a.rounds - 1) + len(a.evaluators) - 1) * pairs))
    return out


def _by_notebook(items: Sequence[Any], value: Any) -> dict[str, float]:
    """``value(item)`` summed per notebook."""
    out: dict[str, float] = {}
    for it in items:
        out[it.notebook] = out.get(it.notebook, 0.0) + value(it)
    return out


def print_plan(p: Profile) -> None:
    lines = plan(p)
    print(f"Planned strong-model calls for profile {p.name!r} ({p.source}); nothing is sent.\n")
    print(f"{'nb':<3} {'model':<22} {'calls':>7} {'prompt tok':>11} {'compl. tok':>11} {'cost $':>9}  what")
    for ln in lines:
        print(f"{ln.notebook:<3} {ln.model.name:<22} {ln.calls:>7} {ln.prompt_tokens:>11} "
              f"{ln.completion_tokens:>11} {ln.cost:>9.2f}  {ln.what}")
    tot = sum(ln.calls for ln in lines)
    cost = sum(ln.cost for ln in lines)
    print(f"\ntotal: {tot} calls, {sum(ln.prompt_tokens for ln in lines)} prompt tokens, "
          f"{sum(ln.completion_tokens for ln in lines)} completion tokens (upper bound), ${cost:.2f} "
          f"(upper bound; cached calls cost nothing)")
    per_nb = _by_notebook(lines, lambda ln: ln.cost)
    print("by notebook: " + ", ".join(f"{nb} ${c:,.2f}" for nb, c in sorted(per_nb.items())))
    extra, extra_cost = answer_pass_bound(lines)
    if extra:
        print(f"plus at most {extra} answer-pass calls, ${extra_cost:.2f} (only for outputs cut by max_tokens before "
              "their answer line; most are not)")
    if p.ablations.tasks:
        print("notebook 05's findings compute the ablations' stages (listed under 06-10): on a first run their calls "
              "and training fall in 05, and 06-10 reuse them")
    local = [ln for ln in lines if ln.model.backend == "local"]
    if local:
        secs = sum(ln.calls * LOCAL_SECONDS_PER_CALL.get(ln.model.model, 3.0) for ln in local)
        print(f"estimated time of the local strong-model calls on 2 CPU cores: {secs / 60:.0f} minutes "
              "(before cache hits; training and weak-model generation come on top)")
    for m in p.strong_models:
        if m.backend == "api":
            print(f"  {m.name}: {m.base_url}, key from ${m.api_key_env or '(none)'}")
    if p.budget_usd is not None:
        print(f"budget cap: ${p.budget_usd:.2f} ({'within' if cost <= p.budget_usd else 'ABOVE'} the cap)")
    if all(w.model in _offline() for w in p.weak_models):
        train = training_plan(p)
        print("\nCPU training (2 cores; from step times measured by benchmarks/suite.py, scaled by parameter "
              "count; pairs at the mining cap, an upper bound):")
        by_nb_cpu = _by_notebook(train, lambda t: t.cpu_minutes)
        print("  " + ", ".join(f"notebook {nb} {m:.0f} min" for nb, m in sorted(by_nb_cpu.items()))
              + f"; total {sum(by_nb_cpu.values()):.0f} min")
    if any(w.quantization == "4bit" and w.model not in _offline() for w in p.weak_models):
        train = training_plan(p)
        print("\nGPU training (4-bit QLoRA, one GPU; from step times measured on an H200 by benchmarks/gpu_check.sh, "
              "scaled by parameter count; drafting and evaluation come on top):")
        by_nb = _by_notebook(train, lambda t: t.gpu_hours)
        for nb, h in sorted(by_nb.items()):
            print(f"  notebook {nb}: {h:5.1f} GPU-hours")
        print(f"  total: {sum(by_nb.values()):.1f} GPU-hours")
