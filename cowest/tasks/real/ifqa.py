"""The ifqa task: IfQA, open-domain questions with a counterfactual "if" presupposition.

ifqa (`jeggers/ifqa`, or the official files from allenai.org/data/ifqa)
    question <- "question" (or "query"/"input"); golds <- "answer"/"answers" (a string,
    a list of aliases, a dict with "text"/"aliases"/"answer", or a list of such dicts),
    first alias = canonical answer; knowledge and rationale <- the supporting
    "passage"/"context"/"evidence" when present (trimmed to `max_rationale_words`),
    else empty (targets then use "The answer is X."). Source splits train /
    validation (dev) / test; with no validation split, `val_size` items held out of
    train (seeded by `split_seed`) serve as validation.
    corpus(): the training passages, or "question answer" pairs when there are none.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ..base import Example, TaskInfo, register
from .common import RealTask, make_id
from .text import first_field, listify


def _aliases(value: Any) -> list[str]:
    """Answer aliases from a string, a list, a dict or a list of dicts."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, str):
            parsed = listify(v) if v.strip().startswith("[") else [v]
            for s in parsed:
                if isinstance(s, str):
                    if s.strip():
                        out.append(s.strip())
                else:
                    walk(s)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(str(v))
        elif isinstance(v, Mapping):
            for key in ("text", "answer", "value", "aliases", "answers", "normalized_aliases"):
                if key in v:
                    walk(v[key])
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(value)
    return list(dict.fromkeys(out))


@register("ifqa")
class IfQA(RealTask):
    hub_default = "jeggers/ifqa"
    title = "IfQA"
    homepage = "https://allenai.org/data/ifqa"
    defaults: ClassVar[dict[str, Any]] = dict(RealTask.common_defaults)

    def __init__(self, **params: Any) -> None:
        self.info = TaskInfo(
            name="ifqa", answer_type="free", labels=None, metrics=("em", "f1"),
            description="Open-domain questions with a counterfactual 'if' presupposition; "
                        "short free-form answers scored by EM and token F1.",
        )
        super().__init__(**params)

    def convert(self, rec: dict[str, Any], split: str, index: int) -> Example | None:
        question = first_field(rec, ("question", "query", "input", "q"))
        golds = _aliases(first_field(rec, ("answer", "answers", "gold", "golds", "target",
                                            "targets", "output", "label")))
        if not question or not golds:
            return None
        passage = first_field(rec, ("passage", "context", "evidence", "paragraph",
                                     "explanation", "support"))
        if isinstance(passage, (list, tuple)):
            passage = " ".join(str(p) for p in passage)
        passage = self._trim(str(passage)) if passage else ""
        return Example(make_id(rec, "ifqa", split, index), " ".join(str(question).split()),
                       golds, rationale=passage, knowledge=passage,
                       meta={"source_index": index})

    def corpus(self) -> list[str]:
        docs = []
        for ex in self.load("train"):
            docs.append(ex.knowledge or f"{ex.question} {ex.golds[0]}")
        return list(dict.fromkeys(docs))
