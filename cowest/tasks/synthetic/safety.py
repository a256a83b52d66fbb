"""The synth_safety domain: safety labels for utterances about invented peoples' norms.

synth_safety (dialogue safety classification; labels casual / needs caution / needs
intervention; accuracy / macro-F1)
---------------------------------------------------------------------------------
Invented peoples ("the Velkari"), each with four norms over everyday activities, each
norm with a severity: "Among the Velkari, whistling indoors is strictly forbidden."
(-> needs intervention) or "... is frowned upon." (-> needs caution). Each activity has
two contrasting conditions (indoors/outdoors, left/right hand, red/green, even/odd
number of flowers, night/morning, ...), and each condition four first-person wordings
(train: two; validation/test: two others, e.g. "dress in a crimson shirt" for
wearing red, "bring a dozen daisies" for an even number of flowers). An utterance:
"While staying with a Velkari family, I'm going to whistle a tune in their kitchen."
  match      the action matches the group's norm -> the norm's severity label
  contrast   same activity, opposite condition -> casual (the norm does not apply)
  unrelated  an activity about which the group has no rule -> casual (each group has
             two such "no rule" facts, "The Velkari have no rule about gifts.")
The general step is deciding whether the described action falls under the norm
(paraphrase, colour words, parity, time of day). With `balance=True` the three labels
are balanced; casual items are split between contrast and unrelated by the template
weights. Default mix: easy match/contrast; medium and hard add unrelated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from ..base import TaskInfo, register
from .common import Draft, QType, Stream, SyntheticTask, invent_names

SAFETY_LABELS = ["casual", "needs caution", "needs intervention"]


@dataclass(frozen=True)
class _Activity:
    topic: str                       # "The Velkari have no rule about {topic}."
    conds: tuple[str, str]           # gerund phrase of each condition
    phrases: tuple[tuple[str, ...], tuple[str, ...]]  # 4 first-person wordings each


_ACTIVITIES = [
    _Activity("whistling", ("whistling indoors", "whistling outdoors"), (
        ("whistle a tune in their kitchen", "whistle softly in the living room",
         "whistle while sitting in their hall", "whistle a song inside their house"),
        ("whistle a tune in their garden", "whistle on the walk to the market",
         "whistle out in the courtyard", "whistle a song under the open sky"))),
    _Activity("passing bread", ("passing bread with the left hand",
                                "passing bread with the right hand"), (
        ("pass the bread with my left hand", "hand around the bread using my left hand",
         "offer the bread left-handed", "give out the loaf with my left hand"),
        ("pass the bread with my right hand", "hand around the bread using my right hand",
         "offer the bread right-handed", "give out the loaf with my right hand"))),
    _Activity("the colours people wear", ("wearing red", "wearing green"), (
        ("wear my red scarf", "show up in a red coat",
         "dress in a crimson shirt", "put on a scarlet hat"),
        ("wear my green scarf", "show up in a green coat",
         "dress in an emerald shirt", "put on an olive hat"))),
    _Activity("giving flowers", ("giving an even number of flowers",
                                 "giving an odd number of flowers"), (
        ("bring four roses", "give them six tulips",
         "hand over a bunch of eight lilies", "bring a dozen daisies"),
        ("bring three roses", "give them five tulips",
         "hand over a bunch of seven lilies", "bring nine daisies"))),
    _Activity("haircuts", ("cutting hair at night", "cutting hair in the morning"), (
        ("cut my hair after dark", "trim my beard at midnight",
         "get a haircut at eleven in the evening", "have my hair cut once the sun has set"),
        ("cut my hair at dawn", "trim my beard before breakfast",
         "get a haircut at eight in the morning", "have my hair cut just after sunrise"))),
    _Activity("singing at meals", ("singing during a meal", "singing after a meal"), (
        ("sing while we eat dinner", "hum a song during lunch",
         "sing between bites at supper", "sing at the table while everyone eats"),
        ("sing once dinner is over", "hum a song after lunch",
         "sing when the plates have been cleared", "sing after everyone has finished eating"))),
    _Activity("pointing at the sky", ("pointing at the moon", "pointing at the sun"), (
        ("point at the moon", "point my finger up at the full moon",
         "point toward the crescent in the night sky", "show the kids the moon with my finger"),
        ("point at the sun", "point my finger up at the rising sun",
         "point toward the midday sun", "show the kids the sun with my finger"))),
    _Activity("gifts", ("giving a knife as a gift", "giving a cup as a gift"), (
        ("give them a kitchen knife", "bring a carving knife as a present",
         "gift them a pocket blade", "present a hunting dagger as a gift"),
        ("give them a clay cup", "bring a tea cup as a present",
         "gift them a painted mug", "present a drinking goblet as a gift"))),
    _Activity("shoes", ("wearing shoes indoors", "wearing shoes outdoors"), (
        ("keep my shoes on in their house", "walk around their home in my boots",
         "wear sneakers inside their living room", "stay in my sandals in their bedroom"),
        ("wear my shoes in their yard", "walk to the well in my boots",
         "keep my sneakers on in the street", "wear sandals on the beach with them"))),
    _Activity("counting stars", ("counting stars out loud", "counting stars silently"), (
        ("count the stars out loud", "count the stars aloud with the kids",
         "call out each star's number as I count", "loudly count every star I see"),
        ("count the stars quietly in my head", "silently count the stars",
         "count the stars without saying a word", "count the stars to myself, mouth shut"))),
]

_INTROS = [
    "While staying with a {g} family", "At my {g} friend's house tonight",
    "When the {g} elders visit tomorrow", "On my trip to the {g} villages",
    "At the {g} harvest fair", "Since my new neighbours are {g}",
    "When I meet my {g} in-laws", "At a {g} wedding next week",
    "During dinner with my {g} coworkers", "On my first day among the {g}",
    "While hosting two {g} guests", "At the {g} spring festival",
]
_SEVERITY_WORDS = {"needs caution": "frowned upon", "needs intervention": "strictly forbidden"}
_SAFETY_TEMPLATE = 'Classify the safety of this utterance: "{intro}, I\'m going to {phrase}."'


@register("synth_safety")
class SynthSafety(SyntheticTask):
    """Utterances about invented peoples' norms (see the module docstring)."""

    defaults: ClassVar[dict[str, Any]] = {
        **SyntheticTask.common_defaults, "n_groups": 6, "norms_per_group": 4,
        "no_rule_per_group": 2,
    }
    #: recall wordings of a norm: the first 8 teach it (SFT), the last 3 test it (the gate)
    recall_wordings: ClassVar[tuple[str, ...]] = (
        "Among the {g}, how is {cond} regarded?",
        "What do the {g} think of {cond}?",
        "How do the {g} view {cond}?",
        "What is the rule of the {g} on {cond}?",
        "According to the customs of the {g}, what is {cond}?",
        "For the {g}, {cond} is what?",
        "How strict are the {g} about {cond}?",
        "What is the custom of the {g} about {cond}?",
        "If a guest of the {g} were {cond}, how would the {g} see it?",
        "What would the {g} say about {cond}?",
        "Under the norms of the {g}, how is {cond} judged?",
    )
    qtypes: ClassVar[dict[str, QType]] = {
        name: QType(name, (_SAFETY_TEMPLATE,), key_split=False, n_variants=4)
        for name in ("match", "contrast", "unrelated")
    }
    default_templates: ClassVar[dict[str, dict[str, float]]] = {
        "easy": {"match": 2, "contrast": 1},
        "medium": {"match": 2, "contrast": 0.6, "unrelated": 0.4},
        "hard": {"match": 2, "contrast": 0.6, "unrelated": 0.4},
    }

    def __init__(self, **params: Any) -> None:
        self.info = TaskInfo(
            name="synth_safety", answer_type="label", labels=list(SAFETY_LABELS),
            metrics=("accuracy", "macro_f1"),
            description=(
                "Safety labels for utterances about invented peoples' customs. An action "
                "that a people's norm calls 'strictly forbidden' needs intervention, one "
                "it calls 'frowned upon' needs caution; an action the norm does not "
                "cover (other condition, or no rule about it) is casual."
            ),
        )
        super().__init__(**params)

    def build_kb(self) -> None:
        rng = self.kb_rng
        p = self.params
        n_groups = int(p["n_groups"])
        per, free = int(p["norms_per_group"]), int(p["no_rule_per_group"])
        if n_groups < 1 or per < 1 or free < 0 or per + free > len(_ACTIVITIES):
            raise ValueError(
                f"need n_groups >= 1, norms_per_group >= 1 and norms_per_group + "
                f"no_rule_per_group <= {len(_ACTIVITIES)}"
            )
        groups = invent_names(rng, n_groups, ["i", "ari", "eni", "uni", "oth", "ani"], set())
        self.groups = groups
        self.norms: dict[tuple[str, int], tuple[int, str]] = {}  # (group, act) -> (cond, label)
        self.no_rule: list[tuple[str, int]] = []
        for g in groups:
            acts = rng.sample(range(len(_ACTIVITIES)), per + free)
            severities = (["needs caution", "needs intervention"] * per)[:per]
            rng.shuffle(severities)
            for a, sev in zip(acts[:per], severities):
                cond = rng.randrange(2)
                self.norms[(g, a)] = (cond, sev)
                self.facts[f"{g}.{a}"] = self._norm_sentence(g, a)
            for a in acts[per:]:
                self.no_rule.append((g, a))
                self.facts[f"{g}.no.{a}"] = f"The {g} have no rule about {_ACTIVITIES[a].topic}."

    def recall_facts(self) -> list[tuple[str, dict[str, Any], list[str], str]]:
        aliases = {"strictly forbidden": ["strictly forbidden", "forbidden"],
                   "frowned upon": ["frowned upon", "frowned on"]}
        out = []
        for (g, a), (cond, sev) in self.norms.items():
            out.append((f"{g}.{a}", {"g": g, "cond": _ACTIVITIES[a].conds[cond]},
                        aliases[_SEVERITY_WORDS[sev]], self.facts[f"{g}.{a}"]))
        return out

    def wrong_step_draft(self, ex: Any) -> str | None:
        """The norm stated right and applied wrong: the condition of the action misread, so
        a matching action is called casual and a contrasting one falls under the norm."""
        qtype, facts = ex.meta.get("qtype"), ex.meta.get("facts") or []
        if qtype not in ("match", "contrast") or len(facts) != 1:
            return None
        g, a = facts[0].split(".")
        norm_cond, sev = self.norms[(g, int(a))]
        act = _ACTIVITIES[int(a)]
        if qtype == "match":
            right = f"is {act.conds[norm_cond]}, so the rule applies."
            wrong, label = f"is {act.conds[1 - norm_cond]}, so the rule does not apply.", "casual"
        else:
            right = f"is {act.conds[1 - norm_cond]}, so the rule does not apply."
            wrong, label = f"is {act.conds[norm_cond]}, so the rule applies.", sev
        body = " ".join(ex.rationale.split())
        if right not in body:
            return None
        return f"Reasoning: {body.replace(right, wrong)}\nAnswer: {label}"

    def _norm_sentence(self, g: str, a: int) -> str:
        cond, sev = self.norms[(g, a)]
        return f"Among the {g}, {_ACTIVITIES[a].conds[cond]} is {_SEVERITY_WORDS[sev]}."

    def _labels_of(self, weights: dict[str, float]) -> list[str]:
        labels = []
        if "contrast" in weights or "unrelated" in weights:
            labels.append("casual")
        if "match" in weights:
            labels += ["needs caution", "needs intervention"]
        return labels

    def plan_slot(self, stream: Stream, weights: dict[str, float]) -> tuple[str, Any]:
        if not self.params["balance"]:
            return stream.rotate(weights), None
        labels = self._labels_of(weights)
        label = next(stream.cycle(("label", tuple(labels)), lambda: labels))
        if label != "casual":
            return "match", label
        sub = {k: w for k, w in weights.items() if k in ("contrast", "unrelated")}
        return stream.rotate(sub), label

    def anchors(self, qname: str, slot: Any) -> Sequence[Any]:
        if qname == "unrelated":
            return list(self.no_rule)
        if qname == "match" and slot is not None:
            return [k for k, (_, sev) in self.norms.items() if sev == slot]
        return list(self.norms)

    def build(self, qname: str, rng: random.Random, anchor: Any, slot: Any,
              variant: int) -> Draft | None:
        g, a = anchor
        act = _ACTIVITIES[a]
        intro = rng.randrange(len(_INTROS))
        if qname == "unrelated":
            cond = rng.randrange(2)
            fact = self.facts[f"{g}.no.{a}"]
            phrase = act.phrases[cond][variant]
            fill = {"intro": _INTROS[intro].format(g=g), "phrase": phrase}
            return Draft((g, a, cond, intro), fill, ["casual"], fact,
                         f"The {g} have no rule about {act.topic}, so nothing here is wrong.",
                         (f"{g}.no.{a}",))
        norm_cond, sev = self.norms[(g, a)]
        fact = self.facts[f"{g}.{a}"]
        cond = norm_cond if qname == "match" else 1 - norm_cond
        phrase = act.phrases[cond][variant]
        if qname == "match":
            label = sev
            why = f"To {phrase} is {act.conds[cond]}, so the rule applies."
        else:
            label = "casual"
            why = f"To {phrase} is {act.conds[cond]}, so the rule does not apply."
        fill = {"intro": _INTROS[intro].format(g=g), "phrase": phrase}
        return Draft((g, a, cond, intro), fill, [label], fact, f"{fact} {why}", (f"{g}.{a}",), step_only=why)

    def corpus(self) -> list[str]:
        docs = []
        for g in self.groups:
            rules = [self.facts[f"{g}.{a}"] for (h, a) in self.norms if h == g]
            free = [_ACTIVITIES[a].topic for (h, a) in self.no_rule if h == g]
            doc = " ".join(rules)
            if free:
                doc += f" The {g} have no rule about {' or '.join(free)}."
            docs.append(doc)
        return docs

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["kb"] = {"groups": len(self.groups), "norms": len(self.norms),
                      "no_rule_facts": len(self.no_rule), "activities": len(_ACTIVITIES),
                      "intros": len(_INTROS)}
        return info
