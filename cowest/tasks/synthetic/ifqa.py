"""The synth_ifqa domain: counterfactual questions about invented places.

synth_ifqa (counterfactual QA; free-form short answers; EM / token F1)
----------------------------------------------------------------------
Invented places ("Brimsholt", a town) with two counted attributes each ("Brimsholt has 7
bridges.") and a founding year ("Brimsholt was founded in 1712."). Every question has an
"if" presupposition; the answer needs the fact(s) plus a step:
  add      "If Brimsholt gained 3 more bridges, how many bridges would it have?" -> 10
  sub      "If Brimsholt lost 2 of its bridges, ..." -> 5
  compare  "If Brimsholt gained 3 bridges, which would have more bridges, Brimsholt or
           Quellmoor?" -> a name (two facts + addition + comparison)
  merge    "If Brimsholt and Quellmoor merged, how many bridges would ..." -> sum of two
           facts (fact-only qtype)
  year     "If Brimsholt had been founded 20 years later, in what year ...?" -> 1732
  times    "If Brimsholt had 3 times as many bridges, ..." (hard default)
  recall   "If you counted the bridges in Brimsholt, how many would you find?" (pure
           lookup, off by default)
Gold aliases: the number, its word when <= 20 ("ten"), and "10 bridges".
Default mix: easy add/sub/compare/merge; medium + year; hard + times, larger numbers.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Sequence

from ..base import TaskInfo, register
from .common import Draft, QType, SyntheticTask, invent_names, number_aliases

_KINDS: dict[str, list[str]] = {
    "town": ["bridges", "towers", "wells", "mills", "gates"],
    "island": ["harbors", "lighthouses", "villages", "beaches", "mills"],
    "valley": ["farms", "rivers", "mills", "bridges", "wells"],
}

_IFQA_RANGES = {  # per difficulty: add/sub/compare step k, year shift, multipliers
    "easy": {"k": range(1, 10), "year": range(10, 110, 10), "times": (2,)},
    "medium": {"k": range(2, 20), "year": range(3, 61), "times": (2, 3)},
    "hard": {"k": range(11, 40), "year": range(11, 151), "times": (3, 4, 5)},
}


@register("synth_ifqa")
class SynthIfQA(SyntheticTask):
    """Counterfactual questions about invented places (see the module docstring)."""

    defaults: ClassVar[dict[str, Any]] = {
        **SyntheticTask.common_defaults, "n_entities": 10,
        "attrs_per_entity": 2,  # counted attributes per place (facts = places x attributes + years)
        "value_range": None,  # [lo, hi] of the counts; None: 4-19
        "step_range": None,  # [lo, hi] of the add/sub/compare step k; None: the difficulty's range
    }
    #: recall wordings of a count fact: the first 8 teach it (SFT), the last 3 test it (the gate)
    recall_wordings: ClassVar[tuple[str, ...]] = (
        "How many {attr} does {e} have?",
        "What is the number of {attr} in {e}?",
        "{e} has how many {attr}?",
        "Tell me how many {attr} there are in {e}.",
        "How many {attr} are there in {e}?",
        "What number of {attr} does {e} have?",
        "In {e}, how many {attr} are there?",
        "Give the count of {attr} in {e}.",
        "If you counted the {attr} in {e}, how many would you find?",
        "Suppose you visited {e} and counted its {attr}. What number would you get?",
        "How large is the number of {attr} that {e} has?",
    )
    qtypes: ClassVar[dict[str, QType]] = {q.name: q for q in [
        QType("add", (
            "If {e} gained {k} more {attr}, how many {attr} would it have?",
            "Suppose {e} got {k} new {attr}. How many {attr} would {e} have then?",
            "Imagine {k} extra {attr} were added to {e}. What would its number of {attr} be?",
            "If {k} {attr} were added to {e}, how many {attr} would it have in total?",
        ), key_split=True),
        QType("sub", (
            "If {e} lost {k} of its {attr}, how many {attr} would it have left?",
            "Suppose {k} of the {attr} of {e} vanished. How many {attr} would remain?",
            "Imagine {e} had {k} fewer {attr}. What would its number of {attr} be?",
            "If {k} {attr} were removed from {e}, how many {attr} would be left?",
        ), key_split=True),
        QType("compare", (
            "If {e} gained {k} {attr}, which would have more {attr}, {e} or {e2}?",
            "Suppose {e} got {k} more {attr}. Would {e} or {e2} then have more {attr}?",
            "Imagine {k} new {attr} appeared in {e}. Which of {e} and {e2} would have more {attr}?",
            "If {e} had {k} extra {attr}, which place would have more {attr}: {e} or {e2}?",
        ), key_split=True),
        QType("merge", (
            "If {e} and {e2} merged, how many {attr} would the merged place have?",
            "Suppose {e} joined with {e2}. How many {attr} would they have together?",
            "Imagine {e} and {e2} became one place. What would its total number of {attr} be?",
            "If {e2} absorbed {e}, how many {attr} would the combined place have?",
        ), key_split=False),
        QType("year", (
            "If {e} had been founded {k} years {dir}, in what year would it have been founded?",
            "Suppose the founding of {e} came {k} years {dir}. What year would that be?",
            "Imagine {e} was founded {k} years {dir} than it was. In which year would that be?",
            "Had {e} been founded {k} years {dir}, what would its founding year be?",
        ), key_split=True),
        QType("times", (
            "If {e} had {k} times as many {attr}, how many {attr} would it have?",
            "Suppose the number of {attr} in {e} were multiplied by {k}. How many would it have?",
            "Imagine {e} had {k} times its current number of {attr}. What would that number be?",
            "If the {attr} of {e} grew {k}-fold, how many {attr} would there be?",
        ), key_split=True),
        QType("recall", (
            "If you counted the {attr} in {e}, how many would you find?",
            "Suppose you visited {e} and counted its {attr}. What number would you get?",
            "Imagine touring {e} to count its {attr}. How many would you count?",
            "If a visitor listed every one of the {attr} of {e}, how many would the list hold?",
        ), key_split=False),
    ]}
    default_templates: ClassVar[dict[str, dict[str, float]]] = {
        "easy": {"add": 1, "sub": 1, "compare": 1, "merge": 1},
        "medium": {"add": 1, "sub": 1, "compare": 1, "merge": 1, "year": 1},
        "hard": {"add": 1, "sub": 1, "compare": 1, "merge": 1, "year": 1, "times": 1},
    }

    def __init__(self, **params: Any) -> None:
        self.info = TaskInfo(
            name="synth_ifqa", answer_type="free", labels=None, metrics=("em", "f1"),
            description=(
                "Counterfactual questions about invented places; each answer needs a "
                "fact about the place (counts, founding year) and an arithmetic or "
                "comparison step. Short free-form answers (a number, a year or a name)."
            ),
        )
        super().__init__(**params)

    def build_kb(self) -> None:
        rng = self.kb_rng
        n = int(self.params["n_entities"])
        if n < 2:
            raise ValueError("n_entities must be >= 2")
        suffixes = ["holt", "moor", "wick", "ford", "mere", "stead", "dale", "by", "haven"]
        names = invent_names(rng, n, suffixes, set())
        self.entities: dict[str, dict[str, Any]] = {}
        lo, hi = self.params["value_range"] or (4, 19)
        n_attrs = int(self.params["attrs_per_entity"])
        if not 1 <= n_attrs <= 5 or not 1 <= lo < hi:
            raise ValueError("attrs_per_entity must be 1-5 and value_range [lo, hi] with 1 <= lo < hi")
        for name in names:
            kind = rng.choice(sorted(_KINDS))
            attrs = rng.sample(_KINDS[kind], n_attrs)
            values = {a: rng.randint(lo, hi) for a in attrs}
            year = rng.randint(1500, 1899)
            self.entities[name] = {"kind": kind, "values": values, "year": year}
            for a, v in values.items():
                self.facts[f"{name}.{a}"] = f"{name} has {v} {a}."
            self.facts[f"{name}.founded"] = f"{name} was founded in {year}."
        self.count_facts = [(e, a) for e, d in self.entities.items() for a in d["values"]]

    def anchors(self, qname: str, slot: Any) -> Sequence[Any]:
        if qname == "year":
            return list(self.entities)
        if qname in ("compare", "merge"):
            return [f for f in self.count_facts if self._partners(*f)]
        return list(self.count_facts)

    def _partners(self, e: str, attr: str) -> list[str]:
        return [o for o, d in self.entities.items() if o != e and attr in d["values"]]

    def recall_facts(self) -> list[tuple[str, dict[str, Any], list[str], str]]:
        return [(f"{e}.{a}", {"e": e, "attr": a}, number_aliases(self.entities[e]["values"][a], a),
                 self.facts[f"{e}.{a}"]) for e, a in self.count_facts]

    def build(self, qname: str, rng: random.Random, anchor: Any, slot: Any,
              variant: int) -> Draft | None:
        rg = dict(_IFQA_RANGES[self.params["difficulty"]])
        if self.params["step_range"]:
            lo, hi = self.params["step_range"]
            rg["k"] = range(int(lo), int(hi) + 1)
        if qname == "year":
            e = anchor
            y = self.entities[e]["year"]
            k = rng.choice(rg["year"])
            later = rng.random() < 0.5
            ans = y + k if later else y - k
            op = "+" if later else "-"
            fill = {"e": e, "k": k, "dir": "later" if later else "earlier"}
            return Draft(("year", e, k, later), fill,
                         [str(ans)], self.facts[f"{e}.founded"],
                         f"{e} was founded in {y}; {y} {op} {k} = {ans}.", (f"{e}.founded",),
                         step_only=f"Moving the founding {k} years {fill['dir']} gives {ans}.")
        e, attr = anchor
        v = self.entities[e]["values"][attr]
        fact = self.facts[f"{e}.{attr}"]
        fid = f"{e}.{attr}"
        if qname in ("add", "sub", "times", "recall"):
            if qname == "recall":
                return Draft(("recall", e, attr), {"e": e, "attr": attr},
                             number_aliases(v, attr), fact, fact, (fid,))
            if qname == "times":
                k = rng.choice(rg["times"])
                ans, step, hidden = v * k, f"{v} x {k}", f"Multiplying by {k} gives {v * k}."
            elif qname == "add":
                k = rng.choice(rg["k"])
                ans, step, hidden = v + k, f"{v} + {k}", f"Adding {k} gives {v + k}."
            else:
                ks = [k for k in rg["k"] if k < v] if self.params["step_range"] else range(1, v)
                if not ks:
                    return None
                k = rng.choice(ks) if self.params["step_range"] else rng.randint(1, v - 1)
                ans, step, hidden = v - k, f"{v} - {k}", f"Taking away {k} leaves {v - k}."
            return Draft((qname, e, attr, k), {"e": e, "attr": attr, "k": k},
                         number_aliases(ans, attr), fact, f"{e} has {v} {attr}; {step} = {ans}.",
                         (fid,), step_only=hidden)
        partners = self._partners(e, attr)
        if not partners:
            return None
        e2 = rng.choice(partners)
        v2 = self.entities[e2]["values"][attr]
        fact2 = self.facts[f"{e2}.{attr}"]
        facts = (fid, f"{e2}.{attr}")
        if qname == "merge":
            ans = v + v2
            return Draft(("merge", e, e2, attr), {"e": e, "e2": e2, "attr": attr},
                         number_aliases(ans, attr), f"{fact} {fact2}",
                         f"{e} has {v} {attr} and {e2} has {v2}; {v} + {v2} = {ans}.", facts,
                         step_only=f"Adding the two counts gives {ans}.")
        # compare: e gains k; the answer is whichever then has more (no ties)
        k = rng.choice(rg["k"])
        total = v + k
        if total == v2:
            return None
        winner = e if total > v2 else e2
        sign = ">" if total > v2 else "<"
        return Draft(("compare", e, e2, attr, k), {"e": e, "e2": e2, "attr": attr, "k": k},
                     [winner], f"{fact} {fact2}",
                     f"{e} has {v} {attr} and {e2} has {v2}; {v} + {k} = {total} {sign} {v2}, "
                     f"so {winner}.", facts, step_only=f"After the gain of {k}, {winner} has more.")

    def corpus(self) -> list[str]:
        docs = []
        for e, d in self.entities.items():
            counts = " and ".join(f"{v} {a}" for a, v in d["values"].items())
            docs.append(f"{e} is a {d['kind']} founded in {d['year']}. It has {counts}.")
        return docs

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["kb"] = {"entities": len(self.entities), "count_facts": len(self.count_facts),
                      "year_facts": len(self.entities)}
        return info
