"""Offline synthetic domains: one stand-in per paper domain, generated from a seed.

Why: the real datasets need the Hugging Face hub, and no pretrained model may already
know the answers. Each domain invents a small knowledge base (invented names, so no
pretrained model knows the facts); the training split teaches the facts, and the
validation/test splits ask *new* questions about the *same* facts. Every answer needs
both a domain fact (only the fine-tuned weak model can learn it) and a general step that
a 1.5B instruction model does well and a 135M model does badly (arithmetic, comparison,
combining two facts, matching a fact to options or to a paraphrase). Each example
carries the gold `knowledge` (the fact sentences) and a short `rationale` (facts + the
step), which feed the "knowledge" and "cot" interaction formats.

Modules: `common` (shared generator code: invented names, stable hashing, number
aliases, the sampling engine `SyntheticTask`), and one module per domain, `ifqa`
(synth_ifqa), `med` (synth_med) and `safety` (synth_safety). Importing this package
registers the three tasks. Each module's docstring documents its part (below).
"""

from __future__ import annotations

from . import common, ifqa, med, safety
from .common import DIFFICULTIES, NUMBER_WORDS, Draft, QType, Stream, SyntheticTask
from .ifqa import SynthIfQA
from .med import SynthMed
from .safety import SAFETY_LABELS, SynthSafety

__all__ = [
    "DIFFICULTIES", "NUMBER_WORDS", "SAFETY_LABELS", "Draft", "QType", "Stream", "SyntheticTask",
    "SynthIfQA", "SynthMed", "SynthSafety",
]


def _section(module_doc: str | None) -> str:
    """A module's docstring without its one-paragraph summary (its part of the overview)."""
    return (module_doc or "").split("\n\n", 1)[1].strip("\n")


# The package docstring (shown by notebooks/01_data.ipynb) is the overview above followed by
# the sections of the four modules' docstrings, so each part is documented where its code is.
__doc__ = "\n\n".join(
    [(__doc__ or "").strip("\n")] + [_section(m.__doc__) for m in (common, ifqa, med, safety)]
) + "\n"
