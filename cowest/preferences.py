"""Preferences mined from the collaboration: evaluators, the delta rule, pairing.

For a training query x with standalone answer z = strong(x), weak drafts y_1..y_k and
refinements y*_i = strong(x, y_i), an evaluator E scores final outputs and

    delta_i = E(y*_i, x) - E(z, x);   y_i is a positive draft iff delta_i > 0

(ties and losses are negatives, as in the paper). Positives and negatives of the same
query are paired into (x, y_plus, y_minus) triples for DPO.

Choices the paper leaves open, made here (and configurable in the profile's `collab`):
- Scale: both evaluators score on 0-10. `gold`: 7 points for agreement with the gold
  answer (the task's per-item metric: EM for free-form, correctness for choice/label)
  plus 3 points for a well-formed output (some reasoning before a parseable final
  "Answer:" line). `llm_judge`: the judge model grades with the rubric in
  `prompts/judge.txt` (7 agreement + 3 coherence) and the score is parsed from "Score: N".
- Pairing: `all` pairs every positive with every negative of the query (shuffled with the
  seed, capped at `max_pairs_per_query`); `extremes` pairs them rank by rank, the best
  positive with the worst negative first. Identical draft texts are never paired.
- RLWF (our definition of the paper's baseline): single-model feedback, the evaluator
  scores the weak drafts themselves, no refinement; a draft is preferred over another
  draft of the same query when its own score is higher (ties give no pair).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from cowest import prompts
from cowest.client import StrongClient
from cowest.tasks.base import Example, Task

MAX_SCORE = 10.0
JUDGE_MAX_TOKENS = 12  # "Score: N" and nothing else


class Evaluator(Protocol):
    name: str

    def score(self, task: Task, examples: Sequence[Example], responses: Sequence[str], *,
              stage: str) -> list[float | None]:
        """One score in [0, 10] per (example, response); None where scoring itself failed."""
        ...


def well_formed(task: Task, response: str, ex: Example) -> bool:
    """Some reasoning text before a final answer that can be parsed."""
    if task.extract(response, ex) is None:
        return False
    body = re.split(r"(?im)^\s*(final\s+)?answer\s*:", response)[0]
    return len(body.strip()) >= 10


@dataclass
class GoldEvaluator:
    """Agreement with the gold answer (task metric) plus a well-formedness check."""

    name: str = "gold"

    def score(self, task: Task, examples: Sequence[Example], responses: Sequence[str], *, stage: str = "") -> list[float]:
        out = []
        for ex, r in zip(examples, responses, strict=True):
            agree = task.score(task.extract(r, ex), ex)
            out.append(7.0 * agree + 3.0 * float(well_formed(task, r, ex)))
        return out


_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.I)


def parse_judge_score(text: str) -> float | None:
    """The last "Score: N" in a judge reply, clipped to [0, 10]; None when absent."""
    found = _SCORE.findall(text or "")
    if not found:
        bare = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\.?\s*", text or "")
        if not bare:
            return None
        found = [bare.group(1)]
    return max(0.0, min(MAX_SCORE, float(found[-1])))


@dataclass
class LLMJudge:
    """An LLM grades each response with a rubric (the paper uses the strong model itself)."""

    client: StrongClient
    name: str = "llm_judge"
    unparsed: int = field(default=0, init=False)  # replies without a score (scored 0)

    def prompt(self, task: Task, ex: Example, response: str) -> str:
        return prompts.render(
            "judge", question=task.render_question(ex), gold=task.answer_text(ex), response=response.strip()
        )

    def score(self, task: Task, examples: Sequence[Example], responses: Sequence[str], *,
              stage: str) -> list[float | None]:
        """Rubric scores; None where the judge's call failed (never a 0 that would read as wrong)."""
        replies = self.client.complete_many(
            [self.prompt(task, e, r) for e, r in zip(examples, responses, strict=True)],
            stage=stage,
            desc=f"{stage}: judge",
            max_tokens=JUDGE_MAX_TOKENS,
            temperature=0.0,
        )
        scores: list[float | None] = []
        for c in replies:
            if c.error is not None:
                scores.append(None)
                continue
            s = parse_judge_score(c.text)
            if s is None:
                self.unparsed += 1
                s = 0.0
            scores.append(s)
        return scores


# ----------------------------------------------------------------------------- the rule
def is_positive(delta: float) -> bool:
    """The paper's rule: the draft helped iff the collaboration beat the strong model alone."""
    return delta > 0


@dataclass(frozen=True)
class Pair:
    query_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def make_pairs(
    query_id: str,
    prompt: str,
    drafts: Sequence[str],
    deltas: Sequence[float],
    *,
    pairing: str,
    max_pairs: int,
    seed: int,
) -> list[Pair]:
    """Pairs (positive, negative) drafts of one query by the delta rule.

    A query whose drafts are all positive or all negative gives no pair.
    """
    if len(drafts) != len(deltas):
        raise ValueError("one delta per draft")
    pos = [(d, s) for d, s in zip(drafts, deltas) if is_positive(s)]
    neg = [(d, s) for d, s in zip(drafts, deltas) if not is_positive(s)]
    return _pair(query_id, prompt, pos, neg, pairing=pairing, max_pairs=max_pairs, seed=seed)


def make_single_feedback_pairs(
    query_id: str,
    prompt: str,
    drafts: Sequence[str],
    scores: Sequence[float],
    *,
    pairing: str,
    max_pairs: int,
    seed: int,
) -> list[Pair]:
    """RLWF: pairs drafts by their own scores; a higher-scored draft beats a lower one."""
    if len(drafts) != len(scores):
        raise ValueError("one score per draft")
    if not drafts or max(scores) == min(scores):
        return []
    top = max(scores)
    pos = [(d, s) for d, s in zip(drafts, scores) if s == top]
    neg = [(d, s) for d, s in zip(drafts, scores) if s < top]
    return _pair(query_id, prompt, pos, neg, pairing=pairing, max_pairs=max_pairs, seed=seed)


def _pair(
    query_id: str,
    prompt: str,
    pos: list[tuple[str, float]],
    neg: list[tuple[str, float]],
    *,
    pairing: str,
    max_pairs: int,
    seed: int,
) -> list[Pair]:
    if pairing == "all":
        combos = [(p, n) for p in pos for n in neg]
        random.Random(f"{seed}:{query_id}").shuffle(combos)
    elif pairing == "extremes":
        ps = sorted(pos, key=lambda t: -t[1])
        ns = sorted(neg, key=lambda t: t[1])
        combos = list(zip(ps, ns))
    else:
        raise ValueError(f"unknown pairing {pairing!r} (use 'all' or 'extremes')")
    out: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for (pd, ps_), (nd, ns_) in combos:
        if pd.strip() == nd.strip() or (pd, nd) in seen:
            continue
        seen.add((pd, nd))
        out.append(Pair(query_id, prompt, pd, nd, ps_, ns_))
        if len(out) >= max_pairs:
            break
    return out


def summarize(records: Sequence[dict[str, Any]], pairs: Sequence[Pair]) -> dict[str, Any]:
    """Share of positive drafts, pairs per query, the delta distribution."""
    deltas = [d for r in records for d in r["deltas"] if d is not None]
    n_q = len(records)
    with_pairs = len({p.query_id for p in pairs})
    scored = [[d for d in r["deltas"] if d is not None] for r in records]
    only_pos = sum(1 for ds in scored if ds and all(is_positive(d) for d in ds))
    only_neg = sum(1 for ds in scored if ds and not any(is_positive(d) for d in ds))
    return {
        "queries": n_q,
        "drafts": len(deltas),
        "positive_share": (sum(is_positive(d) for d in deltas) / len(deltas)) if deltas else 0.0,
        "pairs": len(pairs),
        "queries_with_pairs": with_pairs,
        "queries_only_positive": only_pos,
        "queries_only_negative": only_neg,
        "pairs_per_query": len(pairs) / n_q if n_q else 0.0,
        "delta_mean": sum(deltas) / len(deltas) if deltas else 0.0,
    }


def compare_pair_sets(task: Task, examples: Sequence[Example], collab: Sequence[dict[str, Any]],
                      single: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How CoWest's pairs (collaborative feedback) and RLWF's (single-model feedback) differ.

    ``collab`` / ``single``: the pairs of `Pipeline.preferences` (dicts with query_id,
    chosen, rejected), mined from the same drafts; ``examples`` the mined queries. Returns the
    overlap (pairs with the same query, chosen and rejected draft; and pairs that one set
    orders the other way round), and for each set the share (%) of chosen and of rejected
    drafts that state the item's fact (`Task.states_fact`; NaN where the task can't tell).
    The miniature is built so that the two rules disagree: the delta rule should prefer
    drafts that state the fact, the single-model rule drafts whose own answer is right.
    """
    by_id = {e.id: e for e in examples}
    key = lambda p: (p["query_id"], p["chosen"].strip(), p["rejected"].strip())  # noqa: E731
    a, b = {key(p) for p in collab}, {key(p) for p in single}
    flipped = {(q, r, c) for q, c, r in b}

    def fact_share(pairs: Sequence[dict[str, Any]], side: str) -> float:
        told = [task.states_fact(p[side], by_id[p["query_id"]]) for p in pairs if p["query_id"] in by_id]
        if not told or any(t is None for t in told):
            return float("nan")
        return 100.0 * sum(bool(t) for t in told) / len(told)

    return {"CoWest pairs": len(a), "RLWF pairs": len(b), "in both": len(a & b),
            "ordered oppositely": len(a & flipped),
            "CoWest chosen state the fact %": fact_share(collab, "chosen"),
            "CoWest rejected state the fact %": fact_share(collab, "rejected"),
            "RLWF chosen state the fact %": fact_share(single, "chosen"),
            "RLWF rejected state the fact %": fact_share(single, "rejected")}


# ----------------------------------------------------------------------------- mining
def _score_completions(evaluator: Evaluator, task: Task, examples: Sequence[Example], replies: Sequence[Any],
                       stage: str) -> list[float | None]:
    """Scores of strong-model replies; None for a failed reply (a failure is never a wrong answer)."""
    ok = [i for i, c in enumerate(replies) if c.error is None]  # a blank answer is the model's: it is scored
    scores = evaluator.score(task, [examples[i] for i in ok], [replies[i].text for i in ok], stage=stage)
    out: list[float | None] = [None] * len(replies)
    for i, sc in zip(ok, scores):
        out[i] = sc
    return out


def mine(
    task: Task,
    queries: Sequence[Example],
    drafts: Sequence[Sequence[str]],
    weak_prompts: Sequence[str],
    evaluator: Evaluator,
    *,
    collaborator: Any | None,
    pairing: str,
    max_pairs: int,
    seed: int,
    stage: str,
) -> tuple[list[dict[str, Any]], list[Pair], dict[str, Any]]:
    """Preference mining over k drafts per query: ``(records, pairs, stats)``.

    With a ``collaborator`` (a `cowest.collaborate.Collaborator`) this is CoWest: each
    draft is refined by the strong model and scored against the strong model's standalone
    answer (the delta rule). Without one it is RLWF: the drafts are scored on their own and
    no strong-model call is made. A failed strong-model or judge reply gives no score
    (``None``): its draft, or its whole query when the standalone answer failed, is left out
    of pairing, and ``stats["failed"]`` counts them (the pipeline then leaves the stage
    unfinished, so a rerun asks again for exactly those replies).
    """
    flat_ex = [e for e, ds in zip(queries, drafts) for _ in ds]
    flat_d = [d for ds in drafts for d in ds]
    failed = 0
    if collaborator is not None:
        alone_c = collaborator.alone(queries, stage=stage)
        refined_c = collaborator.refine(flat_ex, flat_d, stage=stage)
        alone, refined = [c.text for c in alone_c], [c.text for c in refined_c]
        z_scores = _score_completions(evaluator, task, queries, alone_c, stage)
        r_scores = _score_completions(evaluator, task, flat_ex, refined_c, stage)
    else:
        alone, refined, z_scores = [""] * len(queries), [""] * len(flat_d), [0.0] * len(queries)
        r_scores = list(evaluator.score(task, flat_ex, flat_d, stage=stage))
    records: list[dict[str, Any]] = []
    pairs: list[Pair] = []
    i = 0
    for e, ds, p, z, zs in zip(queries, drafts, weak_prompts, alone, z_scores):
        rs, ref = r_scores[i : i + len(ds)], refined[i : i + len(ds)]
        i += len(ds)
        if collaborator is not None:
            deltas = [None if r is None or zs is None else r - zs for r in rs]
        else:
            deltas = list(rs)  # RLWF: the drafts' own scores
        failed += (zs is None) + sum(r is None for r in rs)  # replies that failed, each once
        scored = [(d, x) for d, x in zip(ds, deltas) if x is not None]
        make = make_pairs if collaborator is not None else make_single_feedback_pairs
        qp = make(e.id, p, [d for d, _ in scored], [x for _, x in scored], pairing=pairing, max_pairs=max_pairs,
                  seed=seed) if scored else []
        pairs.extend(qp)
        records.append({"id": e.id, "gold": task.answer_text(e), "strong_alone": z, "alone_score": zs,
                        "drafts": list(ds), "refined": ref, "scores": rs, "deltas": deltas})
    if collaborator is not None:
        stats = summarize(records, pairs)
    else:
        stats = {"queries": len(records), "drafts": len(flat_d), "pairs": len(pairs),
                 "queries_with_pairs": len({q.query_id for q in pairs})}
    stats.update({"feedback": "collab" if collaborator is not None else "single", "evaluator": evaluator.name,
                  "judge_unparsed": getattr(evaluator, "unparsed", 0), "failed": failed})
    return records, pairs, stats
