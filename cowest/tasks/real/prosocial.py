"""The prosocial task: ProsocialDialog, the safety label of a user's dialogue turn.

prosocial (`allenai/prosocial-dialog`)
    Unit: one row = one user turn; the utterance classified is `context` (the
    prosocial `response` is not shown). Labels: `granularity=3` (default) maps
    __casual__ -> casual; __possibly_needs_caution__, __probably_needs_caution__,
    __needs_caution__ -> needs caution; __needs_intervention__ -> needs intervention.
    `granularity=5` keeps all five (casual, possibly needs caution, probably needs
    caution, needs caution, needs intervention). knowledge <- the rules of thumb
    (`rots`); rationale <- rots + the first safety annotation reason, trimmed.
    `balanced=True` samples the labels evenly (default: natural distribution).
    corpus(): the distinct rules of thumb of the train split.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from ..base import Example, Split, TaskInfo, register
from .common import RealTask
from .text import listify

PROSOCIAL_LABELS_5 = ["casual", "possibly needs caution", "probably needs caution",
                      "needs caution", "needs intervention"]
PROSOCIAL_LABELS_3 = ["casual", "needs caution", "needs intervention"]
_TO_3 = {"casual": "casual", "possibly needs caution": "needs caution",
         "probably needs caution": "needs caution", "needs caution": "needs caution",
         "needs intervention": "needs intervention"}


def prosocial_label(raw: Any, granularity: int) -> str | None:
    """"__possibly_needs_caution__" -> "possibly needs caution" (5) or "needs caution" (3)."""
    name = " ".join(str(raw or "").replace("_", " ").lower().split())
    if name not in _TO_3:
        return None
    return _TO_3[name] if granularity == 3 else name


@register("prosocial")
class Prosocial(RealTask):
    hub_default = "allenai/prosocial-dialog"
    title = "ProsocialDialog"
    homepage = "https://github.com/skywalker023/prosocial-dialog"
    defaults: ClassVar[dict[str, Any]] = {**RealTask.common_defaults, "granularity": 3,
                                          "balanced": False}

    def __init__(self, **params: Any) -> None:
        granularity = params.get("granularity", 3)
        if granularity not in (3, 5):
            raise ValueError("granularity must be 3 or 5")
        labels = PROSOCIAL_LABELS_3 if granularity == 3 else PROSOCIAL_LABELS_5
        self.info = TaskInfo(
            name="prosocial", answer_type="label", labels=list(labels),
            metrics=("accuracy", "macro_f1"),
            description="Safety label of a user's dialogue turn (ProsocialDialog): casual, "
                        "needs caution or needs intervention"
                        + (" (5 classes: possibly/probably needs caution kept)." if granularity == 5
                           else "."),
        )
        super().__init__(**params)

    def convert(self, rec: dict[str, Any], split: str, index: int) -> Example | None:
        label = prosocial_label(rec.get("safety_label"), int(self.params["granularity"]))
        context = " ".join(str(rec.get("context") or "").split())
        if label is None or not context:
            return None
        rots = [" ".join(str(r).split()) for r in listify(rec.get("rots")) if str(r).strip()]
        reasons = [str(r) for r in listify(rec.get("safety_annotation_reasons")) if str(r).strip()]
        knowledge = self._trim(" ".join(rots))
        rationale = self._trim(" ".join(rots + reasons[:1]))
        rid = f"{rec.get('dialogue_id', 'd')}-{rec.get('response_id', index)}"
        if rec.get("dialogue_id") is None:
            rid = f"prosocial-{split}-{index}"
        return Example(rid, f'Classify the safety of this utterance: "{context}"', [label],
                       rationale=rationale, knowledge=knowledge,
                       meta={"raw_label": rec.get("safety_label"), "source_index": index})

    def load(self, split: Split, n: int | None = None, seed: int = 0) -> list[Example]:
        if not self.params["balanced"] or n is None:
            return super().load(split, n, seed)
        pool = super().load(split, None, seed)
        labels = self.info.labels or []
        quota = {lab: n // len(labels) + (i < n % len(labels)) for i, lab in enumerate(labels)}
        picked, rest = [], []
        for ex in pool:
            if quota.get(ex.golds[0], 0) > 0:
                quota[ex.golds[0]] -= 1
                picked.append(ex)
            else:
                rest.append(ex)
        picked += rest[: n - len(picked)]  # a label that runs short is filled from others
        random.Random(seed).shuffle(picked)
        return picked

    def corpus(self) -> list[str]:
        docs: list[str] = []
        rows = self.rows("train")
        for i in range(len(rows)):
            docs.extend(" ".join(str(r).split()) for r in listify(rows[i].get("rots")))
        return [d for d in dict.fromkeys(docs) if d]
