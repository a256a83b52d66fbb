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
from cowest.strong import StrongClient
from cowest.tasks.base import Example, Task

MAX_SCORE = 10.0


class Evaluator(Protocol):
    name: str

    def score(self, task: Task, examples: Sequence[Example], responses: Sequence[str], *, stage: str) -> list[float]:
        """One score in [0, 10] per (example, response)."""
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

    def score(self, task: Task, examples: Sequence[Example], responses: Sequence[str], *, stage: str) -> list[float]:
        replies = self.client.complete_many(
            [self.prompt(task, e, r) for e, r in zip(examples, responses, strict=True)],
            stage=stage,
            desc=f"{stage}: judge",
            max_tokens=12,
            temperature=0.0,
        )
        scores = []
        for c in replies:
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
    pairing: str = "all",
    max_pairs: int = 4,
    seed: int = 0,
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
    pairing: str = "all",
    max_pairs: int = 4,
    seed: int = 0,
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
    deltas = [d for r in records for d in r["deltas"]]
    n_q = len(records)
    with_pairs = len({p.query_id for p in pairs})
    only_pos = sum(1 for r in records if r["deltas"] and all(is_positive(d) for d in r["deltas"]))
    only_neg = sum(1 for r in records if r["deltas"] and not any(is_positive(d) for d in r["deltas"]))
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
