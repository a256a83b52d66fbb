"""Shared generator code of the synthetic domains: invented names, stable hashing,
number aliases and the sampling engine (`SyntheticTask`) that every domain subclasses.

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
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

from ..base import OPTION_LETTERS, Example, Split, Task

DIFFICULTIES = ("easy", "medium", "hard")
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()


# ------------------------------------------------------------------------- names

_ONSETS = ["br", "qu", "v", "th", "m", "s", "d", "k", "t", "z", "gr", "l", "h", "n",
           "r", "f", "pl", "sk", "dr", "or", "el", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
_CODAS = ["m", "n", "l", "r", "s", "sh", "lt", "nd", "x", "th", "rn", "v", ""]


def invent_names(rng: random.Random, n: int, suffixes: Sequence[str],
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


def stable_unit(*parts: Any) -> float:
    """A number in [0, 1) from a stable hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()
    return int(digest[:12], 16) / 16**12


def number_aliases(value: int, unit: str | None = None) -> list[str]:
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
    step_only: str = ""  # the step written without the fact ("Adding 28 gives 75."): a draft style


class Stream:
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
    """Engine shared by the three synthetic domains (see `cowest.tasks.synthetic`)."""

    qtypes: ClassVar[dict[str, QType]] = {}
    default_templates: ClassVar[dict[str, dict[str, float]]] = {}
    common_defaults: ClassVar[dict[str, Any]] = {
        "kb_seed": 0,
        "templates": None,
        "difficulty": "medium",
        "balance": True,
        "sizes": None,
        "heldout_paraphrases": True,
        # the miniature's knobs (defaults keep the v1 data byte-identical)
        "target_styles": None,  # cot SFT target styles by weight: fact_step, answer_only, step_only
        "sft_recall": 0,  # recall questions per fact added to the SFT rows (train wordings)
    }
    #: wordings of a recall question; the last `recall_heldout` are kept for the knowledge gate
    recall_wordings: ClassVar[tuple[str, ...]] = ()
    recall_heldout: ClassVar[int] = 3
    TARGET_STYLES: ClassVar[tuple[str, ...]] = ("fact_step", "answer_only", "step_only")
    default_sizes: ClassVar[dict[str, int]] = {"train": 300, "validation": 100, "test": 300}
    split_fractions: ClassVar[tuple[float, float]] = (0.6, 0.8)  # train | validation | test
    max_attempts: ClassVar[int] = 200

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p["difficulty"] not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, not {p['difficulty']!r}")
        self.weights = self._parse_templates(p["templates"])
        self.styles = self._parse_styles(p["target_styles"])
        n_train_wordings = max(len(self.recall_wordings) - self.recall_heldout, 0)
        if not isinstance(p["sft_recall"], int) or not 0 <= p["sft_recall"] <= n_train_wordings:
            raise ValueError(f"{self.info.name}: sft_recall must be an integer from 0 to {n_train_wordings} "
                             f"(the training wordings of a recall question), not {p['sft_recall']!r}")
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

    def plan_slot(self, stream: Stream, weights: dict[str, float]) -> tuple[str, Any]:
        """Which qtype comes next and its slot (gold letter, label, or None)."""
        return stream.rotate(weights), None

    def anchor_key(self, qname: str, slot: Any) -> Any:
        """Items sharing this key share one fact cycle."""
        return (qname, slot)

    def recall_facts(self) -> list[tuple[str, dict[str, Any], list[str], str]]:
        """The facts a recall question can ask: (fact id, wording fill, gold aliases, fact sentence)."""
        return []

    # ------------------------------------------------------------- params
    def _parse_styles(self, spec: Any) -> dict[str, float] | None:
        if spec is None:
            return None
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"{self.info.name}: target_styles must map styles to weights, not {spec!r}")
        unknown = sorted(set(spec) - set(self.TARGET_STYLES))
        if unknown:
            raise ValueError(f"{self.info.name}: unknown target style(s) {unknown}; known: {list(self.TARGET_STYLES)}")
        styles = {str(k): float(v) for k, v in spec.items() if float(v) > 0}
        if not styles:
            raise ValueError(f"{self.info.name}: target_styles needs a positive weight")
        return styles

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
        u = stable_unit(self.info.name, self.params["kb_seed"], key)
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
        stream = Stream(rng)
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

    def _draw(self, qname: str, slot: Any, split: str, stream: Stream, seen: set[str],
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
        if self.styles is not None and d.step_only:
            meta["step_only"] = d.step_only
        ex_id = f"{self.info.name}-{split}-s{seed}-{index:05d}"
        if d.correct is None:
            return Example(ex_id, question, list(d.golds), d.rationale, d.knowledge, None, meta)
        options = list(d.distractors)
        pos = int(slot)
        options.insert(pos, d.correct)
        return Example(ex_id, question, [OPTION_LETTERS[pos]], d.rationale, d.knowledge,
                       options, meta)

    # ------------------------------------------------- SFT data and the miniature's gates
    def target_style(self, ex: Example) -> str:
        """The cot target style of a training item: a stable draw from `target_styles`."""
        if self.styles is None or ex.meta.get("qtype") == "recall":
            return "fact_step"
        u = stable_unit(self.info.name, "style", ex.id) * sum(self.styles.values())
        for style, w in self.styles.items():
            if u < w:
                return style
            u -= w
        return next(reversed(self.styles))

    def target(self, ex: Example, fmt: Any) -> str:
        """`Task.target`, with the mixed draft styles of `target_styles` for the cot format:
        fact_step (the rationale: the fact, then the step), answer_only (the answer line
        alone) and step_only (the step written without the fact)."""
        style = self.target_style(ex) if fmt == "cot" else "fact_step"
        answer = f"Answer: {self.answer_text(ex)}"
        if style == "answer_only":
            return answer
        if style == "step_only" and ex.meta.get("step_only"):
            return f"Reasoning: {ex.meta['step_only']}\n{answer}"
        return super().target(ex, fmt)

    def recall_items(self, split: Split, per_fact: int | None = None) -> list[Example]:
        """Direct recall questions of the facts ("How many bridges does Brimsholt have?").

        ``train`` uses the first wordings (``per_fact`` of them; all by default), any other
        split the last ``recall_heldout`` (held-out wordings: the weak-knowledge gate).
        """
        self._check_split(split)
        n_train = len(self.recall_wordings) - self.recall_heldout
        wordings = (list(enumerate(self.recall_wordings[:n_train]))[:per_fact] if split == "train"
                    else list(enumerate(self.recall_wordings))[n_train:])
        out = []
        for fid, fill, golds, sentence in self.recall_facts():
            for i, w in wordings:
                out.append(Example(f"{self.info.name}-recall-{split}-{fid}-{i}", w.format(**fill), list(golds),
                                   sentence, sentence, None, {"qtype": "recall", "facts": [fid], "split": split}))
        return out

    def sft_examples(self, train: list[Example]) -> list[Example]:
        """The SFT items: the training split plus ``sft_recall`` recall questions per fact."""
        extra = self.recall_items("train", self.params["sft_recall"]) if self.params["sft_recall"] else []
        return [*train, *extra]

    def states_fact(self, text: str | None, ex: Example) -> bool | None:
        """Whether `text` states the item's fact (its knowledge sentence): every number of the
        sentence appears in the text as a number; a sentence without numbers (a rule) counts
        as stated when at least 60% of its words of four letters or more appear."""
        if not ex.knowledge:
            return None
        text = text or ""
        nums = re.findall(r"\d+", ex.knowledge)
        if nums:
            have = set(re.findall(r"\d+", text))
            return all(n in have for n in nums)
        words = {w for w in re.findall(r"[a-z]+", ex.knowledge.lower()) if len(w) >= 4}
        have = set(re.findall(r"[a-z]+", text.lower()))
        return bool(words) and len(words & have) >= 0.6 * len(words)

    def with_facts(self, ex: Example) -> Example:
        """The item with its facts stated before the question (the strong-skill gate)."""
        return Example(ex.id + "-facts", f"{ex.knowledge} {ex.question}".strip(), list(ex.golds), ex.rationale,
                       ex.knowledge, ex.options, {**ex.meta, "facts_given": True})

    def wrong_step_draft(self, ex: Example) -> str | None:
        """A cot draft with the right fact and a wrong final step (the draft-use gate), or
        None when this item's rationale does not end in its answer.

        Free answers: the number one of -10, -2, -1, +1, +2, +10 away (a stable draw);
        choice: a distractor option's content and letter; label: another label."""
        rng = random.Random(f"{self.info.name}|wrong|{ex.id}")
        kind = self.info.answer_type
        if kind == "free":
            gold = ex.golds[0]
            if not gold.lstrip("-").isdigit():
                return None
            wrong = str(int(gold) + rng.choice((-10, -2, -1, 1, 2, 10)))
            gold_text, wrong_text, wrong_answer = gold, wrong, wrong
        elif kind == "choice":
            idx = OPTION_LETTERS.index(ex.golds[0])
            others = [i for i in range(len(ex.options or [])) if i != idx]
            j = rng.choice(others)
            gold_text, wrong_text, wrong_answer = ex.options[idx], ex.options[j], OPTION_LETTERS[j]
        else:
            gold_text = ex.golds[0]
            wrong_answer = wrong_text = rng.choice([lab for lab in (self.info.labels or []) if lab != gold_text])
        body = " ".join(ex.rationale.split())
        cut = body.rfind(gold_text)
        if cut < 0:
            return None
        body = body[:cut] + wrong_text + body[cut + len(gold_text):]
        return f"Reasoning: {body}\nAnswer: {wrong_answer}"

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


def pick_gold_slot(task: SyntheticTask, stream: Stream, qname: str) -> int:
    """Gold option position: balanced cycle over 4 positions, or uniform."""
    if task.params["balance"]:
        return next(stream.cycle(("gold-letter", qname), lambda: range(4)))  # balanced per question type
    return stream.rng.randrange(4)
