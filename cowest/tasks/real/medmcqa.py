"""The medmcqa task: MedMCQA, four-option medical entrance-exam questions.

medmcqa (`openlifescienceai/medmcqa`)
    question; options <- opa, opb, opc, opd (A-D, original order); gold <- cop (0-3 on
    the hub; the official JSON release uses 1-4: `cop_base="auto"` detects which from
    the file, or set 0/1); rationale <- exp trimmed to `max_rationale_words`, knowledge
    <- its first sentence. The public test labels are hidden, so test <- the source
    validation split, validation <- `val_size` items held out of train (seeded by
    `split_seed`), train <- the rest. Rows without a valid cop are skipped.
    corpus(): the explanations of our train split.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ..base import OPTION_LETTERS, Example, TaskInfo, register
from .common import RealTask, Rows, make_id
from .text import sentences, trim_words


def _first_sentence(text: str, max_words: int) -> str:
    parts = sentences(text)
    return trim_words(parts[0], max_words) if parts else ""


@register("medmcqa")
class MedMCQA(RealTask):
    hub_default = "openlifescienceai/medmcqa"
    title = "MedMCQA"
    homepage = "https://medmcqa.github.io"
    defaults: ClassVar[dict[str, Any]] = {**RealTask.common_defaults, "cop_base": "auto"}

    def __init__(self, **params: Any) -> None:
        self.info = TaskInfo(
            name="medmcqa", answer_type="choice", labels=list("ABCD"),
            metrics=("accuracy", "macro_f1"),
            description="Four-option medical entrance-exam questions (MedMCQA); the "
                        "hub's validation split serves as test.",
        )
        super().__init__(**params)
        if self.params["cop_base"] not in ("auto", 0, 1):
            raise ValueError("cop_base must be 'auto', 0 or 1")
        self._base: dict[str, int] = {}  # our split -> 0 or 1 (what cop counts from)
        self._file_base: dict[str, int] = {}  # source split -> detected base

    def split_plan(self, source: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        return {"train": ("train", "rest"), "validation": ("train", "heldout"),
                "test": ("validation", "all")}

    def _cop_base(self, split_name: str, data: Any) -> int:
        if self.params["cop_base"] != "auto":
            return int(self.params["cop_base"])
        if not self.params["path"]:
            return 0  # the hub stores cop as a 0-3 class label
        if split_name not in self._file_base:
            values = set()
            for rec in data:
                try:
                    values.add(int(rec.get("cop")))
                except (TypeError, ValueError):
                    pass
            if 4 in values:
                self._file_base[split_name] = 1
            elif 0 in values:
                self._file_base[split_name] = 0
            else:
                raise ValueError(
                    f"medmcqa: cannot tell whether 'cop' in the {split_name} file counts "
                    f"from 0 or 1 (values {sorted(values)}); pass cop_base=0 or 1"
                )
        return self._file_base[split_name]

    def _gold_index(self, rec: Mapping[str, Any], base: int) -> int | None:
        cop = rec.get("cop")
        if isinstance(cop, str) and cop.strip().lower() in ("a", "b", "c", "d"):
            return "abcd".index(cop.strip().lower())
        try:
            idx = int(cop) - base
        except (TypeError, ValueError):
            return None
        return idx if 0 <= idx < 4 else None

    def rows(self, split: str) -> Rows:
        rows = super().rows(split)
        if split not in self._base:
            name = self.split_plan(self.source())[split][0]
            self._base[split] = self._cop_base(name, self.source()[name])
        return rows

    def convert(self, rec: dict[str, Any], split: str, index: int) -> Example | None:
        options = [rec.get(k) for k in ("opa", "opb", "opc", "opd")]
        gold = self._gold_index(rec, self._base[split])
        question = rec.get("question")
        if gold is None or not question or any(o is None for o in options):
            return None
        options = [" ".join(str(o).split()) for o in options]
        exp = " ".join(str(rec.get("exp") or "").split())
        words = int(self.params["max_rationale_words"])
        meta = {k: rec.get(k) for k in ("subject_name", "topic_name", "choice_type")
                if rec.get(k) is not None}
        meta["source_index"] = index
        return Example(make_id(rec, "medmcqa", split, index), " ".join(str(question).split()),
                       [OPTION_LETTERS[gold]], rationale=trim_words(exp, words),
                       knowledge=_first_sentence(exp, words), options=options, meta=meta)

    def corpus(self) -> list[str]:
        docs = [ex.rationale for ex in self.load("train") if ex.rationale]
        return list(dict.fromkeys(docs))
