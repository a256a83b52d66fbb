"""Answer extraction from free model text.

Every interaction format ends with one line "Answer: X", and the prompts ask both models
for it, but real outputs are messy (markdown, "Final answer:", "The answer is (B).",
an explanation after the letter, an empty answer line followed by the answer...). The
rules, in order:

1. The *answer segment* is the text after the last answer marker: "Answer:",
   "Final answer:", "Answer -" (case-insensitive, markdown `*`, `#` and backticks
   ignored), up to the end of its line; when that line is empty the next non-empty line.
   If there is no marker, the text after the last "the answer is ..." phrase. If there is
   none either, the last non-empty line of the text.
2. From that segment:
   - free-form: the segment itself, stripped of `\\boxed{}`, quotes and trailing spaces;
   - choice: a letter written as a letter ("B", "(B)", "B)", "B.", "option B",
     "choice (b)", "is B."), else the option whose *content* occurs in the segment
     (a match inside a longer match does not count; among distinct matches the
     earliest), else the option whose content starts with the whole segment (e.g. "120"
     for "120 mg") when only one does, else a leading letter followed by a lowercase
     word ("C is correct"). Letters beyond the number of options are ignored;
   - label: the label names, matched case-insensitively with underscores read as
     spaces, longest first so that "possibly needs caution" is not read as "needs
     caution"; the earliest match in the segment wins. Failing that, a word that belongs
     to exactly one label ("intervention" -> "needs intervention").
3. Nothing parseable gives None, which the metrics count as wrong.
"""

from __future__ import annotations

import re
from typing import Sequence

DEFAULT_LETTERS = "ABCD"

_MARKER = re.compile(r"(?i)\b(?:final\s+)?answer\s*(?::|：|-(?=\s))")
_ANSWER_IS = re.compile(r"(?i)\b(?:the\s+)?(?:final\s+|correct\s+)?answer\s+(?:is|would\s+be|=)\s*")
_MARKDOWN = re.compile(r"[*#`]")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _clean(text: str) -> str:
    text = _BOXED.sub(r"\1", text)
    return _MARKDOWN.sub("", text)


def _first_line(text: str) -> str:
    """The first line of `text`; the next non-empty line when the first is empty."""
    lines = text.split("\n")
    if lines and lines[0].strip():
        return lines[0].strip()
    for line in lines[1:]:
        if line.strip():
            return line.strip()
    return ""


def answer_segment(text: str | None) -> str | None:
    """The part of `text` that holds the answer (rule 1 of the module doc), or None."""
    if not text or not text.strip():
        return None
    text = _clean(text)
    markers = list(_MARKER.finditer(text))
    if markers:
        seg = _first_line(text[markers[-1].end():])
        inner = list(_ANSWER_IS.finditer(seg))  # "Answer: I think the answer is C."
        if inner and seg[inner[-1].end():].strip():
            seg = seg[inner[-1].end():].strip()
        return seg or None
    phrases = list(_ANSWER_IS.finditer(text))
    if phrases:
        seg = _first_line(text[phrases[-1].end():])
        if seg:
            return seg
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    return lines[-1] if lines else None


def has_answer_marker(text: str | None) -> bool:
    """Whether `text` states its answer explicitly ("Answer: ...", "the answer is ..."),
    rather than leaving the extractor to fall back on its last line (an output cut short)."""
    if not text or not text.strip():
        return False
    text = _clean(text)
    for pattern in (_MARKER, _ANSWER_IS):
        found = list(pattern.finditer(text))
        if found and _first_line(text[found[-1].end():]):
            return True
    return False


def has_answer_line(text: str | None) -> bool:
    """Whether `text` has an answer line ("Answer: ...", with something after the colon):
    the format every prompt asks for. An output cut by its token limit without one may have
    stopped in the middle of a sentence like "the answer is not obvious", so for a cut
    output only this line counts (`cowest.collaborate`)."""
    if not text or not text.strip():
        return False
    found = list(_MARKER.finditer(_clean(text)))
    return bool(found) and bool(_first_line(_clean(text)[found[-1].end():]))


def _strip_free(seg: str) -> str:
    seg = seg.strip()
    for left, right in ('""', "''", "“”", "‘’"):
        if len(seg) >= 2 and seg[0] == left and seg[-1] == right:
            seg = seg[1:-1].strip()
    return seg


def extract_free(text: str | None) -> str | None:
    """Free-form answer: the answer segment, stripped; None when empty."""
    seg = answer_segment(text)
    if seg is None:
        return None
    seg = _strip_free(seg)
    return seg or None


def _norm(text: str) -> str:
    """Lowercase, punctuation to spaces, single spaces (for content matching)."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def _letter_in(seg: str, letters: str) -> str | None:
    cls = f"[{letters}{letters.lower()}]"
    upper = f"[{letters}]"
    patterns = [
        # the whole segment is a letter: "B", "(b)", "B.", "[C]"
        rf"^[\(\[]?({cls})[\)\]]?\s*[\.:;,!]?$",
        # starts with a letter followed by a delimiter: "B) Drenzol", "C. 120 mg", "D - x"
        rf"^[\(\[]?({upper})(?:[\)\]]|\s*[\.:\-–,])(?:\s|$)",
        # "option B", "choice (c)"
        rf"(?i:\b(?:option|choice))\s*[\(\[]?({cls})[\)\]]?(?!\w)",
        # "(B)" anywhere
        rf"\(({upper})\)",
        # "is B." / "is B" at the end
        rf"(?i:\bis)\s+[\(\[]?({upper})[\)\]]?(?=\s*(?:[\.\),:;!]|$))",
    ]
    for pat in patterns:
        m = re.search(pat, seg)
        if m:
            return m.group(1).upper()
    return None


def _content_in(seg: str, options: Sequence[str], letters: str) -> str | None:
    nseg = f" {_norm(seg)} "
    found: list[tuple[int, int, int]] = []  # (start, end, option index)
    for i, opt in enumerate(options):
        nopt = _norm(opt)
        pos = nseg.find(f" {nopt} ") if nopt else -1
        if pos >= 0:
            found.append((pos, pos + len(nopt), i))
    # drop matches lying inside a longer match ("liver" inside "liver cells")
    kept = [
        m for m in found
        if not any(o[0] <= m[0] and m[1] <= o[1] and o[1] - o[0] > m[1] - m[0] for o in found)
    ]
    if kept:
        return letters[min(kept)[2]]
    core = _norm(seg)
    if core:
        starts = [i for i, opt in enumerate(options) if _norm(opt).startswith(core + " ")]
        if len(starts) == 1:
            return letters[starts[0]]
    return None


def extract_choice(
    text: str | None,
    options: Sequence[str] | None = None,
    letters: str | None = None,
) -> str | None:
    """Option letter from model text (rule 2, choice), or None.

    `options` are the option texts in display order; without them only letters are read
    (A-D, or `letters`).
    """
    seg = answer_segment(text)
    if seg is None:
        return None
    n = len(options) if options else len(letters or DEFAULT_LETTERS)
    allowed = (letters or "ABCDEFGH")[:n] if options else (letters or DEFAULT_LETTERS)
    letter = _letter_in(seg, allowed)
    if letter is None and options:
        letter = _content_in(seg, options, allowed)
    if letter is None:
        # weakest form last: a letter then a lowercase word ("B because ...")
        m = re.match(rf"^[\(\[]?([{allowed}])[\)\]]?\s+[a-z]", seg)
        letter = m.group(1) if m else None
    return letter


def _label_norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+|_", " ", text.lower()).split())


def extract_label(text: str | None, labels: Sequence[str]) -> str | None:
    """Label name (as spelled in `labels`) from model text (rule 2, label), or None."""
    seg = answer_segment(text)
    if seg is None:
        return None
    nseg = f" {_label_norm(seg)} "
    taken = [False] * len(nseg)
    hits: list[tuple[int, str]] = []
    for label in sorted(labels, key=lambda s: -len(_label_norm(s))):
        key = f" {_label_norm(label)} "
        start = 0
        while (pos := nseg.find(key, start)) >= 0:
            span = range(pos + 1, pos + len(key) - 1)
            if not any(taken[j] for j in span):
                for j in span:
                    taken[j] = True
                hits.append((pos, label))
            start = pos + 1
    if hits:
        return min(hits)[1]
    words = set(nseg.split())
    owners: dict[str, set[str]] = {}
    for label in labels:
        for w in _label_norm(label).split():
            owners.setdefault(w, set()).add(label)
    unique = {next(iter(o)) for w, o in owners.items() if len(o) == 1 and w in words}
    if len(unique) == 1:
        return unique.pop()
    return None
