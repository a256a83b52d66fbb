"""The synth_med domain: four-option questions about invented drugs.

synth_med (medical-style 4-option multiple choice; accuracy / macro-F1 over A-D)
-------------------------------------------------------------------------------
Invented drugs, each treating one invented condition ("Velorazine treats Brantle
fever."), a weight-based dose ("Velorazine is dosed at 4 mg per kg."), and each
condition affects an organ ("Brantle fever affects the lungs.").
  dose     "A patient weighing 30 kg is prescribed Velorazine. What total dose ...?"
           options "120 mg" and 30 x other doses (fact + multiplication)
  two_hop  "A 34-year-old farmer takes Velorazine for the illness it treats. Which organ
           does that illness affect?" (drug -> condition -> organ)
  match    "A 34-year-old farmer has Brantle fever. Which drug treats it?" (the fact
           read in reverse, matched to the options)
  compare  "... the drug with the highest dose per kg. Which is it?" (four dose facts +
           comparison)
Options are shuffled per item; with `balance=True` the gold letter cycles over A-D in
reshuffled blocks (balanced to within one item per letter). The same fact gets new
wordings, patient details and option orders in validation/test.
Default mix: easy dose (round weights)/two_hop/match; medium and hard all four, with
larger numbers in hard.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Sequence

from ..base import TaskInfo, register
from .common import Draft, QType, Stream, SyntheticTask, invent_names, pick_gold_slot

_ORGANS = ["liver", "kidneys", "lungs", "heart", "skin", "stomach", "eyes", "spleen"]
_DISEASE_WORDS = ["fever", "palsy", "syndrome", "blight", "rash", "ague", "disease", "pox"]
_PERSONS = ["farmer", "teacher", "student", "sailor", "baker", "nurse", "miner", "weaver",
            "clerk", "painter", "carpenter", "fisher"]
_DOSES = range(2, 10)  # mg per kg
_MED_WEIGHTS = {"easy": range(10, 101, 5), "medium": range(10, 61), "hard": range(11, 100)}


@register("synth_med")
class SynthMed(SyntheticTask):
    """Four-option questions about invented drugs (see the module docstring)."""

    defaults: ClassVar[dict[str, Any]] = {
        **SyntheticTask.common_defaults, "n_drugs": 10,
        "weight_range": None,  # [lo, hi] of the patients' weights in dose items; None: the difficulty's
    }
    #: recall wordings of a dose fact: the first 8 teach it (SFT), the last 3 test it (the gate)
    recall_wordings: ClassVar[tuple[str, ...]] = (
        "What is the dose of {d} per kg?",
        "How many mg per kg of {d} are given?",
        "{d} is dosed at how many mg per kg?",
        "What is the per-kg dose of {d}?",
        "How much {d} is given per kg of body weight?",
        "Give the dose of {d} in mg per kg.",
        "What dose per kg does {d} have?",
        "State the weight-based dose of {d}.",
        "If a doctor prescribes {d}, how many mg per kg would they use?",
        "How many milligrams of {d} go with each kilogram?",
        "What is the dose of {d} for each kg a patient weighs?",
    )
    qtypes: ClassVar[dict[str, QType]] = {q.name: q for q in [
        QType("dose", (
            "A patient weighing {w} kg is prescribed {d}. What total dose should they receive?",
            "What dose of {d} does a patient who weighs {w} kg need?",
            "{d} is ordered for a {w} kg patient. Which dose is correct?",
            "How much {d} should be given to someone weighing {w} kg?",
        ), key_split=True),
        QType("two_hop", (
            "A {age}-year-old {p} takes {d} for the illness it treats. Which organ does that "
            "illness affect?",
            "A {p} aged {age} is on {d}. Which organ is affected by the disease {d} treats?",
            "{d} was prescribed to a {age}-year-old {p} for its usual illness. Which organ "
            "does that illness involve?",
            "A {age}-year-old {p} needs {d}. Which organ is harmed by the condition it is "
            "meant for?",
        ), key_split=False),
        QType("match", (
            "A {age}-year-old {p} has {c}. Which drug treats it?",
            "Which drug should a {age}-year-old {p} with {c} receive?",
            "A {p} aged {age} is diagnosed with {c}. Which medicine is the right one?",
            "For a {age}-year-old {p} suffering from {c}, which drug is indicated?",
        ), key_split=False),
        QType("compare", (
            "For a {age}-year-old {p}, the doctor wants the drug with the {ext} dose per kg. "
            "Which is it?",
            "A {age}-year-old {p} should get the drug with the {ext} dose per kg. Which one?",
            "Among these drugs, which has the {ext} dose per kg for a {age}-year-old {p}?",
            "A {p} aged {age} must take the drug whose dose per kg is the {ext}. Which one?",
        ), key_split=False),
    ]}
    default_templates: ClassVar[dict[str, dict[str, float]]] = {
        "easy": {"dose": 1, "two_hop": 1, "match": 1},
        "medium": {"dose": 1, "two_hop": 1, "match": 1, "compare": 1},
        "hard": {"dose": 1, "two_hop": 1, "match": 1, "compare": 1},
    }

    def __init__(self, **params: Any) -> None:
        self.info = TaskInfo(
            name="synth_med", answer_type="choice", labels=list("ABCD"),
            metrics=("accuracy", "macro_f1"),
            description=(
                "Four-option questions about invented drugs, the conditions they treat, "
                "the organs those conditions affect and weight-based doses; each answer "
                "needs the facts plus a step (multiplication, chaining two facts, "
                "comparing doses, matching a fact to the options)."
            ),
        )
        super().__init__(**params)

    def build_kb(self) -> None:
        rng = self.kb_rng
        n = int(self.params["n_drugs"])
        if n < 4:
            raise ValueError("n_drugs must be >= 4")
        taken: set[str] = set()
        drugs = invent_names(rng, n, ["zine", "mol", "tanib", "oxil", "pril", "vir",
                                       "dronate", "cillin", "statin", "afen"], taken)
        stems = invent_names(rng, n, ["an", "ish", "ic", "ar", "en"], taken)
        words = [rng.choice(_DISEASE_WORDS) for _ in range(n)]
        organs = (_ORGANS * (n // len(_ORGANS) + 1))[:n]
        rng.shuffle(organs)
        self.drugs: dict[str, dict[str, Any]] = {}
        self.conditions: dict[str, str] = {}
        for drug, stem, word, organ in zip(drugs, stems, words, organs):
            cond = f"{stem} {word}"
            dose = rng.choice(_DOSES)
            self.drugs[drug] = {"condition": cond, "dose": dose}
            self.conditions[cond] = organ
            self.facts[f"{drug}.treats"] = f"{drug} treats {cond}."
            self.facts[f"{drug}.dose"] = f"{drug} is dosed at {dose} mg per kg."
            self.facts[f"{cond}.organ"] = f"{cond} affects the {organ}."

    def recall_facts(self) -> list[tuple[str, dict[str, Any], list[str], str]]:
        return [(f"{d}.dose", {"d": d}, [f"{i['dose']} mg per kg", str(i["dose"]), f"{i['dose']} mg"],
                 self.facts[f"{d}.dose"]) for d, i in self.drugs.items()]

    def plan_slot(self, stream: Stream, weights: dict[str, float]) -> tuple[str, Any]:
        qname = stream.rotate(weights)
        return qname, pick_gold_slot(self, stream, qname)

    def anchor_key(self, qname: str, slot: Any) -> Any:
        return (qname,)

    def anchors(self, qname: str, slot: Any) -> Sequence[Any]:
        return list(self.drugs)

    def build(self, qname: str, rng: random.Random, anchor: Any, slot: Any,
              variant: int) -> Draft | None:
        drug = anchor
        info = self.drugs[drug]
        age, person = rng.randint(18, 80), rng.choice(_PERSONS)
        ctx = {"age": age, "p": person}
        if qname == "dose":
            weights = _MED_WEIGHTS[self.params["difficulty"]]
            if self.params["weight_range"]:
                weights = range(int(self.params["weight_range"][0]), int(self.params["weight_range"][1]) + 1)
            w = rng.choice(weights)
            dose = info["dose"]
            others = rng.sample([x for x in _DOSES if x != dose], 3)
            return Draft(("dose", drug, w), {"d": drug, "w": w}, [],
                         self.facts[f"{drug}.dose"],
                         f"{drug} is dosed at {dose} mg per kg; {dose} x {w} = {dose * w} mg.",
                         (f"{drug}.dose",), correct=f"{dose * w} mg",
                         distractors=tuple(f"{x * w} mg" for x in others),
                         step_only=f"Multiplying by the weight of {w} kg gives {dose * w} mg.")
        if qname == "two_hop":
            cond = info["condition"]
            organ = self.conditions[cond]
            others = rng.sample([o for o in _ORGANS if o != organ], 3)
            return Draft(("two_hop", drug, age, person), {"d": drug, **ctx}, [],
                         f"{drug} treats {cond}. {cond} affects the {organ}.",
                         f"{drug} treats {cond}, and {cond} affects the {organ}.",
                         (f"{drug}.treats", f"{cond}.organ"), correct=organ,
                         distractors=tuple(others))
        if qname == "match":
            cond = info["condition"]
            others = rng.sample([d for d in self.drugs if d != drug], 3)
            fact = self.facts[f"{drug}.treats"]
            return Draft(("match", cond, age, person), {"c": cond, **ctx}, [], fact,
                         f"{fact} So the drug for {cond} is {drug}.", (f"{drug}.treats",),
                         correct=drug, distractors=tuple(others))
        # compare: the anchor drug must be the unique highest or lowest of four
        dose = info["dose"]
        lower = [d for d, x in self.drugs.items() if x["dose"] < dose]
        higher = [d for d, x in self.drugs.items() if x["dose"] > dose]
        choices = [(ext, pool) for ext, pool in (("highest", lower), ("lowest", higher))
                   if len(pool) >= 3]
        if not choices:
            return None
        ext, pool = rng.choice(choices)
        others = rng.sample(pool, 3)
        shown = [drug, *others]
        rng.shuffle(shown)
        listing = "; ".join(f"{d} {self.drugs[d]['dose']}" for d in shown)
        return Draft(("compare", ext, age, person), {"ext": ext, **ctx}, [],
                     " ".join(self.facts[f"{d}.dose"] for d in shown),
                     f"Doses in mg per kg: {listing}. The {ext} is {drug}.",
                     tuple(f"{d}.dose" for d in shown), correct=drug,
                     distractors=tuple(others))

    def corpus(self) -> list[str]:
        docs = []
        for drug, info in self.drugs.items():
            cond = info["condition"]
            docs.append(f"{drug} treats {cond} and is dosed at {info['dose']} mg per kg. "
                        f"{cond} affects the {self.conditions[cond]}.")
        return docs

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["kb"] = {"drugs": len(self.drugs), "conditions": len(self.conditions),
                      "organs": len(set(self.conditions.values()))}
        return info
