"""The numbered notebooks: their list (written once, here) and the call that opens each.

Every notebook starts with a parameters cell (`profile`, `results`, `force`, `overrides`,
set by papermill) and then one call::

    run = open_run(profile, results=results, force=force, overrides=overrides)

which loads and checks the profile, opens the `Pipeline`, and, when the notebook is
rendered by the runner, silences progress bars and library warnings so that the rendered
copy reads as documentation, not as a log.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cowest import CowestWarning, paths

QUIET_ENV = "COWEST_QUIET"  # set by the runner for the notebooks it renders


@dataclass(frozen=True)
class Notebook:
    stem: str  # file name without .ipynb, e.g. "05_evaluation"
    step: str  # what it does, for the README's table and the index
    tables: tuple[str, ...]
    figures: tuple[str, ...]

    @property
    def number(self) -> int:
        return int(self.stem[:2])

    @property
    def file(self) -> str:
        return f"{self.stem}.ipynb"


NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("01_data", "the tasks: sizes, label balance, one example per format",
             ("data_sizes", "label_balance"), ("label_balance",)),
    Notebook("02_sft", "SFT of the weak model (LoRA / 4-bit QLoRA), loss curves, the weak-knowledge gate",
             ("sft_summary", "gate_weak_knowledge"), ("sft_loss",)),
    Notebook("03_preferences", "the division-of-labour gates, collaborative preference mining (delta rule), RLWF pairs",
             ("gates", "preference_stats", "pair_sets"), ("gates", "delta_distribution")),
    Notebook("04_dpo", "DPO from the SFT adapter with the SFT policy as reference", ("dpo_summary",), ("dpo_curves",)),
    Notebook("05_evaluation", "the main table: every method x every task, DPO seeds, intervals, paired tests, why, "
             "and what the miniature shows", ("main_results", "main_results_seeds", "paired_tests",
                                              "paired_tests_per_seed", "refinement_breakdown", "findings"),
             ("main_results",)),
    Notebook("06_format_ablation", "direct / knowledge / chain of thought, SFT vs aligned",
             ("format_ablation",), ("format_ablation",)),
    Notebook("07_strong_ablation", "several strong models", ("strong_ablation",), ("strong_ablation",)),
    Notebook("08_weak_ablation", "several weak models", ("weak_ablation",), ("weak_ablation",)),
    Notebook("09_preference_volume", "metric vs number of preference pairs",
             ("preference_volume",), ("preference_volume",)),
    Notebook("10_beyond_the_paper", "iterated rounds, evaluator choice, the theory check, latency and cost",
             ("rounds", "evaluator_choice", "evaluator_agreement", "theory_check", "cost_latency"), ("rounds",)),
)


def by_number(n: int) -> Notebook:
    for nb in NOTEBOOKS:
        if nb.number == n:
            return nb
    raise ValueError(f"no notebook numbered {n} (have {[nb.number for nb in NOTEBOOKS]})")


def expected_files(root: Path) -> list[Path]:
    """Every table (CSV, Markdown) and figure (PNG, PDF) a full run writes under `root`."""
    out = []
    for nb in NOTEBOOKS:
        out += [root / "tables" / f"{t}.{ext}" for t in nb.tables for ext in ("csv", "md")]
        out += [root / "figures" / f"{f}.{ext}" for f in nb.figures for ext in ("png", "pdf")]
    return out


def rendered() -> bool:
    """True in a notebook the runner renders (it sets ``QUIET_ENV``), not in JupyterLab."""
    return bool(os.environ.get(QUIET_ENV))


def quiet() -> None:
    """No progress bars, no library warnings or info logs; the project's own warnings stay."""
    # the libraries read these when they are imported: a notebook that never trains or
    # generates does not pay for importing them (about 1.5 s per notebook on 2 cores)
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=CowestWarning)
    # the project's own warnings are part of the story: shown as a plain line, without the
    # file path and source line Python's default format adds
    warnings.showwarning = lambda message, category, *_args, **_kw: print(f"Note: {message}")
    for name in ("transformers", "trl", "peft", "datasets", "accelerate", "httpx", "bitsandbytes", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers, datasets = sys.modules.get("transformers"), sys.modules.get("datasets")
    if transformers is not None:  # imported before this call: the variables came too late
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if datasets is not None:
        datasets.disable_progress_bars()


def open_run(profile: str, *, results: str | None = None, force: bool | str = False,
             overrides: Sequence[str] = ()):
    """Load and check the profile, open its `Pipeline`; quiet under the runner.

    `profile` is a profile name or a YAML path (relative paths are taken from the
    repository root, where `./reproduce.sh` runs); `results` the results root (default
    `paths.results_root()`); `overrides` are `--set`-style `key=value` strings.
    """
    from cowest.config import load_profile
    from cowest.pipeline import Pipeline

    if rendered():
        quiet()
    import pandas as pd

    from cowest.report import number

    pd.set_option("display.float_format", number)  # the notebooks' tables read as the .md tables do
    source = Path(profile)
    if source.suffix in (".yaml", ".yml") and not source.is_absolute():
        source = paths.REPO_ROOT / source
    cfg = load_profile(source if source.suffix in (".yaml", ".yml") else profile, overrides=list(overrides))
    root = Path(results) if results else paths.results_root()
    if not root.is_absolute():
        root = paths.REPO_ROOT / root
    run = Pipeline(cfg, results=root, force=force)
    print(f"profile {cfg.name}: {cfg.description}")
    if cfg.overrides:
        print("overrides: " + ", ".join(cfg.overrides))
    return run
