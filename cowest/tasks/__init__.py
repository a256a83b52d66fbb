"""Tasks: the three paper domains as real datasets and as offline synthetic stand-ins.

`get_task(name, **params)` builds a registered task; `TASKS` lists the names:
synth_ifqa, synth_med, synth_safety (synthetic, offline; the package `synthetic`, one
module per domain) and ifqa, medmcqa, prosocial (real, from the Hugging Face hub or local
files). `paper_numbers()` returns the paper's reported numbers (`paper_numbers.yaml`),
which are only ever shown beside ours.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

from . import real, synthetic  # noqa: F401  (importing registers the tasks)
from .base import FORMATS, TASKS, DatasetUnavailable, Example, Task, TaskInfo

__all__ = [
    "FORMATS", "TASKS", "DatasetUnavailable", "Example", "PaperNumbers", "Task", "TaskInfo",
    "get_task", "paper_numbers",
]


def get_task(name: str, **params: Any) -> Task:
    """The task registered under `name`, built with `params` (unknown ones raise)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name](**params)


# ----------------------------------------------------------------- paper's numbers

PAPER_NUMBERS_FILE = "paper_numbers.yaml"


@dataclass(frozen=True)
class PaperNumbers:
    """The paper's reported numbers (percent); shown beside ours, never computed on.

    main[method][paper_domain] = (metric1, metric2), e.g. main["CoWest"]["ifqa"] ==
    (75.85, 77.34); models: who produced them; strong_ablation[strong_model] =
    (IfQA accuracy, ProsocialDialog accuracy); domain[task_name] = the paper domain a task
    stands in for (e.g. "synth_med" -> "medmcqa").
    """

    main: dict[str, dict[str, tuple[float, float]]]
    models: str
    strong_ablation: dict[str, tuple[float, float]]
    domain: dict[str, str]


def _pair(value: Any, where: str) -> tuple[float, float]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{PAPER_NUMBERS_FILE}: {where} must be a list of two numbers, not {value!r}")
    return float(value[0]), float(value[1])


@functools.cache
def _read_paper_numbers() -> PaperNumbers:
    import yaml

    text = resources.files(__name__).joinpath(PAPER_NUMBERS_FILE).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    keys = {"main", "models", "strong_ablation", "domain"}
    if not isinstance(raw, dict) or set(raw) != keys:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{PAPER_NUMBERS_FILE}: expected the keys {sorted(keys)}, found {found}")
    return PaperNumbers(
        main={str(m): {str(d): _pair(v, f"main.{m}.{d}") for d, v in doms.items()}
              for m, doms in raw["main"].items()},
        models=str(raw["models"]),
        strong_ablation={str(k): _pair(v, f"strong_ablation.{k}") for k, v in raw["strong_ablation"].items()},
        domain={str(k): str(v) for k, v in raw["domain"].items()},
    )


def paper_numbers() -> PaperNumbers:
    """The paper's reported numbers from `cowest/tasks/paper_numbers.yaml`.

    The file is read once (cached); each call returns fresh dicts, so a caller that edits
    them does not change what the next caller sees.
    """
    p = _read_paper_numbers()
    return PaperNumbers(
        main={m: dict(doms) for m, doms in p.main.items()},
        models=p.models,
        strong_ablation=dict(p.strong_ablation),
        domain=dict(p.domain),
    )
