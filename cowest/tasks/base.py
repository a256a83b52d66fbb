"""The task protocol, interaction formats and the task registry.

A task is one domain of the paper (counterfactual QA, medical multiple choice, dialogue
safety), either a real dataset loaded from the hub or a synthetic domain generated from a
seed. Everything downstream (training targets, prompts, answer extraction, scoring) asks
the task, so adding a domain means adding one module that registers a `Task`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence

from cowest import metrics
from cowest.tasks import extract as ex_

AnswerType = Literal["free", "choice", "label"]
Format = Literal["direct", "knowledge", "cot"]
FORMATS: tuple[Format, ...] = ("direct", "knowledge", "cot")
Split = Literal["train", "validation", "test"]
OPTION_LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Example:
    """One item of a task.

    `question` is the text shown to a model *without* the options; `options` holds the
    option texts in display order for multiple-choice tasks (letters A, B, ... are
    assigned by position). `golds` are the accepted answers: aliases for free-form
    answers, the gold option letter for choice tasks, the gold label for label tasks.
    `knowledge` is the domain fact(s) the answer needs and `rationale` a gold reasoning
    (fact plus general step); both feed the "knowledge" and "cot" SFT targets.
    """

    id: str
    question: str
    golds: list[str]
    rationale: str = ""
    knowledge: str = ""
    options: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    answer_type: AnswerType
    labels: list[str] | None  # option letters for choice tasks, label names for label tasks
    metrics: tuple[str, str]  # ("em", "f1") or ("accuracy", "macro_f1")
    description: str


TASKS: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator: `@register("synth_ifqa")` makes the task available by name."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = factory
        return factory

    return wrap


class DatasetUnavailable(RuntimeError):
    """A real dataset cannot be loaded (offline, no access, missing file).

    The message names the dataset, the hub id and how to make it available.
    """


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Task:
    """Base class of every task; subclasses set `info`, `defaults` and implement
    `load` and `corpus`.

    Construction takes the task's parameters as keywords; an unknown one is a ValueError
    naming it. `self.params` holds every parameter (defaults filled in).
    """

    info: TaskInfo
    defaults: ClassVar[dict[str, Any]] = {}
    #: the version of the code that makes this task's items from its parameters: bump it when
    #: the same parameters give other items, so that every stage built on the old items is
    #: rebuilt (the data stage is keyed by it; tests/test_tasks_synthetic.py pins each
    #: synthetic domain's items per version)
    generator_version: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.params: dict[str, Any] = {**self.defaults, **params}

    # ------------------------------------------------------------------ data
    def load(self, split: Split, n: int | None = None, seed: int = 0) -> list[Example]:
        """`n` examples of `split` (all when None), deterministic given `seed`."""
        raise NotImplementedError

    def corpus(self) -> list[str]:
        """Retrieval documents for the FLARE-style baseline."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A summary for the data notebook (subclasses add sizes)."""
        return {
            "name": self.info.name,
            "answer_type": self.info.answer_type,
            "labels": self.info.labels,
            "metrics": list(self.info.metrics),
            "params": dict(self.params),
        }

    @staticmethod
    def _check_split(split: str) -> None:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"split must be train, validation or test, not {split!r}")

    # ------------------------------------------------------------- rendering
    def render_question(self, ex: Example) -> str:
        """The question as models see it: options as "A) ..." lines for choice tasks,
        the allowed labels for label tasks."""
        if self.info.answer_type == "choice":
            opts = ex.options or []
            lines = [f"{OPTION_LETTERS[i]}) {o}" for i, o in enumerate(opts)]
            return "\n".join([ex.question, *lines])
        if self.info.answer_type == "label":
            return f"{ex.question}\nLabels: {', '.join(self.info.labels or [])}"
        return ex.question

    def answer_text(self, ex: Example) -> str:
        """Gold answer as written after "Answer:" (letter, label name or first alias)."""
        return ex.golds[0]

    def fallback_rationale(self, ex: Example) -> str:
        """Used by `target` when an example has no knowledge/rationale text."""
        if self.info.answer_type == "choice" and ex.options:
            idx = OPTION_LETTERS.index(ex.golds[0])
            return f"The correct option is {ex.options[idx]}."
        return f"The answer is {self.answer_text(ex)}."

    def target(self, ex: Example, fmt: Format) -> str:
        """SFT target of an interaction format; always ends with one "Answer: X" line.

        direct: "Answer: X"; knowledge: "Knowledge: <facts>\nAnswer: X";
        cot: "Reasoning: <rationale>\nAnswer: X". Knowledge falls back to the rationale
        and both fall back to `fallback_rationale` when empty.
        """
        answer = f"Answer: {self.answer_text(ex)}"
        if fmt == "direct":
            return answer
        if fmt == "knowledge":
            body = _one_line(ex.knowledge or ex.rationale) or self.fallback_rationale(ex)
            return f"Knowledge: {body}\n{answer}"
        if fmt == "cot":
            body = _one_line(ex.rationale or ex.knowledge) or self.fallback_rationale(ex)
            return f"Reasoning: {body}\n{answer}"
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")

    # ------------------------------------------- SFT data and the miniature's gates
    def sft_examples(self, train: list[Example]) -> list[Example]:
        """The items SFT trains on, given the training split (synthetic domains may add
        recall questions of their facts)."""
        return list(train)

    def recall_items(self, split: Split, per_fact: int | None = None) -> list[Example]:
        """Direct recall questions of the domain's facts; [] for a task without a fact base."""
        return []

    def with_facts(self, ex: Example) -> Example | None:
        """The item with its facts stated in the question; None without a knowledge text."""
        return None

    def wrong_step_draft(self, ex: Example) -> str | None:
        """A draft with the right fact and a wrong step; None when the task cannot make one."""
        return None

    def states_fact(self, text: str | None, ex: Example) -> bool | None:
        """Whether a draft states the item's domain fact; None when the task cannot tell."""
        return None

    # ------------------------------------------------------- scoring
    def extract(self, text: str | None, ex: Example | None = None) -> str | None:
        """Answer from model text (see `cowest.tasks.extract`); None if unparseable.

        Choice tasks need `ex` to match option contents; without it only letters are
        read.
        """
        kind = self.info.answer_type
        if kind == "free":
            return ex_.extract_free(text)
        if kind == "choice":
            options = ex.options if ex is not None else None
            return ex_.extract_choice(text, options)
        return ex_.extract_label(text, self.info.labels or [])

    def score(self, pred: str | None, ex: Example) -> float:
        """Primary per-example score: EM for free tasks, 1/0 correctness otherwise."""
        if pred is None:
            return 0.0
        if self.info.answer_type == "free":
            return metrics.exact_match(pred, ex.golds)
        if self.info.answer_type == "choice":
            return float(pred.strip().upper() == ex.golds[0])
        return float(pred.strip().lower() == ex.golds[0].lower())

    def score_f1(self, pred: str | None, ex: Example) -> float:
        """Token F1 for free tasks; the same as `score` for choice/label tasks."""
        if self.info.answer_type == "free":
            return metrics.token_f1(pred, ex.golds)
        return self.score(pred, ex)

    def _canonical(self, pred: str | None) -> str | None:
        """A prediction spelled like the labels (case-insensitive match), else as is."""
        if pred is None:
            return None
        for label in self.info.labels or []:
            if pred.strip().lower() == label.lower():
                return label
        return pred

    def evaluate(
        self, preds: Sequence[str | None], examples: Sequence[Example]
    ) -> dict[str, float]:
        """Both metrics of the task as fractions, plus "n" and "unparseable" (Nones)."""
        if len(preds) != len(examples):
            raise ValueError(f"{len(preds)} predictions for {len(examples)} examples")
        out: dict[str, float] = {}
        if self.info.answer_type == "free":
            out["em"] = _mean([self.score(p, e) for p, e in zip(preds, examples)])
            out["f1"] = _mean([self.score_f1(p, e) for p, e in zip(preds, examples)])
        else:
            golds = [e.golds[0] for e in examples]
            canon = [self._canonical(p) for p in preds]
            labels = list(self.info.labels or [])
            out["accuracy"] = metrics.accuracy(canon, golds) if golds else 0.0
            out["macro_f1"] = metrics.macro_f1(canon, golds, labels) if golds else 0.0
        out["n"] = len(examples)
        out["unparseable"] = sum(p is None for p in preds)
        return out

    def score_row(self, final_text: str | None, ex: Example) -> dict[str, Any]:
        """Per-item scoring of one model output, as stored in a predictions row.

        Returns {"pred": extracted answer or None, "gold": `answer_text(ex)`, "score":
        `score(pred, ex)`} plus "f1": `score_f1(pred, ex)` for free-form tasks.
        """
        pred = self.extract(final_text, ex)
        row: dict[str, Any] = {"pred": pred, "gold": self.answer_text(ex), "score": self.score(pred, ex)}
        if self.info.answer_type == "free":
            row["f1"] = self.score_f1(pred, ex)
        return row

    def evaluate_rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        examples: Sequence[Example],
        seed: int = 0,
        *,
        n_boot: int = 1000,
        alpha: float = 0.05,
    ) -> dict[str, float]:
        """`evaluate` of the rows' predictions plus a bootstrap interval of each metric.

        `rows` are the scored rows of `examples`, in the same order (each as made by
        `score_row`; an "id", where present, must equal the example's). Returns the
        `evaluate` dict (both metrics, "n", "unparseable") with "<metric>_lo" and
        "<metric>_hi" for both metrics of `info.metrics`; the interval of each metric is
        chosen by `metrics.metric_interval`.
        """
        if len(rows) != len(examples):
            raise ValueError(f"{len(rows)} rows for {len(examples)} examples")
        for i, (r, e) in enumerate(zip(rows, examples)):
            if "id" in r and r["id"] != e.id:
                raise ValueError(f"row {i} has id {r['id']!r} but example {i} is {e.id!r}")
        out = dict(self.evaluate([r["pred"] for r in rows], examples))
        for m in self.info.metrics:
            lo, hi = metrics.metric_interval(
                m, rows, labels=self.info.labels, n_boot=n_boot, alpha=alpha, seed=seed
            )
            out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
        return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
