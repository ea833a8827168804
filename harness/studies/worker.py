"""`ablate worker`: serve one study, of any type, until nothing is left to do.

Any number of workers, on any number of machines, can serve the same study: the storage hands
each queued trial to exactly one of them (harness.studies.engine). This module only picks the
engine's strategy for the study's type.
"""

from __future__ import annotations

import optuna
import torch

from harness.studies.ablation import Ablation
from harness.studies.engine import Strategy, work
from harness.studies.record import read
from harness.studies.search import Search
from harness.tracking.storage import load_study
from harness.tracking.store import init_store


def open_strategy(study: optuna.Study) -> tuple[optuna.Study, Strategy]:
    """The study as a worker serves it, and the strategy for its type."""
    if read(study).type == "search":
        return Search.open(study)
    return study, Ablation()


def run_worker(study_name: str, storage_url: str, threads: int | None = None) -> int:
    """Serve the study until every trial is settled; returns the trials trained."""
    if threads:
        torch.set_num_threads(threads)
    study = load_study(study_name, storage_url, create=False)  # a worker joins, never creates
    return work(*open_strategy(study), init_store())
