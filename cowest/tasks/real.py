"""The paper's three real datasets: IfQA, MedMCQA and ProsocialDialog.

Each task reads either local files (`path`) or the Hugging Face hub (`hub_id`, default
below) through `datasets`. Nothing is fetched at import or construction time; the first
`load`/`corpus` call reads the data. When the hub cannot be used (offline mode set, host
unreachable, no access) the loader stops at once with `DatasetUnavailable`, whose message
names the dataset, the hub id, and how to make the data available.

`path` may be
- a directory: files whose names contain "train", "dev"/"val"/"validation" or "test"
  (.json, .jsonl, .csv or .parquet) are the source splits;
- a single such file (it serves the split its name names);
- a mapping {"train": file, "validation": file, "test": file} (any subset).
JSON files may hold a list of records, {"data": [...]}, or one record per line.

`load(split, n, seed)` shuffles the split with `seed` and converts items until it has
`n` (all when None); rows that cannot be used (no gold answer) are skipped.

Field mapping and choices
-------------------------
ifqa (`jeggers/ifqa`, or the official files from allenai.org/data/ifqa)
    question <- "question" (or "query"/"input"); golds <- "answer"/"answers" (a string,
    a list of aliases, a dict with "text"/"aliases"/"answer", or a list of such dicts),
    first alias = canonical answer; knowledge and rationale <- the supporting
    "passage"/"context"/"evidence" when present (trimmed to `max_rationale_words`),
    else empty (targets then use "The answer is X."). Source splits train /
    validation (dev) / test; with no validation split, `val_size` items held out of
    train (seeded by `split_seed`) serve as validation.
    corpus(): the training passages, or "question answer" pairs when there are none.
medmcqa (`openlifescienceai/medmcqa`)
    question; options <- opa, opb, opc, opd (A-D, original order); gold <- cop (0-3 on
    the hub; the official JSON release uses 1-4: `cop_base="auto"` detects which from
    the file, or set 0/1); rationale <- exp trimmed to `max_rationale_words`, knowledge
    <- its first sentence. The public test labels are hidden, so test <- the source
    validation split, validation <- `val_size` items held out of train (seeded by
    `split_seed`), train <- the rest. Rows without a valid cop are skipped.
    corpus(): the explanations of our train split.
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

import ast
import csv
import json
import os
import random
import re
import socket
import threading
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence
from urllib.parse import urlparse

from .base import OPTION_LETTERS, DatasetUnavailable, Example, Split, Task, TaskInfo, register

SPLITS = ("train", "validation", "test")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_SPLIT_WORDS = {"train": "train", "dev": "validation", "val": "validation",
                "valid": "validation", "validation": "validation", "test": "test"}


# ------------------------------------------------------------------ small helpers

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_ABBREV = {"ans", "dr", "mr", "mrs", "ms", "vs", "fig", "eg", "ie", "no", "approx", "viz",
           "cf", "st", "resp", "al", "ref", "refs", "vol", "pg", "pp", "ch", "sec"}


def sentences(text: str) -> list[str]:
    """Split at ". ", "! ", "? ", but not after short abbreviations ("Ans.", "i.e.", "Dr.")."""
    out: list[str] = []
    for piece in re.split(r"(?<=[.!?])\s+", " ".join(str(text or "").split())):
        if not piece:
            continue
        last = out[-1].split()[-1] if out else ""
        if out and last.endswith(".") and (last.lower().strip(".(") in _ABBREV or "." in last[:-1]):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return out


def trim_words(text: str, max_words: int) -> str:
    """Whole sentences up to `max_words` words; a too-long first sentence is cut."""
    text = " ".join(str(text or "").split())
    if not text or max_words <= 0:
        return ""
    out: list[str] = []
    count = 0
    for s in sentences(text):
        w = len(s.split())
        if count + w > max_words:
            break
        out.append(s)
        count += w
    if not out:
        return " ".join(text.split()[:max_words]) + " ..."
    return " ".join(out)


def _first_sentence(text: str, max_words: int) -> str:
    parts = sentences(text)
    return trim_words(parts[0], max_words) if parts else ""


def _listify(value: Any) -> list[Any]:
    """A field that should be a list: lists pass, JSON/Python list strings are parsed."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            for parse in (json.loads, ast.literal_eval):
                try:
                    got = parse(s)
                    if isinstance(got, list):
                        return got
                except (ValueError, SyntaxError):
                    pass
        return [value] if s else []
    return [value]


def _first_field(rec: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in rec and rec[name] not in (None, ""):
            return rec[name]
    return None


# ------------------------------------------------------------------- file reading

def _read_json(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        for key in ("data", "examples", "questions", "rows", "instances"):
            if isinstance(data.get(key), list):
                return [r for r in data[key] if isinstance(r, dict)]
        lists = [v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1:
            return lists[0]
        if data and all(isinstance(v, dict) for v in data.values()):
            return [{"id": k, **v} for k, v in data.items()]
        return [data]
    raise ValueError(f"{path}: no records found")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of one local file (.json, .jsonl, .csv, .parquet)."""
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return _read_json(path)
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with `datasets`

        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported file type (use {', '.join(EXTENSIONS)})")


def _split_of_name(name: str) -> str | None:
    tokens = re.split(r"[^a-z]+", name.lower())
    for tok in tokens:
        if tok in _SPLIT_WORDS:
            return _SPLIT_WORDS[tok]
    return None


# ----------------------------------------------------------------------- hub access

def _hub_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)  # name resolution has no timeout of its own
    return bool(result and result[0])


def _hub_cached(hub_id: str) -> bool:
    """Whether any copy of `hub_id` sits in the local Hugging Face caches."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    ds = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    org_name = hub_id.replace("/", "--")
    candidates = [hub / f"datasets--{org_name}", ds / hub_id.replace("/", "___")]
    return any(c.exists() for c in candidates)


class _Rows:
    """A read-only view of some rows of a list or a `datasets.Dataset`."""

    def __init__(self, rows: Any, indices: Sequence[int] | None = None) -> None:
        self.rows = rows
        self.indices = list(range(len(rows))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.rows[self.indices[i]])


# ------------------------------------------------------------------------ the base

class RealTask(Task):
    """Shared loading logic; subclasses map records to `Example`s."""

    hub_default: ClassVar[str] = ""
    title: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    common_defaults: ClassVar[dict[str, Any]] = {
        "path": None,
        "hub_id": None,
        "max_rationale_words": 60,
        "val_size": 500,
        "split_seed": 0,
        "connect_timeout": 3.0,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.hub_id: str = self.params["hub_id"] or self.hub_default
        self._source: dict[str, Any] | None = None
        self._splits: dict[str, _Rows] = {}

    # ------------------------------------------------------------ hooks
    def convert(self, rec: dict[str, Any], split: str, index: int) -> Example | None:
        raise NotImplementedError

    def split_plan(self, source: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """our split -> (source split, part) with part "all", "rest" or "heldout"."""
        plan = {"train": ("train", "all"), "test": ("test", "all")}
        if "validation" in source:
            plan["validation"] = ("validation", "all")
        else:
            plan["validation"] = ("train", "heldout")
            plan["train"] = ("train", "rest")
        return plan

    # ------------------------------------------------------------ errors
    def unavailable(self, why: str) -> DatasetUnavailable:
        return DatasetUnavailable(
            f"{self.title} ({self.info.name}) is unavailable: {why}. Hub id: {self.hub_id!r}. "
            f"To use it, either download it (from https://huggingface.co/datasets/"
            f"{self.hub_id} or {self.homepage}) and pass `path:` (a file or folder of "
            f"json/jsonl/csv/parquet, see cowest/tasks/real.py) in the task profile; or run "
            f"with hub access (unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, log in with "
            f"`huggingface-cli login` or set HF_TOKEN if the dataset is gated); or use the "
            f"offline synthetic task instead."
        )

    # ------------------------------------------------------------ reading
    def _read_local(self, spec: Any) -> dict[str, list[dict[str, Any]]]:
        if isinstance(spec, Mapping):
            files = {}
            for k, v in spec.items():
                key = _SPLIT_WORDS.get(str(k).lower())
                if key is None:
                    raise ValueError(f"path mapping key {k!r} is not a split name")
                files[key] = Path(v)
        else:
            root = Path(spec)
            if not root.exists():
                raise self.unavailable(f"path {root} does not exist")
            cands = sorted(root.iterdir()) if root.is_dir() else [root]
            files = {}
            for f in cands:
                split = _split_of_name(f.name)
                usable = f.is_file() and f.name.lower().endswith(EXTENSIONS)
                if usable and split and split not in files:
                    files[split] = f
            if not files:
                raise self.unavailable(
                    f"no train/dev/validation/test .json/.jsonl/.csv/.parquet file in {root}"
                )
        out = {}
        for split, f in files.items():
            if not f.exists():
                raise self.unavailable(f"file {f} does not exist")
            out[split] = read_records(f)
        return out

    def _read_hub(self) -> dict[str, Any]:
        offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
        if offline and not _hub_cached(self.hub_id):
            raise self.unavailable("offline mode is set (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) "
                                   "and no cached copy was found")
        if not offline and not _hub_reachable(float(self.params["connect_timeout"])):
            raise self.unavailable("the Hugging Face hub cannot be reached (no network?); "
                                   "if a cached copy exists, set HF_HUB_OFFLINE=1 to use it")
        try:
            import datasets

            dd = datasets.load_dataset(self.hub_id)
        except DatasetUnavailable:
            raise
        except Exception as err:  # connection, auth, missing repo, cache miss...
            raise self.unavailable(f"loading from the hub failed ({type(err).__name__}: "
                                   f"{str(err)[:300]})") from err
        return {_SPLIT_WORDS.get(k.lower(), k): v for k, v in dd.items()}

    def source(self) -> dict[str, Any]:
        if self._source is None:
            path = self.params["path"]
            self._source = self._read_local(path) if path else self._read_hub()
        return self._source

    def rows(self, split: str) -> _Rows:
        """The rows of one of our splits (after the split plan)."""
        self._check_split(split)
        if split not in self._splits:
            src = self.source()
            name, part = self.split_plan(src)[split]
            if name not in src:
                where = self.params["path"] or self.hub_id
                raise self.unavailable(f"{where} has no {name!r} split (needed for {split})")
            data = src[name]
            if part == "all":
                self._splits[split] = _Rows(data)
            else:
                order = list(range(len(data)))
                random.Random(f"{self.info.name}|{self.params['split_seed']}").shuffle(order)
                k = min(int(self.params["val_size"]), len(data) // 5)
                picked = order[:k] if part == "heldout" else order[k:]
                self._splits[split] = _Rows(data, sorted(picked))
        return self._splits[split]

    # ------------------------------------------------------------ API
    def load(self, split: Split, n: int | None = None, seed: int = 0) -> list[Example]:
        rows = self.rows(split)
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        out: list[Example] = []
        for i in order:
            ex = self.convert(rows[i], split, rows.indices[i])
            if ex is not None:
                out.append(ex)
                if n is not None and len(out) >= n:
                    break
        return out

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(hub_id=self.hub_id, title=self.title, homepage=self.homepage)
        return info

    def _trim(self, text: str) -> str:
        return trim_words(text, int(self.params["max_rationale_words"]))


def _make_id(rec: Mapping[str, Any], prefix: str, split: str, index: int) -> str:
    rid = _first_field(rec, ("id", "qid", "question_id", "_id"))
    return str(rid) if rid is not None else f"{prefix}-{split}-{index}"


# ---------------------------------------------------------------------------- IfQA

def _aliases(value: Any) -> list[str]:
    """Answer aliases from a string, a list, a dict or a list of dicts."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, str):
            parsed = _listify(v) if v.strip().startswith("[") else [v]
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
        question = _first_field(rec, ("question", "query", "input", "q"))
        golds = _aliases(_first_field(rec, ("answer", "answers", "gold", "golds", "target",
                                            "targets", "output", "label")))
        if not question or not golds:
            return None
        passage = _first_field(rec, ("passage", "context", "evidence", "paragraph",
                                     "explanation", "support"))
        if isinstance(passage, (list, tuple)):
            passage = " ".join(str(p) for p in passage)
        passage = self._trim(str(passage)) if passage else ""
        return Example(_make_id(rec, "ifqa", split, index), " ".join(str(question).split()),
                       golds, rationale=passage, knowledge=passage,
                       meta={"source_index": index})

    def corpus(self) -> list[str]:
        docs = []
        for ex in self.load("train"):
            docs.append(ex.knowledge or f"{ex.question} {ex.golds[0]}")
        return list(dict.fromkeys(docs))


# ------------------------------------------------------------------------- MedMCQA

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

    def rows(self, split: str) -> _Rows:
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
        return Example(_make_id(rec, "medmcqa", split, index), " ".join(str(question).split()),
                       [OPTION_LETTERS[gold]], rationale=trim_words(exp, words),
                       knowledge=_first_sentence(exp, words), options=options, meta=meta)

    def corpus(self) -> list[str]:
        docs = [ex.rationale for ex in self.load("train") if ex.rationale]
        return list(dict.fromkeys(docs))


# ------------------------------------------------------------------ ProsocialDialog

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
        rots = [" ".join(str(r).split()) for r in _listify(rec.get("rots")) if str(r).strip()]
        reasons = [str(r) for r in _listify(rec.get("safety_annotation_reasons")) if str(r).strip()]
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
            docs.extend(" ".join(str(r).split()) for r in _listify(rows[i].get("rots")))
        return [d for d in dict.fromkeys(docs) if d]
