"""Re-fine-tuning from base data and feedback, evaluated and gated against the
champion. The public nouns, importable from here:

* ``TrainingPipeline`` runs a ``TrainingPlan`` (``DataSource`` files, template
  versions, ``AssemblyConfig``, ``TrainingArguments``, ``GateConfig``) and returns a
  ``RunOutcome``; ``run_schedule`` repeats it on a ``Schedule``, ``check_now``
  says once whether a run is due (``sentiloop train --if-due``);
* ``promote`` / ``rollback`` set the champion by hand, ``prune_shared_store``
  deletes the shared store's models nothing needs; ``parse_label_map`` reads
  ``"0=negative,1=positive"``.

They are loaded on first use, so that importing the light ones (the configs)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "AssemblyConfig": "training.config",
    "GateConfig": "training.config",
    "Schedule": "training.config",
    "TrainingArguments": "training.config",
    "parse_label_map": "training.examples",
    "DataSource": "training.pipeline",
    "RunOutcome": "training.pipeline",
    "TrainingBusy": "training.pipeline",
    "TrainingPipeline": "training.pipeline",
    "TrainingPlan": "training.pipeline",
    "promote": "training.promotion",
    "rollback": "training.promotion",
    "prune_shared_store": "training.promotion",
    "check_now": "training.schedule",
    "run_schedule": "training.schedule",
}

__all__ = [
    "AssemblyConfig",
    "DataSource",
    "GateConfig",
    "RunOutcome",
    "Schedule",
    "TrainingArguments",
    "TrainingBusy",
    "TrainingPipeline",
    "TrainingPlan",
    "check_now",
    "parse_label_map",
    "promote",
    "prune_shared_store",
    "rollback",
    "run_schedule",
]

if TYPE_CHECKING:
    from training.config import AssemblyConfig, GateConfig, Schedule, TrainingArguments
    from training.examples import parse_label_map
    from training.pipeline import (
        DataSource,
        RunOutcome,
        TrainingBusy,
        TrainingPipeline,
        TrainingPlan,
    )
    from training.promotion import promote, prune_shared_store, rollback
    from training.schedule import check_now, run_schedule


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
