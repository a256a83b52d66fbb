"""Artifacts on disk: atomic writes, stage markers, JSONL traces.

Every stage of the pipeline writes into its own folder and finishes by writing a marker
`_done.json` that holds the hash of everything that produced it (the relevant config
section, the upstream markers). A stage is reused when its marker matches, and redone
otherwise; a stage that dies half-way leaves no marker (and no half-written file, since
files are written to a temporary name and renamed), so the next run redoes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
MARKER = "_done.json"


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(
        path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a folder under a temporary name; it replaces `target` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_done(folder: Path, key: str) -> bool:
    marker = folder / MARKER
    return marker.exists() and read_json(marker).get("key") == key


def mark_done(folder: Path, key: str, **info: Any) -> None:
    write_json(folder / MARKER, {"key": key, **info})


def stage(folder: Path, key_material: Any, build: Callable[[Path], T], *, force: bool = False,
          load: Callable[[Path], T] | None = None, outputs: Iterable[str] = ()) -> T | None:
    """Run `build(folder)` unless `folder` holds a marker for the same `key_material`.

    `build` writes its files into `folder` (atomically, one by one) and may return a value;
    when the stage is reused, `load(folder)` gives that value back instead. `outputs` names
    files (relative to `folder`) that must exist for a reuse: adapters are not committed, so
    a fresh clone with committed markers retrains them instead of failing later.
    """
    key = stable_hash(key_material)
    if not force and is_done(folder, key) and all((folder / o).exists() for o in outputs):
        return load(folder) if load else None
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if marker.exists():
        marker.unlink()
    result = build(folder)
    mark_done(folder, key)
    return result
