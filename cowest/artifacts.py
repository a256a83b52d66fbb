"""Artifacts on disk: atomic writes, JSON / JSONL files, and the stage store.

Every stage of the pipeline writes into a folder named by the hash of its inputs (see
`Store`) and finishes by writing a marker `_done.json`. A stage that dies half-way leaves
no marker (and no half-written file, since files are written to a temporary name and
renamed), so the next run redoes it.

Files are written with the usual permissions (0o666 & ~umask; folders 0o777 & ~umask) and
fsynced before the rename that publishes them, so a crash or a power cut leaves either the
old file or the new one. The marker records the size and sha256 of every file of the stage
(and the line count of JSON / JSONL files); a reused stage is checked against it, so a file
that was cut or edited since stops the run with an `ArtifactError` instead of being used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from cowest import CowestWarning

MARKER = "_done.json"
JOURNAL = "journal.jsonl"  # one line per stage built or reused (what the runner counts)


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ArtifactError(ValueError):
    """A stage file or a JSON / JSONL file is corrupt, cut or edited; the message says the fix."""


def _umask() -> int:
    """The process umask, read without changing it where the system allows it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore (a short race with other threads)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every system can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file, fsync it, rename it over `path`, fsync the folder.

    The file gets the permissions an ordinary `open(path, "w")` would give (0o666 & ~umask),
    not the 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def _stage_folder(path: Path, levels: int = 4) -> Path | None:
    """The stage folder holding `path` (the nearest folder above it with a marker), if any."""
    for parent in list(Path(path).parents)[:levels]:
        if (parent / MARKER).exists():
            return parent
    return None


def _fix(path: Path) -> str:
    folder = _stage_folder(path)
    if folder is not None:
        return f"delete {folder} to rebuild the stage"
    return f"delete {path} (the step that wrote it writes it again) or restore it"


def read_json(path: Path) -> Any:
    """The JSON value in `path`; a corrupt file raises `ArtifactError` naming it and the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): the file "
                            f"was cut or edited; {_fix(path)}") from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text (byte {e.start}): the file is corrupt; {_fix(path)}") from None


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(
        path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON value per non-blank line; a corrupt line raises `ArtifactError` naming the file,
    the line (1-based, blank lines counted, as an editor shows it) and the fix."""
    path = Path(path)
    out = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ArtifactError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno}): the file was "
                                    f"cut or edited; {_fix(path)}") from None
            except UnicodeDecodeError:
                raise ArtifactError(f"{path}, line {n}: not UTF-8 text: the file is corrupt; {_fix(path)}") from None
    return out


def _fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then the folders (best effort)."""
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_dir(target: Path, commit: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name; it replaces `target` only on success.

    The folder gets the permissions of an ordinary `mkdir` (0o777 & ~umask), and its files
    are fsynced before the rename. ``commit=False`` builds and discards (a training process
    that is not the main one of a multi-process run).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if not commit:
            return
        _fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_digest(path: Path) -> str:
    """sha256 (16 hex chars) of a file's bytes: how a stage names the content it consumed."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


#: the stage's own JSON / JSONL files (at the top of its folder) are checked by content
#: (sha256 and line count) each time the stage is reused: cheap. Files in subfolders (an
#: adapter: weights, tokenizer files, large) are checked by their size only.
CHECKED_BY_CONTENT = (".jsonl", ".json")


def _checked_by_content(rel: Path) -> bool:
    return rel.suffix in CHECKED_BY_CONTENT and len(rel.parts) == 1


def _is_temporary(rel: Path) -> bool:
    # atomic_write_text's ".<name>.XXXX.tmp", atomic_dir's ".<name>.XXXX/", partial downloads
    return any(part.startswith(".") for part in rel.parts) or rel.suffix in (".tmp", ".partial")


def _remove_temporaries(folder: Path) -> None:
    """Remove what a killed build left at the top of a stage folder: atomic_write_text's
    ``.<name>.XXXX.tmp`` files and atomic_dir's ``.<name>.XXXX/`` folders."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") and "." in entry.name[1:]:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _count_lines(path: Path) -> int:
    """Non-blank lines: the items of a JSONL file."""
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def record_files(folder: Path) -> dict[str, dict[str, Any]]:
    """What a stage marker records of the stage's files: ``{relative path: {size, sha256[, lines]}}``.

    Every file under `folder` (recursively) but the marker and temporary files; `lines` (the
    non-blank lines: a JSONL file's items) for the JSON and JSONL files checked by content.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if rel.as_posix() == MARKER or _is_temporary(rel) or not path.is_file():
            continue
        rec: dict[str, Any] = {"size": path.stat().st_size, "sha256": file_digest(path)}
        if _checked_by_content(rel):
            rec["lines"] = _count_lines(path)
        out[rel.as_posix()] = rec
    return out


def verify_file(path: Path, rec: dict[str, Any], folder: Path) -> None:
    """Check one file of stage `folder` against its record: its size, and for the stage's
    JSON / JSONL files its line count and sha256.

    Raises `ArtifactError` (one line: the file, what differs, the fix) on a mismatch.
    """
    fix = f"delete {folder} to rebuild the stage"
    size = path.stat().st_size
    if _checked_by_content(path.relative_to(folder)):
        lines = _count_lines(path)
        if "lines" in rec and lines != rec["lines"]:
            what = ("item" if path.suffix == ".jsonl" else "line") + ("" if lines == 1 else "s")
            raise ArtifactError(f"{path}: has {lines} {what}, the stage recorded {rec['lines']}: the file was cut "
                                f"or edited; {fix}")
        if "sha256" in rec and (size != rec.get("size", size) or file_digest(path) != rec["sha256"]):
            raise ArtifactError(f"{path}: its content differs from what the stage wrote (sha256 "
                                f"{file_digest(path)}, {size} bytes; recorded {rec['sha256']}, "
                                f"{rec.get('size')} bytes): the file was edited; {fix}")
    if "size" in rec and size != rec["size"]:
        raise ArtifactError(f"{path}: is {size} bytes, the stage recorded {rec['size']}: the file was cut or "
                            f"replaced; {fix}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (released when the process dies, so never stale)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Store:
    """Stage artifacts addressed by their inputs: ``<root>/<kind>/<key>/``.

    A stage's key is ``stable_hash([kind, material])``, where ``material`` is exactly what
    changes the stage's output (its own settings, the keys or content hashes of its inputs,
    the text of the prompts it renders, seeds). Two callers that ask for the same material
    get the same folder, so the stage is computed once whatever they call it; a readable
    name (``alias``) is a symbolic link ``<root>/by-name/<kind>/<alias>`` to that folder.

    A folder holds its files and, once complete, the marker ``_done.json`` (the key, the
    material, for inspection, and the size and sha256 of every file, with the line count of
    JSON / JSONL files). ``build`` may return the number of items that failed (e.g.
    strong-model replies that still failed after their retries): the files stay for this
    run to read, but no marker is written, so the next run builds the stage again, and
    since failed replies are never cached, it asks again for exactly those.

    A stage is reused when its marker is there and every declared and recorded file exists
    (adapters are not committed, so a fresh clone rebuilds them); otherwise it is rebuilt.
    On reuse every file's size, and the sha256 and line count of JSON / JSONL files, are
    checked against the marker: a file cut or edited since raises `ArtifactError`, which
    names it and says to delete the folder, instead of being used. (Adapter weights are
    checked by size only: they are large, and what depends on them is keyed by their
    content hash anyway.) ``force`` is a token: a stage built under the same token is
    reused, so one forced run (several notebooks, several processes) rebuilds each stage
    once.
    """

    def __init__(self, root: Path, *, force: str | None = None) -> None:
        self.root = Path(root)
        self.force = force
        self.built: list[tuple[str, str]] = []  # (kind, key) built by this process
        self.reused: list[tuple[str, str]] = []
        self.incomplete: set[tuple[str, str]] = set()  # built unfinished by this process: kept until the next run

    def key(self, kind: str, material: Any) -> str:
        return stable_hash([kind, material])

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def is_done(self, kind: str, key: str, outputs: Iterable[str] = ()) -> bool:
        """Whether the stage is finished and may be reused (its files checked against the marker).

        False (rebuild) without a marker, with another key, with a declared or recorded file
        missing (adapters are not committed), or under another force token. A file that is
        there but differs from what the marker recorded raises `ArtifactError`.
        """
        folder = self.folder(kind, key)
        marker = folder / MARKER
        if not marker.exists():
            return False
        info = read_json(marker)
        if info.get("key") != key or not all((folder / o).exists() for o in outputs):
            return False
        if self.force is not None and info.get("forced_by") != self.force:
            return False
        files = info.get("files")
        if files is None:  # a marker written before files were recorded: trusted as it is
            return True
        if not all((folder / rel).exists() for rel in files):
            return False
        for rel, rec in files.items():
            verify_file(folder / rel, rec, folder)
        return True

    def stage(self, kind: str, material: Any, build: Callable[[Path], Any], *,
              outputs: Iterable[str] = (), alias: str | None = None) -> Path:
        """The folder of stage ``kind`` for ``material``, built by ``build(folder)`` if needed.

        Builds hold an exclusive lock on ``<root>/<kind>/.<key>.lock``, so two processes that
        ask for the same stage (two notebooks open in JupyterLab) build it once. A stage this
        process left unfinished is handed back as it is for the rest of the process (every
        cell of a notebook sees the same result); the next run retries it.
        """
        outputs = list(outputs)
        key = self.key(kind, material)
        folder = self.folder(kind, key)
        if (kind, key) in self.incomplete:
            pass
        elif self.is_done(kind, key, outputs):
            self.reused.append((kind, key))
            self._journal("reused", kind, key)
        else:
            with _locked(self.root / kind / f".{key}.lock"):
                if self.is_done(kind, key, outputs):  # another process built it while we waited
                    self.reused.append((kind, key))
                    self._journal("reused", kind, key)
                else:
                    self._build(kind, key, material, folder, build, outputs, alias)
        if alias:
            self.link(kind, alias, folder)
        return folder

    def _build(self, kind: str, key: str, material: Any, folder: Path, build: Callable[[Path], Any],
               outputs: list[str], alias: str | None = None) -> None:
        t0 = time.monotonic()
        self._journal("started", kind, key, alias=alias)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).unlink(missing_ok=True)
        _remove_temporaries(folder)  # left by a build that was killed
        failed = build(folder)
        missing = [o for o in outputs if not (folder / o).exists()]
        if missing:
            raise RuntimeError(f"stage {kind} ({folder}) finished without its outputs {missing}")
        if isinstance(failed, int) and failed > 0:
            self.incomplete.add((kind, key))
            self._journal("incomplete", kind, key, alias=alias, seconds=round(time.monotonic() - t0, 1))
            warnings.warn(f"stage {kind} {key}: {failed} item(s) failed; it is left unfinished and the next "
                          "run retries them", CowestWarning, stacklevel=2)
        else:
            write_json(folder / MARKER, {"key": key, "kind": kind, "forced_by": self.force, "material": material,
                                         "files": record_files(folder)})
            self._journal("built", kind, key, alias=alias, seconds=round(time.monotonic() - t0, 1))
        self.built.append((kind, key))

    def progress(self, kind: str, text: str) -> None:
        """A progress line of a stage being built (the runner prints it; nothing counts it)."""
        self._journal("progress", kind, "", text=text)

    def _journal(self, event: str, kind: str, key: str, **extra: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"event": event, "kind": kind, "key": key, **{k: v for k, v in extra.items() if v is not None}}
        with (self.root / JOURNAL).open("a", encoding="utf-8") as f:  # one short line: appends are atomic
            f.write(json.dumps(record) + "\n")

    def link(self, kind: str, alias: str, folder: Path) -> None:
        """``by-name/<kind>/<alias>`` -> ``folder`` (a relative link, so results can move)."""
        link = self.root / "by-name" / kind / alias
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(folder, link.parent)
        if link.is_symlink() and os.readlink(link) == target:
            return
        tmp = link.with_name(f".{link.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(target, tmp)
        os.replace(tmp, link)
