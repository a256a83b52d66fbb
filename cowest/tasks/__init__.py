"""Tasks: the three paper domains as real datasets and as offline synthetic stand-ins.

`get_task(name, **params)` builds a registered task; `TASKS` lists the names:
synth_ifqa, synth_med, synth_safety (synthetic, offline) and ifqa, medmcqa, prosocial
(real, from the Hugging Face hub or local files).
"""

from __future__ import annotations

from typing import Any

from . import real, synthetic  # noqa: F401  (importing registers the tasks)
from .base import FORMATS, TASKS, DatasetUnavailable, Example, Task, TaskInfo

__all__ = ["FORMATS", "TASKS", "DatasetUnavailable", "Example", "Task", "TaskInfo", "get_task"]


def get_task(name: str, **params: Any) -> Task:
    """The task registered under `name`, built with `params` (unknown ones raise)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name](**params)
