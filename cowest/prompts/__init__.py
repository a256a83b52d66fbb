"""Prompt templates: plain text files, one place, versioned.

Each `<name>.txt` starts with header lines beginning with `##` (documentation, and a
`## version: N` line for people); the rest is a `str.format` template. Stages are keyed by
the template's text (`digest`), not its version number, so editing a template redoes
exactly the stages that render it, bumped version or not. Static instructions come first and the per-item parts last, so a
local llama.cpp server can reuse its prompt-prefix cache between requests.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[str, int]:
    path = PROMPT_DIR / f"{name}.txt"
    if not path.exists():
        known = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
        raise KeyError(f"no prompt template {name!r}; known: {known}")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [ln for ln in lines if ln.startswith("##")]
    body = "\n".join(ln for ln in lines if not ln.startswith("##")).strip("\n")
    m = next((re.match(r"##\s*version:\s*(\d+)", h) for h in header if "version" in h), None)
    if not m:
        raise ValueError(f"{path}: missing '## version: N' header line")
    return body, int(m.group(1))


def fields(name: str) -> set[str]:
    """The placeholders a template expects."""
    return {f for _, f, _, _ in string.Formatter().parse(_load(name)[0]) if f}


def render(name: str, **values: str) -> str:
    """Fill template `name`; a missing or unexpected value is an error, not a blank."""
    body, _ = _load(name)
    want = fields(name)
    if set(values) != want:
        raise KeyError(f"prompt {name!r} takes {sorted(want)}, got {sorted(values)}")
    return body.format(**values)


def version(name: str) -> int:
    return _load(name)[1]


def digest(*names: str) -> dict[str, str]:
    """A short hash of each named template's text (what a stage's key records)."""
    import hashlib

    return {n: hashlib.sha256(_load(n)[0].encode()).hexdigest()[:12] for n in names}


def names() -> list[str]:
    return [p.stem for p in sorted(PROMPT_DIR.glob("*.txt"))]


def versions() -> dict[str, int]:
    return {p.stem: version(p.stem) for p in sorted(PROMPT_DIR.glob("*.txt"))}
