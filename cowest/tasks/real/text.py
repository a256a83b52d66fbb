"""Text helpers shared by the real datasets: sentence splitting, trimming to a word
budget, and reading list-valued or alternatively named fields of a record."""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Mapping, Sequence

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


def listify(value: Any) -> list[Any]:
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


def first_field(rec: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in rec and rec[name] not in (None, ""):
            return rec[name]
    return None
