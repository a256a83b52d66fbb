"""Shared loading code of the real datasets: local files or the Hugging Face hub, the
offline checks and the base class `RealTask` that every dataset subclasses.

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
"""

from __future__ import annotations

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

from ..base import DatasetUnavailable, Example, Split, Task
from .text import first_field, trim_words

SPLITS = ("train", "validation", "test")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_SPLIT_WORDS = {"train": "train", "dev": "validation", "val": "validation",
                "valid": "validation", "validation": "validation", "test": "test"}


# ------------------------------------------------------------------ small helpers

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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


class Rows:
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
        "revision": None,  # hub commit of the dataset (None: the latest, unpinned)
        "max_rationale_words": 60,
        "val_size": 500,
        "split_seed": 0,
        "connect_timeout": 3.0,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.hub_id: str = self.params["hub_id"] or self.hub_default
        self._source: dict[str, Any] | None = None
        self._splits: dict[str, Rows] = {}

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
            f"json/jsonl/csv/parquet, see cowest/tasks/real/common.py) in the task profile; or run "
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

            dd = datasets.load_dataset(self.hub_id, revision=self.params["revision"])
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

    def rows(self, split: str) -> Rows:
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
                self._splits[split] = Rows(data)
            else:
                order = list(range(len(data)))
                random.Random(f"{self.info.name}|{self.params['split_seed']}").shuffle(order)
                k = min(int(self.params["val_size"]), len(data) // 5)
                picked = order[:k] if part == "heldout" else order[k:]
                self._splits[split] = Rows(data, sorted(picked))
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


def make_id(rec: Mapping[str, Any], prefix: str, split: str, index: int) -> str:
    rid = first_field(rec, ("id", "qid", "question_id", "_id"))
    return str(rid) if rid is not None else f"{prefix}-{split}-{index}"
