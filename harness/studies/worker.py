"""A worker: pulls trials of one study from the Optuna storage and trains each as an MLflow run.

Any number of workers, on any number of machines, can serve the same study: the storage hands
each queued trial to exactly one of them. A worker ends when nothing is left to do, and while
others still run it waits for them, to take over a trial whose worker died.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import suppress
from typing import Any, Callable

import optuna
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.core.config import Config
from harness.core.data import Dataset
from harness.studies.liveness import Heartbeat
from harness.tracking.run import RunOutcome, run_tracked
from harness.studies.spec import cell_config
from harness.tracking.storage import load_study
from harness.studies.study import (REPORTED, arm_configs, enqueue_missing, first_owner, info, reap_dead,
                           tell_or_close_stale)
from harness.tracking.store import init_store
from harness.core.train import NonFiniteLoss, prepare_data

POLL_S = float(os.environ.get("ABLATE_POLL_S", "2"))
log = logging.getLogger("ablate.worker")


class DataCache:
    """Each distinct data config is loaded once per worker, not once per trial."""

    def __init__(self) -> None:
        self._cache: dict[str, Dataset] = {}

    def get(self, cfg: Config) -> Dataset:
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._cache:
            self._cache[key] = prepare_data(cfg)
        return self._cache[key]


def pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    # Study.ask() would create a fresh trial when the queue is empty; an ablation must only
    # ever run queued cells, so take the queue's own pop (the same call ask() makes first).
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


def train_trial(study: optuna.Study, trial: optuna.Trial, cfg: Config, client: MlflowClient,
                tags: dict[str, Any], run_name: str, data: DataCache,
                should_stop: Callable | None = None) -> RunOutcome | None:
    """Train `cfg` for `trial` and tell the storage how it ended. Returns None if it failed.

    The MLflow run id goes on the trial as soon as the run exists. A trial reaped while it ran
    (its heartbeat was missed) cannot be told COMPLETE; its MLflow run is then closed KILLED.
    """
    meta = info(study)
    # An ablation cell nests under its arm's run (study -> arm -> seeds); a search trial, or a
    # cell of a study created before arms had runs, under the study's run.
    parent = meta.get("arm_runs", {}).get(tags.get("harness.arm"), meta["parent_run_id"])
    beat = Heartbeat(study, trial._trial_id)
    try:
        outcome = run_tracked(
            cfg, client, meta["experiment"], run_name=run_name, parent_run_id=parent,
            tags={"harness.studies.study": study.study_name, "optuna.trial_number": trial.number, **tags},
            on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            should_stop=should_stop, dataset=data.get(cfg))
    except KeyboardInterrupt:
        fail_trial(study, trial, beat)
        raise
    except Exception as exc:
        fail_trial(study, trial, beat, exc)
        return None
    beat.stop()
    s = outcome.result.summary
    # Reaped while it ran: its attributes are frozen, and tell_outcome closes its run as stale.
    with suppress(optuna.exceptions.UpdateFinishedTrialError):
        for name in REPORTED:
            value = getattr(s, name)
            if value is not None:
                trial.set_user_attr(name, float(value))
    return outcome


def fail_trial(study: optuna.Study, trial: optuna.Trial, beat: Heartbeat,
               error: Exception | None = None) -> None:
    """Stop the heartbeat and tell the storage the trial failed, with `error` as user attribute.

    A training that diverged (NonFiniteLoss) is also marked `diverged`: a result of the recipe,
    retried a bounded number of times (harness.studies.study.DIVERGED_ATTEMPTS), not an accident.
    """
    beat.stop()
    if error is not None:
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
        if isinstance(error, NonFiniteLoss):
            trial.set_user_attr("diverged", str(error))
    study.tell(trial, state=TrialState.FAIL)


def tell_outcome(study: optuna.Study, trial: optuna.Trial, outcome: RunOutcome,
                 values: float | list[float], client: MlflowClient) -> None:
    if outcome.status == "KILLED":
        tell_or_close_stale(study, trial, TrialState.PRUNED, None, client, [outcome.run_id])
    else:
        tell_or_close_stale(study, trial, TrialState.COMPLETE, values, client, [outcome.run_id])


def run_ablation_cell(study: optuna.Study, trial: optuna.Trial, client: MlflowClient,
                      configs: dict[str, Config], data: DataCache) -> None:
    arm, seed = trial.user_attrs["arm"], trial.user_attrs["seed"]
    owner = first_owner(study, study._storage.get_trial(trial._trial_id))
    if owner is not None:
        # Two workers queued the same dead cell at once: the later copy stands down.
        trial.set_user_attr("duplicate_of", owner.number)
        study.tell(trial, state=TrialState.PRUNED)
        return
    cfg = cell_config(configs[arm], seed)
    outcome = train_trial(study, trial, cfg, client, {"harness.arm": arm, "harness.seed": seed},
                          f"{arm} seed={seed}", data)
    if outcome is not None:
        tell_outcome(study, trial, outcome, outcome.result.summary.best_val_loss, client)


def others_running(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_worker(study_name: str, storage_url: str, threads: int | None = None) -> int:
    """Serve an ablation study until every cell is done or failed; returns cells trained."""
    if threads:
        torch.set_num_threads(threads)
    study = load_study(study_name, storage_url, create=False)  # a worker joins, never creates
    client = init_store()
    kind = info(study)["type"]
    if kind == "search":
        from harness.studies.search import run_search_worker

        return run_search_worker(study, client)
    configs = arm_configs(study)
    data = DataCache()
    trained = 0
    while True:
        reap_dead(study, client)
        enqueue_missing(study, retry_failed=False)
        trial = pop_waiting(study)
        if trial is None:
            if not others_running(study):
                return trained
            time.sleep(POLL_S)  # another worker may die; stay to take its cell over
            continue
        run_ablation_cell(study, trial, client, configs, data)
        trained += 1
