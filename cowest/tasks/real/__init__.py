"""The paper's three real datasets: IfQA, MedMCQA and ProsocialDialog.

ifqa (IfQA: open-domain questions with a counterfactual "if" presupposition; free-form
answers, EM / token F1), medmcqa (MedMCQA: four-option medical entrance-exam questions;
accuracy / macro F1) and prosocial (ProsocialDialog: the safety label of a user's
dialogue turn; accuracy / macro F1). Each is read from the Hugging Face hub or from local
files; without hub access (and no `path`) loading stops at once with `DatasetUnavailable`.

Choices (details in the module sections below):
- IfQA can be read from the official JSON files (allenai.org/data/ifqa) instead of the
  hub: put them in a folder (file names containing train / dev / test) and set
  `params: {path: <folder>}` in the task's profile entry, e.g.
  `- {name: ifqa, n_train: 2000, n_validation: 200, n_test: 700, params: {path: data/ifqa}}`.
  With no dev file, `val_size` training items are held out as validation.
- MedMCQA: the public test labels are hidden, so our test split is the source validation
  split and our validation split is held out of train.
- ProsocialDialog: one row = one user turn; `granularity=3` (default) merges the three
  caution levels into "needs caution"; `granularity=5` keeps all five labels.

Modules: `common` (loading from local files or the hub, the offline checks, the base
class `RealTask`), `text` (sentence splitting and trimming, record field helpers) and one
module per dataset, `ifqa`, `medmcqa` and `prosocial`. Importing this package registers
the three tasks. Each module's docstring documents its part (below).
"""

from __future__ import annotations

from . import common, ifqa, medmcqa, prosocial
from .common import EXTENSIONS, SPLITS, RealTask, read_records
from .ifqa import IfQA
from .medmcqa import MedMCQA
from .prosocial import PROSOCIAL_LABELS_3, PROSOCIAL_LABELS_5, Prosocial, prosocial_label
from .text import sentences, trim_words

__all__ = [
    "EXTENSIONS", "PROSOCIAL_LABELS_3", "PROSOCIAL_LABELS_5", "SPLITS", "IfQA", "MedMCQA",
    "Prosocial", "RealTask", "prosocial_label", "read_records", "sentences", "trim_words",
]


def _section(module_doc: str | None) -> str:
    """A module's docstring without its one-paragraph summary (its part of the overview)."""
    return (module_doc or "").split("\n\n", 1)[1].strip("\n")


# The package docstring is the overview above followed by the loading rules (`common`) and
# the field mapping of each dataset, so each part is documented where its code is.
__doc__ = "\n\n".join(
    [(__doc__ or "").strip("\n"), _section(common.__doc__),
     "Field mapping and choices\n-------------------------\n"
     + "\n".join(_section(m.__doc__) for m in (ifqa, medmcqa, prosocial))]
) + "\n"
