"""Dead-worker recovery, the ground of "nothing lost, nothing twice" when workers run on several
machines: the heartbeat and grace period for a worker on another host, a reused pid on this
host, a duplicate cell standing down, a reaped trial that finishes late, and (on PostgreSQL) a
worker of "another machine" SIGKILLed mid-trial.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.studies import liveness
from harness.studies.liveness import ATTR, WorkerId, is_dead, process_start
from harness.studies.spec import load_spec
from harness.tracking.storage import default_storage, load_study, open_storage
from harness.studies import _optuna
from harness.studies.ablation import Ablation, create_ablation
from harness.studies.cells import enqueue_missing, first_owner
from harness.studies.engine import STALE, DataCache, claim, claim_popped, reap_dead, run_trial
from harness.tracking.store import RunTracker, init_store

from test_ablation import complete_by_cell, stopped_mid_trial, write_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

OTHER_HOST = "another-machine"
"""A host name that is not this machine's: its workers can only be judged by their heartbeat."""


def running_trial(attrs: dict[str, Any]) -> optuna.trial.FrozenTrial:
    """A RUNNING trial of an in-memory study carrying `attrs` as system attributes."""
    study = optuna.create_study()
    trial = study.ask()
    for key, value in attrs.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    return study._storage.get_trial(trial._trial_id)


def test_a_remote_worker_lives_while_it_beats_and_dies_after_the_grace_period():
    """Another host's pid means nothing here (even one that is alive on this host): only its
    heartbeat counts, and it counts until exactly GRACE_S have passed."""
    beat = 1_000_000.0
    trial = running_trial({ATTR: {"host": OTHER_HOST, "pid": os.getpid(), "start": "1"},
                           "harness.heartbeat": beat})
    assert is_dead(trial, now=beat + 1) is None
    assert is_dead(trial, now=beat + liveness.GRACE_S) is None
    why = is_dead(trial, now=beat + liveness.GRACE_S + 1)
    assert why is not None and f"no heartbeat on {OTHER_HOST}" in why
    assert f"{liveness.GRACE_S + 1:.0f} s" in why


def test_a_trial_without_any_heartbeat_is_judged_from_its_start():
    """A worker that died before its first beat: the trial's start time stands in for it."""
    trial = running_trial({})
    started = trial.datetime_start.timestamp()
    assert is_dead(trial, now=started + liveness.GRACE_S - 1) is None
    assert "no heartbeat for" in is_dead(trial, now=started + liveness.GRACE_S + 5)


def test_a_local_worker_is_judged_by_its_process_not_its_heartbeat():
    """On this host the process decides at once: alive (same pid and start time) is alive however
    old the heartbeat; the same pid with another start time is a reused pid, a dead worker."""
    me = WorkerId.me()
    assert me.start is not None and me.start == process_start(os.getpid())
    alive = running_trial({ATTR: me.as_attr(), "harness.heartbeat": 0.0})
    assert is_dead(alive, now=time.time()) is None
    reused = running_trial({ATTR: {**me.as_attr(), "start": f"{float(me.start) + 1:.3f}"}, "harness.heartbeat": time.time()})
    assert f"worker pid {me.pid} on {me.host} is gone" == is_dead(reused)


@pytest.fixture
def ablation(project: Path, tiny: dict) -> tuple[optuna.Study, MlflowClient]:
    """A created two-arm, one-seed ablation study on the project's journal, nothing run yet."""
    spec = load_spec(write_spec(project, {**tiny, "data.train_chars": 2000}, seeds=(0,)))
    client = init_store()
    return create_ablation(spec, open_storage(default_storage()), default_storage(), client), client


def claim_as(study: optuna.Study, trial: optuna.Trial, who: dict[str, Any]) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, ATTR, who)
    study._storage.set_trial_system_attr(trial._trial_id, "harness.heartbeat", time.time())


def test_a_duplicate_cell_stands_down_without_training(ablation):
    """Two workers re-queued the same dead cell at once: the later copy is pruned, pointing at the
    first, and trains nothing (no MLflow run); the first copy is not held back by the later one."""
    study, client = ablation
    first = optuna.Trial(study, _optuna.pop_waiting(study))
    claim_as(study, first, WorkerId.me().as_attr())
    cell = {"arm": first.user_attrs["arm"], "seed": first.user_attrs["seed"]}
    study.enqueue_trial({}, user_attrs=cell)
    waiting = [t for t in study.get_trials(states=(TrialState.WAITING,)) if t.user_attrs["arm"] == cell["arm"]]
    (copy,) = waiting
    study._storage.set_trial_state_values(copy._trial_id, TrialState.RUNNING)  # as a worker's pop
    # Both RUNNING: the copy started later, so it defers; the first does not defer to it.
    assert first_owner(study, study._storage.get_trial(first._trial_id)) is None
    assert first_owner(study, study._storage.get_trial(copy._trial_id)).number == first.number
    assert claim_popped(study, Ablation(), copy._trial_id) is None
    done = study._storage.get_trial(copy._trial_id)
    assert done.state == TrialState.PRUNED and done.user_attrs["duplicate_of"] == first.number
    exp = client.get_experiment_by_name(study.study_name)
    assert client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'run'") == []


def test_a_reaped_trial_that_finishes_late_is_closed_stale_and_its_cell_reruns(ablation, monkeypatch):
    """The worker's heartbeat stalls (say a network partition longer than the grace period); a
    peer reaps its trial while it still trains. When the training ends, the trial cannot become
    COMPLETE: its MLflow run must end KILLED as stale (not FINISHED, which would count the cell
    twice once it reruns), the worker must carry on, and the cell must be queued again."""
    study, client = ablation
    trial, beat = claim(study, Ablation())
    original = RunTracker.log_eval
    reaped: list[list[int]] = []

    def stall_then_reap(self: RunTracker, ev: Any) -> None:
        original(self, ev)
        if not reaped:  # at the first evaluation: the trial looks like a silent remote worker's
            study._storage.set_trial_system_attr(trial._trial_id, ATTR, {"host": OTHER_HOST, "pid": 1, "start": "1"})
            study._storage.set_trial_system_attr(trial._trial_id, "harness.heartbeat", time.time() - 10 * liveness.GRACE_S)
            reaped.append(reap_dead(study, client))

    monkeypatch.setattr(RunTracker, "log_eval", stall_then_reap)
    run_trial(study, trial, beat, Ablation(), client, DataCache())
    assert reaped == [[trial.number]]
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and "no heartbeat" in frozen.system_attrs["harness.reaped"]
    run = client.get_run(frozen.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["harness.reason"] == STALE
    key = f"{frozen.user_attrs['arm']}/seed={frozen.user_attrs['seed']}"
    assert key in enqueue_missing(study, retry_failed=False)


REMOTE_WORKER = ("import socket, sys; socket.gethostname = lambda: {host!r}; "
                 "from harness.cli import main; sys.exit(main(sys.argv[1:]))").format(host=OTHER_HOST)
"""`ablate worker` as if on another machine: its liveness record names another host."""


@pytest.mark.slow
@pytest.mark.service
def test_a_sigkilled_remote_worker_on_postgresql_loses_nothing(project, tiny, postgres_server, monkeypatch):
    """Optuna and MLflow on PostgreSQL. A worker of "another machine" is SIGKILLed mid-trial;
    two local workers then serve the study: they can only know it died from its silent
    heartbeat, reap its trial after the grace period, close its run KILLED and run the cell
    again. Every cell ends with exactly one COMPLETE trial and one FINISHED run."""
    storage_url = postgres_server("optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_server("mlflow"))
    path = write_spec(project, {**tiny, "train.epochs": 3}, seeds=(0, 1))
    client = init_store()
    create_ablation(load_spec(path), open_storage(storage_url), storage_url, client)
    env = {**os.environ, "ABLATE_HOME": str(project), "ABLATE_POLL_S": "0.5", "ABLATE_HEARTBEAT_S": "0.5",
           "ABLATE_GRACE_S": "8"}
    args = ["worker", "--study", "tiny", "--storage", storage_url, "--threads", "1"]
    remote = subprocess.Popen([sys.executable, "-c", REMOTE_WORKER, *args], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        victim = stopped_mid_trial("tiny", storage_url, time.time() + 240, pid=remote.pid)
    finally:
        remote.kill()
        remote.wait()
    assert victim.system_attrs[ATTR]["host"] == OTHER_HOST
    local = [subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in local]
    assert [w.returncode for w in local] == [0, 0], outputs
    assert sum(int(o.split("worker done: ")[1].split()[0]) for o in outputs) == 4  # 3 cells + the rerun
    study = load_study("tiny", storage_url)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert f"no heartbeat on {OTHER_HOST}" in killed.system_attrs["harness.reaped"]
    assert complete_by_cell(study) == {(a, s): 1 for a in ("baseline", "dropout=0.2") for s in (0, 1)}
    mlflow_client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("tiny").experiment_id],
                                     "tags.`harness.kind` = 'run'")
    finished = sorted((r.data.tags["harness.arm"], r.data.tags["harness.seed"]) for r in runs
                      if r.info.status == "FINISHED")
    assert finished == sorted((a, str(s)) for a in ("baseline", "dropout=0.2") for s in (0, 1))
    dead_run = mlflow_client.get_run(victim.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "KILLED" and "worker died: no heartbeat" in dead_run.data.tags["harness.reason"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
