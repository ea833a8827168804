"""The few Optuna internals the study engine needs, behind one small adapter.

Optuna's public API has no way to take a queued trial without creating a fresh one when the
queue is empty (`Study.ask()` does both), and no public handle on a study's storage, which the
engine needs to claim, reap and mark trials by id from any process. Everything private lives
here, so an Optuna upgrade breaks one module, and tests/test_optuna_adapter.py fails on the
installed Optuna before any study does. pyproject.toml bounds Optuna below the next major.
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial


def storage(study: optuna.Study) -> BaseStorage:
    """The study's storage, shared by every worker of the study."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (unique across studies; `number` is per study)."""
    return trial._trial_id


def pop_waiting(study: optuna.Study) -> int | None:
    """Atomically take the oldest WAITING trial (it becomes RUNNING); None when none waits.

    The first half of `Study.ask()`, which would otherwise create a fresh trial: the engine's
    queue is the study's total, so it must never ask for one. The trial cache is dropped first,
    as ask() does, so a sampler samples on the current history.
    """
    study._thread_local.cached_all_trials = None
    return study._pop_waiting_trial_id()


def frozen(study: optuna.Study, trial_id: int) -> FrozenTrial:
    return storage(study).get_trial(trial_id)
