"""Render the numbered notebooks of a profile with papermill, and write the run manifest.

    results/<profile>/notebooks/NN_name.ipynb   rendered notebooks
    results/<profile>/manifest.json             commit, profile hash, versions, seeds, and per
                                                notebook: wall time, stages built and reused,
                                                strong-model requests sent; ledger totals

A failed notebook stops the run; the message names the notebook and the failing cell's
error. Finished stages are reused by the next run (see `cowest.artifacts.Store`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from cowest import assets, paths, prompts
from cowest.config import Profile, load_profile
from cowest.notebooks import NOTEBOOKS, QUIET_ENV, Notebook
from cowest.report import write_index
from cowest.artifacts import JOURNAL, atomic_write_text, read_json, read_jsonl, write_json

PACKAGES = ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "openai",
            "llama_cpp_python", "papermill", "bm25s", "pandas", "matplotlib", "seaborn", "pydantic"]


class NotebookFailed(RuntimeError):
    pass


#: the kernels' own start-up log at error level: ipykernel warns on every start that its local
#: TCP sockets are not encrypted, a line per notebook in the terminal that says nothing about the run
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "cowest" if "cowest" in KernelSpecManager().find_kernel_specs() else "python3"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def accelerator() -> dict[str, Any]:
    """The GPU a run used (name, memory, CUDA, driver), or that there was none."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None}
    props = torch.cuda.get_device_properties(0)
    out: dict[str, Any] = {"gpu": props.name, "count": torch.cuda.device_count(),
                           "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        out["driver"] = None
    return out


def hub_revisions(cfg: Profile) -> dict[str, str]:
    """Every hub model and dataset the profile names, with the commit it is pinned to."""
    out = {}
    for w in cfg.weak_models:
        if w.model not in assets.ASSETS and not Path(w.model).is_dir():
            out[f"model {w.model}"] = w.revision or "latest (unpinned)"
    for t in cfg.tasks:
        hub = t.params.get("hub_id") or getattr(_task_class(t.name), "hub_default", "")
        if hub and not t.params.get("path"):
            out[f"dataset {hub}"] = t.params.get("revision") or "latest (unpinned)"
    return out


def _task_class(name: str) -> Any:
    from cowest.tasks import TASKS

    return TASKS[name]


def _param_path(p: Path) -> str:
    """A path handed to a notebook: repository-relative when it can be (rendered notebooks show it)."""
    p = p.resolve()
    return p.relative_to(paths.REPO_ROOT).as_posix() if p.is_relative_to(paths.REPO_ROOT) else str(p)


class _Prefixed:
    """A text stream that prefixes each line a notebook prints with ``  | `` (papermill's
    ``log_output`` streams cell output to the terminal as it is produced)."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.at_start = True

    def write(self, text: str) -> int:
        out = []
        for part in text.splitlines(keepends=True):
            out.append(("  | " if self.at_start else "") + part)
            self.at_start = part.endswith("\n")
        self.stream.write("".join(out))
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _JournalTail:
    """Prints a line to the terminal when a stage starts and when it is built (from the store's
    journal, which every notebook process appends to), so hours of work are not one silent line."""

    def __init__(self, journal: Path):
        import threading

        self.journal = journal
        self.offset = journal.stat().st_size if journal.exists() else 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "_JournalTail":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        self._poll()

    def _loop(self) -> None:
        while not self.stop_event.wait(1.0):
            self._poll()

    def _poll(self) -> None:
        import json

        if not self.journal.exists():
            return
        with self.journal.open("r", encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind("\n") + 1  # whole lines only
        self.offset += len(chunk[:end].encode("utf-8"))
        for line in chunk[:end].splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e["event"] == "progress":
                print(f"[cowest]       {e.get('text', '')}", flush=True)
                continue
            what = f"{e['kind']} {e.get('alias') or e['key'][:12]}"
            if e["event"] == "started":
                print(f"[cowest]     building {what}", flush=True)
            elif e["event"] in ("built", "incomplete"):
                state = "built" if e["event"] == "built" else "left unfinished (failed items are retried next run)"
                print(f"[cowest]     {state}: {what} ({e.get('seconds', '?')} s)", flush=True)


class _Activity:
    """What one notebook did: stages built / reused (the store's journal), requests sent (the ledger)."""

    def __init__(self, out_dir: Path):
        self.journal = out_dir / "runs" / JOURNAL
        self.db = out_dir / "cache.sqlite"
        self.mark()

    def _sent(self) -> int:
        from cowest.ledger import Ledger

        if not self.db.exists():
            return 0
        return int(Ledger(self.db).totals()["requests"])  # every attempt sent, retries included

    def mark(self) -> None:
        self.lines = len(read_jsonl(self.journal)) if self.journal.exists() else 0
        self.sent = self._sent()

    def since_mark(self) -> dict[str, Any]:
        events = read_jsonl(self.journal)[self.lines:] if self.journal.exists() else []
        built = [e["kind"] for e in events if e["event"] in ("built", "incomplete")]
        unfinished = [e["kind"] for e in events if e["event"] == "incomplete"]
        return {"stages_built": {k: built.count(k) for k in sorted(set(built))},
                "stages_unfinished": {k: unfinished.count(k) for k in sorted(set(unfinished))},
                "stages_reused": sum(e["event"] == "reused" for e in events),
                "strong_requests_sent": self._sent() - self.sent}


def run(profile: str, *, only: int | None = None, start: int | None = None, force: bool = False,
        overrides: Sequence[str] = (), results_root: Path | None = None) -> Path:
    """Render the notebooks of a profile in order; returns the manifest path."""
    import papermill as pm

    cfg: Profile = load_profile(profile, overrides=list(overrides))
    # the offline model files the profile uses (weak models; local strong models), re-hashed once
    # per run: a damaged or replaced file stops the run here, not half-way through a notebook
    models = list(dict.fromkeys([w.model for w in cfg.weak_models if w.model in assets.ASSETS] + [
        s.model for s in cfg.strong_models if s.backend == "local" and s.model in assets.ASSETS]))
    assets.verify(models)
    print(f"[cowest] verified {len(models)} model files (sha256)", flush=True)
    results_root = Path(results_root or paths.results_root())
    out_dir = results_root / cfg.name
    nb_out = out_dir / "notebooks"
    nb_out.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest: dict[str, Any] = read_json(manifest_path) if manifest_path.exists() else {}
    if manifest.get("profile_hash") != cfg.hash():
        manifest = {"notebooks": {}}
    previous_commit = manifest.get("commit")
    manifest.update({
        "profile": cfg.name, "profile_source": _param_path(Path(cfg.source)), "overrides": list(cfg.overrides),
        "profile_hash": cfg.hash(), "commit": _git_commit(), "seed": cfg.seed, "versions": versions(),
        "prompt_digests": prompts.digest(*prompts.names()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "accelerator": accelerator(),
        "hub_revisions": hub_revisions(cfg),
    })
    selected: list[Notebook] = [nb for nb in NOTEBOOKS
                                if (only is None or nb.number == only) and (start is None or nb.number >= start)]
    if not selected:
        raise SystemExit(f"no notebook matches (only={only}, from={start})")
    params = {"profile": _param_path(Path(cfg.source)), "results": _param_path(results_root),
              "force": uuid.uuid4().hex if force else False, "overrides": list(overrides)}
    kernel = _kernel()
    os.environ[QUIET_ENV] = "1"  # the kernels inherit it: no progress bars or warnings in rendered notebooks
    activity = _Activity(out_dir)
    for nb in selected:
        print(f"[cowest] {cfg.name}: running {nb.file}", flush=True)
        t0 = time.time()
        target = nb_out / nb.file
        activity.mark()
        try:
            with _JournalTail(out_dir / "runs" / JOURNAL):
                pm.execute_notebook(str(paths.NOTEBOOK_DIR / nb.file), str(target), parameters=params,
                                    kernel_name=kernel, cwd=str(paths.NOTEBOOK_DIR), progress_bar=False,
                                    report_mode=False, log_output=True, stdout_file=_Prefixed(sys.stdout),
                                    stderr_file=_Prefixed(sys.stderr), extra_arguments=KERNEL_ARGS)
        except pm.PapermillExecutionError as e:
            error = _scrub(f"{e.ename}: {e.evalue}", cfg)
            _keep_work(manifest, nb.file, previous_commit)
            manifest["notebooks"][nb.file] = {"status": "failed", "seconds": round(time.time() - t0, 1),
                                              "error": error}
            _finish(manifest, manifest_path, out_dir)
            raise NotebookFailed(
                f"{nb.file} failed in cell {e.exec_count}: {error}\n"
                f"The rendered notebook with the traceback is {_param_path(target)}"
            ) from None
        _strip_machine_paths(target, results_root)
        done = activity.since_mark()
        _keep_work(manifest, nb.file, previous_commit)
        manifest["notebooks"][nb.file] = {"status": "ok", "seconds": round(time.time() - t0, 1), **done}
        print(f"[cowest]   {time.time() - t0:.0f} s; stages built {done['stages_built'] or 'none'}, "
              f"reused {done['stages_reused']}; strong-model requests sent {done['strong_requests_sent']}",
              flush=True)
        _finish(manifest, manifest_path, out_dir)
    manifest["total_seconds"] = round(sum(v["seconds"] for v in manifest["notebooks"].values()), 1)
    _finish(manifest, manifest_path, out_dir)
    return manifest_path


def _keep_work(manifest: dict[str, Any], file: str, commit: str | None) -> None:
    """Before a notebook's entry is replaced: keep it in ``manifest["history"]`` when it did
    work (built a stage or sent a request), so that a cached rerun (seconds, nothing built)
    does not erase the record of the run that computed the results."""
    old = manifest["notebooks"].get(file)
    if old and old.get("status") == "ok" and (old.get("stages_built") or old.get("strong_requests_sent")):
        manifest.setdefault("history", []).append({"notebook": file, "commit": commit, **old})


def _strip_machine_paths(nb_path: Path, results_root: Path) -> None:
    """papermill records the absolute input and output paths: keep them relative to the
    repository (or, for a results root outside it, to that root)."""
    import json

    data = json.loads(nb_path.read_text(encoding="utf-8"))
    meta = data.get("metadata", {}).get("papermill", {})
    root = results_root.resolve()
    for k in ("input_path", "output_path"):
        if meta.get(k):
            p = Path(meta[k]).resolve()
            meta[k] = (_param_path(p) if p.is_relative_to(paths.REPO_ROOT) or not p.is_relative_to(root)
                       else f"<results>/{p.relative_to(root).as_posix()}")
    atomic_write_text(nb_path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _scrub(text: str, cfg: Profile) -> str:
    """An error's text with every API key of the profile hidden, before it is written anywhere."""
    from cowest.replies import scrub_secret

    for spec in cfg.strong_models:
        if spec.api_key_env:
            text = scrub_secret(text, os.environ.get(spec.api_key_env))
    return text


def _finish(manifest: dict[str, Any], path: Path, out_dir: Path) -> None:
    from cowest.ledger import Ledger

    gates = out_dir / "gates.json"
    if gates.exists():  # the division-of-labour gates the notebooks measured (cowest.gates)
        manifest["gates"] = read_json(gates)
    db = out_dir / "cache.sqlite"
    if db.exists():
        ledger = Ledger(db)
        manifest["ledger"] = {"totals": ledger.totals(), "by_stage": ledger.summary()}
    write_json(path, manifest)
    write_index(out_dir, manifest.get("profile", out_dir.name), manifest)
