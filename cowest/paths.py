"""Where things live: the one module that knows the project's folders.

    <repo>/configs/            profiles (YAML)
    <repo>/notebooks/          the numbered notebooks (sources, without outputs)
    <results>/<profile>/       what a run writes: notebooks/, tables/, figures/, runs/,
                               manifest.json, cache.sqlite
    $COWEST_HOME (.cowest/)    models and other heavy local files (git-ignored)

The results root is `<repo>/results` unless `COWEST_RESULTS` says otherwise (the tests
point it at a temporary folder); the notebook runner passes it to every notebook as a
papermill parameter, so a notebook writes where its runner does.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def results_root() -> Path:
    """`$COWEST_RESULTS`, default `<repo>/results`."""
    return Path(os.environ.get("COWEST_RESULTS", REPO_ROOT / "results")).resolve()


def home() -> Path:
    """`$COWEST_HOME`, default `<repo>/.cowest` (git-ignored): models, caches."""
    return Path(os.environ.get("COWEST_HOME", REPO_ROOT / ".cowest")).resolve()


def display(path: Path | str) -> str:
    """A path as a reader should see it: relative to the repository or the results root,
    never a machine's absolute path (rendered notebooks are committed documentation)."""
    p = Path(path).resolve()
    for base, label in ((results_root(), "results"), (REPO_ROOT, ""), (home(), "$COWEST_HOME")):
        if p.is_relative_to(base):
            rel = p.relative_to(base).as_posix()
            return f"{label}/{rel}".lstrip("/") if label else rel
    return p.name
