"""The study engine: one driver, one worker loop, one trial runner for every kind of study.

A study is an Optuna study (journal file or PostgreSQL) whose trials workers pull from the
queue, on any number of machines; each trial trains one or more MLflow runs. Optuna gives the
storage, atomic hand-out of queued trials and the trial states; the engine adds what a
reproducible study needs on top: a trial is claimed by its worker (a heartbeat,
harness.studies.liveness) the moment it is popped, a dead worker's trial is reaped and its run
closed KILLED, a trial reaped while it still ran is never counted, and nobody ever asks Optuna
for a fresh trial: the queue is the study.

What differs between an ablation and a search is a `Strategy` (harness.studies.ablation,
harness.studies.search): how the queue is topped up, why a popped trial must stand down, and
which runs a trial trains. harness.studies.worker picks the strategy for a study's type.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from harness.core.config import Config
from harness.core.data import Dataset
from harness.core.metrics import TRIAL_METRICS, Evaluation
from harness.core.train import NonFiniteLoss, device_label, prepare_data
from harness.studies import _optuna
from harness.studies.launch import (Placement, follow, layout, on_gpus, spawn_workers, threads_per_worker,
                                    visible_gpus)
from harness.studies.liveness import Heartbeat, is_dead
from harness.studies.record import read
from harness.tracking.run import RunOutcome, preflight, run_tracked

POLL_S = float(os.environ.get("ABLATE_POLL_S", "2"))
STALE = "trial was reaped as stale while it ran"
"""The reason on the runs of a trial that finished after it was reaped (a missed heartbeat)."""
log = logging.getLogger("ablate.worker")


# --- what a strategy decides -----------------------------------------------------------------

@dataclass
class RunPlan:
    """One MLflow run a trial trains."""
    config: Config
    run_name: str
    parent_run_id: str
    tags: dict[str, Any]
    should_stop: Callable[[Evaluation], str | None] | None = None
    """run_tracked's hook (a pruner): a reason ends the run KILLED and the trial PRUNED."""


class Strategy(Protocol):
    objectives: list[str]
    """Summary metrics told to Optuna as the trial's values (the mean over its runs)."""

    def stopped(self, study: optuna.Study) -> bool:
        """No new trial may start (a search past its --timeout)."""

    def top_up(self, study: optuna.Study) -> None:
        """Queue what the study still lacks (cells, or trials up to the total)."""

    def stand_down(self, study: optuna.Study, trial: FrozenTrial) -> tuple[str, Any, TrialState] | None:
        """Why a just-popped trial must not train: (user attribute, value, final state), or None."""

    def plan(self, study: optuna.Study, trial: optuna.Trial) -> list[RunPlan]:
        """The runs of a claimed trial, trained in order; raising fails the trial with the error."""


class DataCache:
    """Each distinct data config is loaded once per worker, not once per trial."""

    def __init__(self) -> None:
        self._cache: dict[str, Dataset] = {}

    @staticmethod
    def key(cfg: Config) -> str:
        """What tells two data setups apart: the data section of the recipe."""
        return json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)

    def get(self, cfg: Config) -> Dataset:
        key = self.key(cfg)
        if key not in self._cache:
            self._cache[key] = prepare_data(cfg)
        return self._cache[key]


# --- creating a study --------------------------------------------------------------------------

def find_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


@contextmanager
def created_study(storage: optuna.storages.BaseStorage, name: str, directions: list[str],
                  client: MlflowClient) -> Iterator[tuple[optuna.Study, list[str]]]:
    """Create study `name` all or nothing: yields it with a list for the MLflow runs made for it.

    When the block fails (a store error, Ctrl-C), the study is deleted and the runs listed are
    deleted too, so no empty study is left to block the name ("not created by ablate") and no
    parent run is left RUNNING; the same command can simply run again.
    """
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    made: list[str] = []
    try:
        yield study, made
    except BaseException:
        with suppress(Exception):  # the first error is the one to report
            optuna.delete_study(study_name=name, storage=storage)
            for run_id in made:
                client.delete_run(run_id)
        raise


def create_parent_run(client: MlflowClient, name: str, study_type: str, storage_url: str, note: str,
                      tags: dict[str, str], spec_doc: dict[str, Any], made: list[str]) -> str:
    """The study's MLflow run (harness.kind=study), listed in `made` as soon as it exists (see
    created_study), with the spec as spec.yaml; every run of the study nests below it."""
    import yaml

    from harness.tracking.storage import STORAGE_TAG
    from harness.tracking.store import experiment_id
    from harness.tracking.uris import redact

    run = client.create_run(experiment_id(client, name), run_name=f"study {name}", tags={
        "harness.kind": "study", "harness.study": name, "harness.study_type": study_type,
        STORAGE_TAG: redact(storage_url), "mlflow.note.content": note, **tags})
    made.append(run.info.run_id)
    client.log_text(run.info.run_id, yaml.safe_dump(spec_doc, sort_keys=False), "spec.yaml")
    return run.info.run_id


def name_objectives(study: optuna.Study, names: list[str]) -> None:
    """The objectives' names in Optuna (optuna-dashboard shows them)."""
    import warnings

    with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


# --- a worker ----------------------------------------------------------------------------------

def work(study: optuna.Study, strategy: Strategy, client: MlflowClient) -> int:
    """Serve `study` until nothing is left to do; returns the trials trained.

    While others still run, the worker stays: to take over the trial of a worker that dies, and
    to run what their trials make possible (a top-up may queue more after they finish).
    """
    data = DataCache()
    trained = 0
    while True:
        reap_dead(study, client)
        if strategy.stopped(study):
            return trained
        strategy.top_up(study)
        claimed = claim(study, strategy)
        if claimed is None:
            if not others_running(study):
                return trained
            time.sleep(POLL_S)
            continue
        run_trial(study, *claimed, strategy, client, data)
        trained += 1


def claim(study: optuna.Study, strategy: Strategy) -> tuple[optuna.Trial, Heartbeat] | None:
    """Pop and claim the next queued trial that may train, or None when the queue is empty."""
    while (trial_id := _optuna.pop_waiting(study)) is not None:
        claimed = claim_popped(study, strategy, trial_id)
        if claimed is not None:
            return claimed
    return None


def claim_popped(study: optuna.Study, strategy: Strategy, trial_id: int) -> tuple[optuna.Trial, Heartbeat] | None:
    """Claim a popped trial at once (a RUNNING trial that names no worker is reaped only after
    the grace period), then let the strategy stand it down: a copy of a cell another worker has,
    a trial beyond the total. A trial that stands down ends with its reason and trains nothing."""
    beat = Heartbeat(study, trial_id)
    why = strategy.stand_down(study, _optuna.frozen(study, trial_id))
    if why is None:
        return optuna.Trial(study, trial_id), beat
    beat.stop()
    attr, value, state = why
    storage = _optuna.storage(study)
    storage.set_trial_user_attr(trial_id, attr, value)
    storage.set_trial_state_values(trial_id, state)
    return None


def others_running(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_trial(study: optuna.Study, trial: optuna.Trial, beat: Heartbeat, strategy: Strategy,
              client: MlflowClient, data: DataCache) -> None:
    """Train the trial's runs in order and tell the storage how it ended.

    Each run's id goes on the trial as soon as the run exists (mlflow_run_id, the one the reaper
    closes if this worker dies; mlflow_run_ids, all of them). A run ended KILLED by its
    should_stop hook ends the trial PRUNED; a trial that raises (a diverging recipe, an invalid
    combination) is FAIL with the error as user attribute `error`, its run FAILED, and the
    worker goes on; Ctrl-C fails the trial and stops. A trial reaped while it ran (its heartbeat
    was missed) cannot be told COMPLETE: its runs are then closed KILLED as STALE.
    """
    meta = read(study)
    runs: list[str] = []

    def started(run_id: str) -> None:
        runs.append(run_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("mlflow_run_ids", list(runs))

    try:
        outcomes = []
        for plan in strategy.plan(study, trial):
            trial.set_user_attr("device", device_label(plan.config.train.device))  # what `ablate status --cells` shows
            outcomes.append(run_tracked(
                plan.config, client, meta.experiment, run_name=plan.run_name, parent_run_id=plan.parent_run_id,
                tags={"harness.study": study.study_name, "optuna.trial_number": trial.number, **plan.tags},
                on_start=started, should_stop=plan.should_stop, prepared=preflight(plan.config, data.get(plan.config))))
            if outcomes[-1].status == "KILLED":
                break
    except KeyboardInterrupt:
        fail_trial(study, trial, beat)
        raise
    except Exception as exc:
        fail_trial(study, trial, beat, exc)
        return
    beat.stop()
    # Reaped while it ran: its attributes are frozen, and tell() below closes its runs as stale.
    with suppress(optuna.exceptions.UpdateFinishedTrialError):
        record_summaries(trial, outcomes)
    if outcomes[-1].status == "KILLED":
        tell(study, trial, TrialState.PRUNED, None, client, runs)
    else:
        values = [sum(getattr(o.result.summary, name) for o in outcomes) / len(outcomes)
                  for name in strategy.objectives]
        tell(study, trial, TrialState.COMPLETE, values, client, runs)


def record_summaries(trial: optuna.Trial, outcomes: list[RunOutcome]) -> None:
    """TRIAL_METRICS as the mean over the trial's runs (what `ablate status`, cells tables and
    searches read without opening MLflow), and the epochs trained (what pruning saves)."""
    summaries = [o.result.summary for o in outcomes]
    for name in TRIAL_METRICS:
        values = [getattr(s, name) for s in summaries if getattr(s, name) is not None]
        if values:
            trial.set_user_attr(name, float(sum(values) / len(values)))
    trial.set_user_attr("epochs", float(sum(o.result.history[-1].epoch for o in outcomes if o.result.history)))


def fail_trial(study: optuna.Study, trial: optuna.Trial, beat: Heartbeat, error: Exception | None = None) -> None:
    """Stop the heartbeat and tell the storage the trial failed, with `error` as user attribute.

    A training that diverged (NonFiniteLoss) is also marked `diverged`: a result of the recipe,
    retried a bounded number of times (harness.studies.cells.DIVERGED_ATTEMPTS), not an accident.
    """
    beat.stop()
    if error is not None:
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
        if isinstance(error, NonFiniteLoss):
            trial.set_user_attr("diverged", str(error))
    study.tell(trial, state=TrialState.FAIL)


def tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None,
         client: MlflowClient, run_ids: list[str]) -> bool:
    """Tell the storage that `trial` ended in `state`; False when a peer had reaped it meanwhile.

    A trial reaped while it ran (its heartbeat was missed) is FAIL already and cannot change:
    Optuna refuses to tell it (ValueError at its check, UpdateFinishedTrialError when the reap
    lands between the check and the write). Its runs are then closed KILLED as STALE, so they
    never read as results, and the trial is replaced.
    """
    try:
        told = study.tell(trial, values, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        told = None
    if told is not None and told.state == state:
        return True
    for run_id in run_ids:
        close_killed(client, run_id, STALE)
    return False


def reap_dead(study: optuna.Study, client: MlflowClient | None) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and close their MLflow runs as KILLED.

    A run is found by the id on its trial or, for a worker killed between creating the run and
    recording its id, by its tags (harness.study and optuna.trial_number).
    """
    reaped = []
    storage = _optuna.storage(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = is_dead(trial)
        if why is None:
            continue
        try:
            storage.set_trial_system_attr(_optuna.trial_id(trial), "harness.reaped", why)
            if not storage.set_trial_state_values(_optuna.trial_id(trial), TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker reaped it, or it just finished
        reaped.append(trial.number)
        if client is None:
            continue
        named = trial.user_attrs.get("mlflow_run_id")
        if named:
            close_killed(client, named, f"worker died: {why}")
        exp = client.get_experiment_by_name(read(study).experiment)
        running = [] if exp is None else client.search_runs(
            [exp.experiment_id], f"tags.`harness.study` = '{study.study_name}' and "
                                 f"tags.`optuna.trial_number` = '{trial.number}' and attributes.status = 'RUNNING'")
        for run in running:
            if run.info.run_id != named:
                close_killed(client, run.info.run_id, f"worker died before the trial recorded this run: {why}")
    return reaped


def close_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    """End an MLflow run as KILLED with harness.reason saying why."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag("harness.reason", reason)])
    client.set_terminated(run_id, status="KILLED")


# --- the driver ----------------------------------------------------------------------------------

def drive(study: optuna.Study, url: str, client: MlflowClient, placement: Placement, todo: int, what: str,
          total: int, done: Callable[[], int], configured_threads: set[int | None]) -> None:
    """Run `todo` trials of `study` with local worker processes (`ablate worker`), placed on
    this machine's GPUs or cores as `placement` says, following `done()` out of `total` until
    they exit. Ctrl-C stops them and reaps their trials at once (`ablate status` shows them
    failed, and the next run replaces them)."""
    from harness.core.paths import mlruns_dir

    devices = placement.assign(todo, placement.devices(visible_gpus()))
    n = len(devices)
    logs: Path = mlruns_dir() / "logs" / study.study_name
    print(f"running {what} with {layout(n, configured_threads)}{on_gpus(devices)}; logs in {logs}")
    procs = spawn_workers(study.study_name, url, n, threads_per_worker(n), logs, devices)
    codes = follow(procs, total, done, study.study_name, poll_s=min(2.0, POLL_S),
                   on_interrupt=lambda: reap_dead(study, client))
    if any(codes):
        print(f"warning: worker exit codes {codes}; see the logs")
