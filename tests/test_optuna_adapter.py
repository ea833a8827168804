"""The engine's only hold on Optuna internals (harness/studies/_optuna.py), checked against the
installed Optuna on a real journal storage: an upgrade that moves them fails here first."""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from harness.studies import _optuna


def journal_study(tmp_path, name: str = "adapter") -> tuple[optuna.Study, optuna.Study]:
    """Two handles on one study, as two workers on the same journal file have."""
    path = str(tmp_path / "journal.log")
    first = optuna.create_study(study_name=name, storage=JournalStorage(JournalFileBackend(path)))
    second = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(path)))
    return first, second


def test_pop_waiting_takes_queued_trials_in_order_and_never_creates_one(tmp_path):
    study, other = journal_study(tmp_path)
    assert _optuna.pop_waiting(study) is None
    assert study.get_trials() == []  # Study.ask() would have created a trial here
    for x in (1.0, 2.0, 3.0):
        study.enqueue_trial({"x": x})
    popped = [_optuna.pop_waiting(study), _optuna.pop_waiting(other), _optuna.pop_waiting(study)]
    assert len(set(popped)) == 3 and _optuna.pop_waiting(other) is None
    trials = {t._trial_id: t for t in study.get_trials()}
    assert [trials[i].number for i in popped] == [0, 1, 2]
    assert all(trials[i].state == TrialState.RUNNING for i in popped)


class HistorySampler(optuna.samplers.RandomSampler):
    """Records how many finished trials it saw, read the way TPE reads its history (the cached
    trial list of the study's thread)."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[int] = []

    def sample_independent(self, study, trial, name, distribution):
        self.seen.append(len(study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)))
        return super().sample_independent(study, trial, name, distribution)


def test_a_sampler_samples_on_the_history_as_of_the_pop(tmp_path):
    """The trial cache is dropped at each pop, as Study.ask() does: the next trial's sampler sees
    the trials other workers finished meanwhile, not the history cached while it last suggested."""
    study, other = journal_study(tmp_path)
    study.sampler = sampler = HistorySampler()
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    for _ in range(3):
        trial = optuna.Trial(study, _optuna.pop_waiting(study))
        other.tell(trial.number, trial.suggest_float("x", 0.0, 1.0))  # told by another worker
    assert sampler.seen == [0, 1, 2]


def test_storage_and_trial_ids_address_a_trial_from_another_handle(tmp_path):
    study, other = journal_study(tmp_path)
    study.enqueue_trial({"x": 1.0})
    trial = optuna.Trial(study, _optuna.pop_waiting(study))
    assert isinstance(_optuna.storage(other), BaseStorage)
    _optuna.storage(other).set_trial_system_attr(_optuna.trial_id(trial), "harness.test", "seen")
    frozen = _optuna.frozen(study, _optuna.trial_id(trial))
    assert frozen.number == trial.number and frozen.system_attrs["harness.test"] == "seen"
    assert _optuna.trial_id(frozen) == _optuna.trial_id(trial)
