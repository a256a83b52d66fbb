"""Offline synthetic domains: one stand-in per paper domain, generated from a seed.

Why: the real datasets need the Hugging Face hub, and no pretrained model may already
know the answers. Each domain invents a small knowledge base (invented names, so no
pretrained model knows the facts); the training split teaches the facts, and the
validation/test splits ask *new* questions about the *same* facts. Every answer needs
both a domain fact (only the fine-tuned weak model can learn it) and a general step that
a 1.5B instruction model does well and a 135M model does badly (arithmetic, comparison,
combining two facts, matching a fact to options or to a paraphrase). Each example
carries the gold `knowledge` (the fact sentences) and a short `rationale` (facts + the
step), which feed the "knowledge" and "cot" interaction formats.

Common machinery
----------------
- The knowledge base depends only on `kb_seed` (and the KB size knobs); `load(split, n,
  seed)` samples questions from it and is deterministic given its arguments. The first
  `n` items of a larger load are the same items (a load is a prefix of one stream).
- Every question template ("qtype") has four paraphrases (safety: four wordings of each
  action). With `heldout_paraphrases=True` (default) train uses the first two and
  validation/test the last two, so no test question string appears in train.
  Qtypes whose question carries a number of its own (e.g. "built 3 more bridges") also
  split those numbers: a hash of the question's content assigns each to one split
  (60/20/20), so a test question is never a rewording of a train question. Qtypes
  that only restate facts (e.g. "which organ...") give each fact new wordings, new
  patient details and new option orders in validation/test (validation and test are
  kept apart by the same hash).
- Sampling cycles through the facts (round robin over a reshuffled list), so that 300
  training questions mention every fact several times; the qtype mix follows the
  `templates` weights (smooth weighted round robin). When a qtype runs out of unused
  questions for a split, the remaining items come from the other qtypes.
- Knobs (all constructor parameters, with defaults): KB size (`n_entities`, `n_drugs`,
  `n_groups`/`norms_per_group`), `templates` (names or name->weight), `difficulty`
  ("easy"/"medium"/"hard": number ranges and default template mix), `kb_seed`,
  `balance` (gold letter / label balance), `sizes` (items per split when n=None),
  `heldout_paraphrases`.

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

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

from .base import OPTION_LETTERS, Example, Split, Task, TaskInfo, register

DIFFICULTIES = ("easy", "medium", "hard")
SAFETY_LABELS = ["casual", "needs caution", "needs intervention"]
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()


# ------------------------------------------------------------------------- names

_ONSETS = ["br", "qu", "v", "th", "m", "s", "d", "k", "t", "z", "gr", "l", "h", "n",
           "r", "f", "pl", "sk", "dr", "or", "el", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
_CODAS = ["m", "n", "l", "r", "s", "sh", "lt", "nd", "x", "th", "rn", "v", ""]


def _invent_names(rng: random.Random, n: int, suffixes: Sequence[str],
                  taken: set[str]) -> list[str]:
    """`n` new capitalised names; none equals or contains another taken name."""
    out: list[str] = []
    while len(out) < n:
        stem = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if rng.random() < 0.35:
            stem += rng.choice(_ONSETS) + rng.choice(_VOWELS)
        name = (stem + rng.choice(suffixes)).capitalize()
        low = name.lower()
        if not 6 <= len(name) <= 10:
            continue
        if any(low in t or t in low for t in taken):
            continue
        taken.add(low)
        out.append(name)
    return out


def _stable_unit(*parts: Any) -> float:
    """A number in [0, 1) from a stable hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()
    return int(digest[:12], 16) / 16**12


def _number_aliases(value: int, unit: str | None = None) -> list[str]:
    aliases = [str(value)]
    if 0 <= value < len(NUMBER_WORDS):
        aliases.append(NUMBER_WORDS[value])
    if unit:
        aliases.append(f"{value} {unit}")
    return aliases


# ------------------------------------------------------------------------ engine

@dataclass(frozen=True)
class QType:
    """A question template family: paraphrases, and whether its numbers are split."""

    name: str
    paraphrases: tuple[str, ...]
    key_split: bool
    n_variants: int = 0  # 0: one variant per paraphrase

    @property
    def variants(self) -> int:
        return self.n_variants or len(self.paraphrases)

    @property
    def eval_from(self) -> int:
        """Variants from this index on are held out for validation/test."""
        return (self.variants + 1) // 2


@dataclass
class Draft:
    """What a builder returns; the engine adds wording, option order and ids.

    `key` holds everything that, together with the variant, determines the question
    text (it decides the split). For choice tasks `correct`/`distractors` are option
    texts and `golds` is ignored.
    """

    key: tuple[Any, ...]
    fill: dict[str, Any]
    golds: list[str]
    knowledge: str
    rationale: str
    facts: tuple[str, ...]
    correct: str | None = None
    distractors: tuple[str, ...] = ()


class _Stream:
    """Random state of one `load` call: fact cycles, label cycles, template rotation."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._cycles: dict[Any, Iterator[Any]] = {}
        self._credit: dict[str, float] = {}

    def cycle(self, key: Any, items: Callable[[], Sequence[Any]]) -> Iterator[Any]:
        """Endless round robin over `items()`, reshuffled at every pass."""
        if key not in self._cycles:
            self._cycles[key] = self._endless(list(items()))
        return self._cycles[key]

    def _endless(self, items: list[Any]) -> Iterator[Any]:
        while items:
            order = items[:]
            self.rng.shuffle(order)
            yield from order

    def rotate(self, weights: dict[str, float]) -> str:
        """Smooth weighted round robin: counts follow the weights at every prefix."""
        total = sum(weights.values())
        for name, w in weights.items():
            self._credit[name] = self._credit.get(name, 0.0) + w
        best = max(weights, key=lambda k: self._credit[k])
        self._credit[best] -= total
        return best


class SyntheticTask(Task):
    """Engine shared by the three synthetic domains (see the module docstring)."""

    qtypes: ClassVar[dict[str, QType]] = {}
    default_templates: ClassVar[dict[str, dict[str, float]]] = {}
    common_defaults: ClassVar[dict[str, Any]] = {
        "kb_seed": 0,
        "templates": None,
        "difficulty": "medium",
        "balance": True,
        "sizes": None,
        "heldout_paraphrases": True,
    }
    default_sizes: ClassVar[dict[str, int]] = {"train": 300, "validation": 100, "test": 300}
    split_fractions: ClassVar[tuple[float, float]] = (0.6, 0.8)  # train | validation | test
    max_attempts: ClassVar[int] = 200

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p["difficulty"] not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, not {p['difficulty']!r}")
        self.weights = self._parse_templates(p["templates"])
        sizes = dict(self.default_sizes)
        sizes.update(p["sizes"] or {})
        self.sizes = sizes
        self.kb_rng = random.Random(f"{type(self).__name__}|kb|{p['kb_seed']}")
        self.facts: dict[str, str] = {}  # fact id -> sentence
        self.build_kb()

    # ---------------------------------------------------------------- hooks
    def build_kb(self) -> None:
        raise NotImplementedError

    def anchors(self, qname: str, slot: Any) -> Sequence[Any]:
        """The facts a qtype cycles over (for coverage), given the slot."""
        raise NotImplementedError

    def build(self, qname: str, rng: random.Random, anchor: Any, slot: Any,
              variant: int) -> Draft | None:
        raise NotImplementedError

    def plan_slot(self, stream: _Stream, weights: dict[str, float]) -> tuple[str, Any]:
        """Which qtype comes next and its slot (gold letter, label, or None)."""
        return stream.rotate(weights), None

    def anchor_key(self, qname: str, slot: Any) -> Any:
        """Items sharing this key share one fact cycle."""
        return (qname, slot)

    # ------------------------------------------------------------- params
    def _parse_templates(self, spec: Any) -> dict[str, float]:
        if spec is None:
            weights = dict(self.default_templates[self.params["difficulty"]])
        elif isinstance(spec, dict):
            weights = {str(k): float(v) for k, v in spec.items()}
        elif isinstance(spec, str):
            weights = {spec: 1.0}
        else:
            weights = {str(k): 1.0 for k in spec}
        unknown = sorted(set(weights) - set(self.qtypes))
        if unknown:
            raise ValueError(
                f"{self.info.name}: unknown template(s) {unknown}; known: {sorted(self.qtypes)}"
            )
        weights = {k: w for k, w in weights.items() if w > 0}
        if not weights:
            raise ValueError(f"{self.info.name}: no template with a positive weight")
        return weights

    # ------------------------------------------------------------ splitting
    def _bucket(self, key: tuple[Any, ...], three_way: bool) -> str:
        u = _stable_unit(self.info.name, self.params["kb_seed"], key)
        if three_way:
            lo, hi = self.split_fractions
            return "train" if u < lo else "validation" if u < hi else "test"
        return "validation" if u < 0.5 else "test"

    def in_split(self, qt: QType, key: tuple[Any, ...], split: str) -> bool:
        held = self.params["heldout_paraphrases"]
        if qt.key_split or not held:
            return self._bucket(key, True) == split
        return split == "train" or self._bucket(key, False) == split

    def variants_for(self, qt: QType, split: str) -> list[int]:
        if not self.params["heldout_paraphrases"]:
            return list(range(qt.variants))
        if split == "train":
            return list(range(qt.eval_from))
        return list(range(qt.eval_from, qt.variants))

    # ------------------------------------------------------------- loading
    def load(self, split: Split, n: int | None = None, seed: int = 0) -> list[Example]:
        self._check_split(split)
        n = self.sizes[split] if n is None else n
        if n < 0:
            raise ValueError("n must be >= 0")
        rng = random.Random(f"{self.info.name}|{self.params['kb_seed']}|{split}|{seed}")
        stream = _Stream(rng)
        weights = dict(self.weights)
        out: list[Example] = []
        seen: set[str] = set()
        while len(out) < n:
            if not weights:
                raise RuntimeError(
                    f"{self.info.name}: only {len(out)} unique {split} questions could be "
                    f"made (asked for {n}); lower n or enlarge the knowledge base"
                )
            qname, slot = self.plan_slot(stream, weights)
            ex = self._draw(qname, slot, split, stream, seen, len(out), seed)
            if ex is None:
                weights.pop(qname, None)  # this qtype has run out of new questions
                continue
            seen.add(ex.question)
            out.append(ex)
        return out

    def _draw(self, qname: str, slot: Any, split: str, stream: _Stream, seen: set[str],
              index: int, seed: int) -> Example | None:
        qt = self.qtypes[qname]
        rng = stream.rng
        variants = self.variants_for(qt, split)
        anchors = stream.cycle(self.anchor_key(qname, slot), lambda: self.anchors(qname, slot))
        anchor = next(anchors, None)
        if anchor is None:
            return None
        for attempt in range(self.max_attempts):
            if attempt and attempt % 10 == 0:
                anchor = next(anchors)
            variant = rng.choice(variants)
            draft = self.build(qname, rng, anchor, slot, variant)
            if draft is None or not self.in_split(qt, draft.key, split):
                continue
            question = qt.paraphrases[variant % len(qt.paraphrases)].format(**draft.fill)
            if question in seen:
                continue
            return self._finish(draft, question, qname, variant, slot, split, index, seed)
        return None

    def _finish(self, d: Draft, question: str, qname: str, variant: int, slot: Any,
                split: str, index: int, seed: int) -> Example:
        meta = {"qtype": qname, "variant": variant, "facts": list(d.facts), "split": split}
        ex_id = f"{self.info.name}-{split}-s{seed}-{index:05d}"
        if d.correct is None:
            return Example(ex_id, question, list(d.golds), d.rationale, d.knowledge, None, meta)
        options = list(d.distractors)
        pos = int(slot)
        options.insert(pos, d.correct)
        return Example(ex_id, question, [OPTION_LETTERS[pos]], d.rationale, d.knowledge,
                       options, meta)

    # --------------------------------------------------------------- notebook
    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            n_facts=len(self.facts),
            example_facts=list(self.facts.values())[:6],
            templates={
                name: {
                    "weight": self.weights.get(name, 0.0),
                    "paraphrases": list(qt.paraphrases),
                    "train_variants": self.variants_for(qt, "train"),
                    "eval_variants": self.variants_for(qt, "test"),
                    "numbers_split": qt.key_split,
                }
                for name, qt in self.qtypes.items()
            },
            sizes=dict(self.sizes),
        )
        return info


def _pick_gold_slot(task: SyntheticTask, stream: _Stream, qname: str) -> int:
    """Gold option position: balanced cycle over 4 positions, or uniform."""
    if task.params["balance"]:
        return next(stream.cycle(("gold-letter",), lambda: range(4)))
    return stream.rng.randrange(4)


# ====================================================================== synth_ifqa

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

    defaults: ClassVar[dict[str, Any]] = {**SyntheticTask.common_defaults, "n_entities": 10}
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
        names = _invent_names(rng, n, suffixes, set())
        self.entities: dict[str, dict[str, Any]] = {}
        for name in names:
            kind = rng.choice(sorted(_KINDS))
            attrs = rng.sample(_KINDS[kind], 2)
            values = {a: rng.randint(4, 19) for a in attrs}
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

    def build(self, qname: str, rng: random.Random, anchor: Any, slot: Any,
              variant: int) -> Draft | None:
        rg = _IFQA_RANGES[self.params["difficulty"]]
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
                         f"{e} was founded in {y}; {y} {op} {k} = {ans}.", (f"{e}.founded",))
        e, attr = anchor
        v = self.entities[e]["values"][attr]
        fact = self.facts[f"{e}.{attr}"]
        fid = f"{e}.{attr}"
        if qname in ("add", "sub", "times", "recall"):
            if qname == "recall":
                return Draft(("recall", e, attr), {"e": e, "attr": attr},
                             _number_aliases(v, attr), fact, fact, (fid,))
            if qname == "times":
                k = rng.choice(rg["times"])
                ans, step = v * k, f"{v} x {k}"
            elif qname == "add":
                k = rng.choice(rg["k"])
                ans, step = v + k, f"{v} + {k}"
            else:
                k = rng.randint(1, v - 1)
                ans, step = v - k, f"{v} - {k}"
            return Draft((qname, e, attr, k), {"e": e, "attr": attr, "k": k},
                         _number_aliases(ans, attr), fact, f"{e} has {v} {attr}; {step} = {ans}.",
                         (fid,))
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
                         _number_aliases(ans, attr), f"{fact} {fact2}",
                         f"{e} has {v} {attr} and {e2} has {v2}; {v} + {v2} = {ans}.", facts)
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
                     f"so {winner}.", facts)

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


# ======================================================================= synth_med

_ORGANS = ["liver", "kidneys", "lungs", "heart", "skin", "stomach", "eyes", "spleen"]
_DISEASE_WORDS = ["fever", "palsy", "syndrome", "blight", "rash", "ague", "disease", "pox"]
_PERSONS = ["farmer", "teacher", "student", "sailor", "baker", "nurse", "miner", "weaver",
            "clerk", "painter", "carpenter", "fisher"]
_DOSES = range(2, 10)  # mg per kg
_MED_WEIGHTS = {"easy": range(10, 101, 5), "medium": range(10, 61), "hard": range(11, 100)}


@register("synth_med")
class SynthMed(SyntheticTask):
    """Four-option questions about invented drugs (see the module docstring)."""

    defaults: ClassVar[dict[str, Any]] = {**SyntheticTask.common_defaults, "n_drugs": 10}
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
        drugs = _invent_names(rng, n, ["zine", "mol", "tanib", "oxil", "pril", "vir",
                                       "dronate", "cillin", "statin", "afen"], taken)
        stems = _invent_names(rng, n, ["an", "ish", "ic", "ar", "en"], taken)
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

    def plan_slot(self, stream: _Stream, weights: dict[str, float]) -> tuple[str, Any]:
        qname = stream.rotate(weights)
        return qname, _pick_gold_slot(self, stream, qname)

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
            w = rng.choice(_MED_WEIGHTS[self.params["difficulty"]])
            dose = info["dose"]
            others = rng.sample([x for x in _DOSES if x != dose], 3)
            return Draft(("dose", drug, w), {"d": drug, "w": w}, [],
                         self.facts[f"{drug}.dose"],
                         f"{drug} is dosed at {dose} mg per kg; {dose} x {w} = {dose * w} mg.",
                         (f"{drug}.dose",), correct=f"{dose * w} mg",
                         distractors=tuple(f"{x * w} mg" for x in others))
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


# ==================================================================== synth_safety

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
        groups = _invent_names(rng, n_groups, ["i", "ari", "eni", "uni", "oth", "ani"], set())
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

    def plan_slot(self, stream: _Stream, weights: dict[str, float]) -> tuple[str, Any]:
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
        return Draft((g, a, cond, intro), fill, [label], fact, f"{fact} {why}", (f"{g}.{a}",))

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
