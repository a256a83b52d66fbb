"""The division of labour the miniature needs, measured on validation items before mining.

CoWest's premise is that the weak model knows what the strong model does not (the domain's
facts, learned in fine-tuning) and the strong model does what the weak model cannot (the
general step: arithmetic, applying a rule, mapping a value to an option). Without both, the
paper's mechanism has nothing to work with, whatever the numbers say. Three gates check it:

``weak_knowledge``
    The SFT weak model answers direct recall questions about the facts, in wordings it
    never saw in training, correctly on at least ``GatesSpec.weak_knowledge`` of them.
``strong_skill``
    With the facts stated in the question, the strong model answers at least
    ``GatesSpec.strong_skill`` of the items, and the weak model at least
    ``GatesSpec.weak_gap`` fewer.
``draft_use``
    Given a draft that states the right fact and takes a wrong step, the strong model's
    refinement is right on at least ``GatesSpec.draft_use`` of the items.

Beside them, ``answer_lines``: no more than ``GatesSpec.max_no_answer`` of the strong
model's outputs lack a readable answer (an output cut before its answer line would count
as wrong for a reason that has nothing to do with the method).

This module is the arithmetic; `Pipeline.gate_rows` produces the model outputs (a cached
stage), notebook 03 shows them, and the runner records them in the manifest. A failed gate
does not stop a run: :func:`premise_note` gives the sentence every verdict then carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from cowest import metrics
from cowest.tasks import extract as ex_
from cowest.tasks.base import Example, Task

GATES = ("weak_knowledge", "strong_skill", "draft_use", "answer_lines")


@dataclass(frozen=True)
class GateResult:
    """One gate on one task: its measured share, the threshold, and whether it passed."""

    gate: str
    task: str
    value: float | None  # a share in [0, 1]; None when the task cannot measure it
    threshold: float
    passed: bool | None  # None: not applicable (e.g. a real dataset without a fact base)
    n: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self) -> dict[str, Any]:
        """The gate as a table row, in percent, with the bound's direction ("answer_lines"
        is an upper bound, every other gate a lower one)."""
        bound = "<=" if self.gate == "answer_lines" else ">="
        return {"gate": self.gate, "task": self.task,
                "value %": None if self.value is None else round(100 * self.value, 1),
                "needs": f"{bound} {100 * self.threshold:g}%", "passed": self.passed, "n": self.n,
                "detail": self.detail}


def _correct(task: Task, text: str | None, ex: Example) -> bool:
    pred = task.extract(text, ex)
    return pred is not None and task.score(pred, ex) >= 1.0


def _recall_correct(text: str | None, ex: Example) -> bool:
    # recall answers are free text whatever the task's answer type ("43", "frowned upon", "4 mg per kg")
    return metrics.exact_match(ex_.extract_free(text), ex.golds) >= 1.0


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags)


def _count(share: float, n: int) -> str:
    """"15/16 (94%)": a share with the count it comes from."""
    return f"{round(share * n)}/{n} ({100 * share:.0f}%)"


def _na(gate: str, task: Task, threshold: float, why: str) -> GateResult:
    return GateResult(gate, task.info.name, None, threshold, None, 0, why)


def weak_knowledge(task: Task, items: Sequence[Example], drafts: Sequence[str], threshold: float) -> GateResult:
    """Share of held-out recall questions the weak model answers right."""
    if not items:
        return _na("weak_knowledge", task, threshold, "no recall questions (the task has no fact base)")
    value = _share([_recall_correct(d, e) for d, e in zip(drafts, items, strict=True)])
    return GateResult("weak_knowledge", task.info.name, value, threshold, value >= threshold, len(items),
                      f"the weak model answers {_count(value, len(items))} recall questions right, in "
                      f"wordings it was not trained on (needs {100 * threshold:.0f}%)")


def strong_skill(task: Task, items: Sequence[Example], strong_texts: Sequence[str], weak_texts: Sequence[str],
                 threshold: float, gap: float) -> GateResult:
    """Strong and weak accuracy with the facts given; passes when the strong model clears
    ``threshold`` and the weak model trails it by at least ``gap``."""
    if not items:
        return _na("strong_skill", task, threshold, "no items with their facts stated")
    s = _share([_correct(task, t, e) for t, e in zip(strong_texts, items, strict=True)])
    w = _share([_correct(task, t, e) for t, e in zip(weak_texts, items, strict=True)])
    ok = s >= threshold and w <= s - gap
    return GateResult("strong_skill", task.info.name, s, threshold, ok, len(items),
                      f"with the facts given, the strong model is right on {_count(s, len(items))} (needs "
                      f"{100 * threshold:.0f}%) and the weak model on {_count(w, len(items))} (needs at most "
                      f"{100 * (s - gap):.0f}%, {100 * gap:.0f} points below the strong model)")


def draft_use(task: Task, items: Sequence[Example], refined: Sequence[str], threshold: float) -> GateResult:
    """Share of right-fact, wrong-step drafts whose refinement is right."""
    if not items:
        return _na("draft_use", task, threshold, "the task cannot make right-fact, wrong-step drafts")
    value = _share([_correct(task, t, e) for t, e in zip(refined, items, strict=True)])
    return GateResult("draft_use", task.info.name, value, threshold, value >= threshold, len(items),
                      f"the strong model fixes {_count(value, len(items))} drafts with the right fact and a "
                      f"wrong step (needs {100 * threshold:.0f}%)")


def answer_lines(task: Task, items: Sequence[Example], texts: Sequence[str], max_share: float) -> GateResult:
    """Share of strong outputs with no readable answer; passes at ``max_share`` or less."""
    if not items:
        return _na("answer_lines", task, max_share, "no strong outputs")
    value = _share([not ex_.has_answer_marker(t) or task.extract(t, e) is None
                    for t, e in zip(texts, items, strict=True)])
    return GateResult("answer_lines", task.info.name, value, max_share, value <= max_share, len(items),
                      f"strong-model outputs without a readable answer: {round(value * len(items))} of "
                      f"{len(items)} ({100 * value:.1f}%; at most {100 * max_share:.0f}%)")


def evaluate(task: Task, rows: dict[str, list[dict[str, Any]]], items: dict[str, list[Example]],
             spec: Any) -> list[GateResult]:
    """All four gates of one task from `Pipeline.gate_rows` output.

    ``rows``: ``recall`` ({id, draft}), ``fact_given`` ({id, strong, weak}) and ``draft_use``
    ({id, draft, final}); ``items`` the examples of each, in the same order. ``spec`` is the
    profile's ``GatesSpec``.
    """
    rec, given, use = rows["recall"], rows["fact_given"], rows["draft_use"]
    strong_outputs = [r["strong"] for r in given] + [r["final"] for r in use]
    return [
        weak_knowledge(task, items["recall"], [r["draft"] for r in rec], spec.weak_knowledge),
        strong_skill(task, items["fact_given"], [r["strong"] for r in given], [r["weak"] for r in given],
                     spec.strong_skill, spec.weak_gap),
        draft_use(task, items["draft_use"], [r["final"] for r in use], spec.draft_use),
        answer_lines(task, items["fact_given"] + items["draft_use"], strong_outputs, spec.max_no_answer),
    ]


def premise_note(results: Sequence[GateResult]) -> str | None:
    """None when every applicable gate passed; otherwise the sentence each verdict on the
    failing tasks carries (it names them: a task whose gates passed keeps its verdicts)."""
    failed = [r for r in results if r.passed is False]
    if not failed:
        return None
    tasks = list(dict.fromkeys(r.task for r in failed))
    parts = "; ".join(f"{r.task} {r.gate}: {r.detail}" for r in failed)
    which = "that task" if len(tasks) == 1 else "those tasks"
    return (f"The miniature's premise failed on {', '.join(tasks)} ({parts}), so no verdict on {which} "
            f"can show the paper's mechanism.")


DECISIVE = ("strong_skill", "draft_use")  # the gates that say whether a strong model can do the job


def passes_all(results: Sequence[GateResult]) -> bool:
    """Every applicable gate passed (a gate that is not applicable does not count)."""
    return all(r.passed for r in results if r.passed is not None)


def choose(by_candidate: dict[str, Sequence[GateResult]]) -> str | None:
    """The strong model the gates pick among candidates (in the profile's order, cheapest
    first): the first that passes every applicable gate. If none does, the closest: the most
    decisive gates passed (strong skill, draft use), then their summed values, then the most
    gates passed; the first on a tie (`passes_all` tells the two cases apart). None without
    candidates."""
    if not by_candidate:
        return None

    def closeness(rs: Sequence[GateResult]) -> tuple[int, float, int]:
        decisive = [r for r in rs if r.gate in DECISIVE and r.passed is not None]
        return (sum(bool(r.passed) for r in decisive), sum(r.value or 0.0 for r in decisive),
                sum(bool(r.passed) for r in rs if r.passed is not None))

    names = list(by_candidate)
    clean = [n for n in names if passes_all(by_candidate[n])]
    return clean[0] if clean else max(names, key=lambda n: (*closeness(by_candidate[n]), -names.index(n)))
