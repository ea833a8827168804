"""The study engine: specs, the queue, reruns, dead workers, and (with a server) PostgreSQL."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.cli import main
from harness.core.errors import UsageError
from harness.studies.spec import load_spec, parse_spec
from harness.tracking.storage import default_storage, load_study, open_storage
from harness.studies.cells import CELL_STATES


def write_spec(project, tiny, name="tiny", seeds=(0, 1), factors=None, **extra):
    base = {}
    for key, value in tiny.items():
        section, leaf = key.split(".")
        base.setdefault(section, {})[leaf] = value
    base["train"]["epochs"] = 2
    spec = {"name": name, "base": base, "factors": factors or {"model.dropout": [0.2]},
            "seeds": list(seeds), **extra}
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def store():
    return MlflowClient(mlflow.get_tracking_uri())


def finished_runs(client, name):
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'run'")


def complete_by_cell(study):
    out = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        key = (t.user_attrs["arm"], t.user_attrs["seed"])
        out[key] = out.get(key, 0) + 1
    return out


def sigterm_reached(pid: int) -> bool:
    """Whether a SIGTERM reached the stopped process `pid`: it is gone (SIGTERM's default action
    kills even a stopped process) or the signal waits on it (when it has a handler)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return fields["State"].split()[0] in ("Z", "X") or bool(pending & (1 << (signal.SIGTERM - 1)))


def stopped_mid_trial(study_name: str, storage_url: str, deadline: float, pid: int | None = None):
    """SIGSTOP a worker (any, or the one with `pid`) at a moment it holds a RUNNING trial with
    an MLflow run, and return that trial. Frozen, the worker cannot finish the trial before the
    caller kills it: a kill test cannot race with the victim trial completing."""
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            study = load_study(study_name, storage_url)
        except UsageError:  # the driver has not created the study yet
            continue
        held = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                if "mlflow_run_id" in t.user_attrs and "harness.worker" in t.system_attrs
                and pid in (None, t.system_attrs["harness.worker"]["pid"])]
        if not held:
            continue
        victim = held[0].system_attrs["harness.worker"]["pid"]
        os.kill(victim, signal.SIGSTOP)
        again = study._storage.get_trial(held[0]._trial_id)
        if again.state == TrialState.RUNNING:
            return again
        os.kill(victim, signal.SIGCONT)  # it finished in between: wait for the next one
    raise AssertionError("no worker held a trial in time")


# --- specs -----------------------------------------------------------------------------------

def test_one_at_a_time_and_factorial_arms(tiny):
    base = {"model": {"dropout": 0.0}}
    spec = parse_spec({"name": "s", "base": base, "seeds": [0, 1, 2], "factors": {
        "model.dropout": [0.0, 0.1, 0.3],
        "schedule": [{"name": "step", "step_size": 4}, {"label": "cos", "value": {"name": "cosine"}}]},
        "arms": [{"label": "adam-l2", "set": {"optim.name": "adam", "optim.weight_decay": 0.01}}]})
    assert [a.label for a in spec.arms] == ["baseline", "dropout=0.1", "dropout=0.3",
                                            "schedule=step(step_size=4)", "cos", "adam-l2"]
    assert spec.skipped == ("dropout=0",) and spec.baseline == "baseline"
    assert len(spec.cells) == 18
    assert spec.arm("adam-l2").config.optim.name == "adam" and spec.arm("cos").config.schedule.name == "cosine"
    fact = parse_spec({"name": "f", "design": "factorial", "seeds": [0], "base": base,
                       "factors": {"model.dropout": [0.0, 0.2], "optim.weight_decay": [0.0, 0.1]}})
    assert [a.label for a in fact.arms] == ["dropout=0, weight_decay=0", "dropout=0, weight_decay=0.1",
                                            "dropout=0.2, weight_decay=0", "dropout=0.2, weight_decay=0.1"]
    assert fact.baseline == "dropout=0, weight_decay=0"


@pytest.mark.parametrize("spec, message", [
    ({"factors": {"model.dropuot": [0.1]}}, "factor 'model.dropuot': not a config key (did you mean 'model.dropout'?)"),
    ({"factors": {"model.dropout": []}}, "factor 'model.dropout': needs a non-empty list of values"),
    ({"seeds": [0, 1, 1]}, "seed 1 is listed twice"),
    ({"seeds": []}, "seeds=[]: must be a non-empty list of integers"),
    ({"factors": {"model.dropout": [1.5]}}, "arm 'dropout=1.5': model.dropout=1.5: Input should be less than 1"),
    ({"factors": {"schedule.name": ["exponential"]}}, "schedule.name='exponential': unknown scheduler"),
    ({"design": "latin-square"}, "design='latin-square': allowed: one-at-a-time, factorial"),
    ({"name": "has space"}, "name='has space'"),
    ({"factors": {}}, "a spec needs factors (or arms)"),
    ({"extra_key": 1}, "spec key 'extra_key' is not known"),
    ({"baseline": "nope"}, "baseline='nope': not an arm of this spec"),
    ({"design": "factorial", "factors": {"model.dropout": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                                         "optim.weight_decay": [0.0, 0.01, 0.1, 0.3]},
      "seeds": [0, 1, 2, 3, 4]}, "gives 24 arms x 5 seeds = 120 runs; pass --yes"),
])
def test_bad_specs_are_one_clear_error(spec, message):
    raw = {"name": "s", "factors": {"model.dropout": [0.1]}, "seeds": [0], **spec}
    with pytest.raises(UsageError) as err:
        parse_spec(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_spec_on_the_command_line_exits_2_and_writes_nothing(project, tiny, capsys):
    path = write_spec(project, tiny, seeds=(0, 0))
    assert main(["run", str(path)]) == 2
    assert "seed 0 is listed twice" in capsys.readouterr().err
    assert not (project / "mlruns" / "optuna.journal").exists()
    assert not (project / "mlruns" / "mlflow.db").exists()
    path = write_spec(project, tiny, name="short", factors={"data.block_size": [100000]})
    assert main(["run", str(path)]) == 2
    assert "arm 'block_size=100000': data.block_size=100000: larger than" in capsys.readouterr().err
    assert main(["run", str(project / "none.yaml")]) == 2


def test_dry_run_prints_the_cells_and_runs_nothing(project, tiny, capsys):
    path = write_spec(project, tiny)
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 arms x 2 seeds = 4 runs" in out and "dropout=0.2" in out
    assert not (project / "mlruns" / "optuna.journal").exists()


@pytest.mark.parametrize("url, message", [
    ("sqlite:///x.db", "SQLite is not safe"),
    ("redis://localhost", "unknown kind of storage"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:9/db", "does not answer"),
])
def test_bad_storage_urls(url, message):
    with pytest.raises(UsageError) as err:
        open_storage(url)
    assert message in str(err.value) and "secret" not in str(err.value)


# --- running, rerunning --------------------------------------------------------------------------

@pytest.mark.slow
def test_study_runs_every_cell_once_and_reruns_only_what_is_missing(project, tiny, capsys):
    path = write_spec(project, tiny)
    assert main(["run", str(path), "--workers", "2"]) == 0
    study = load_study("tiny", default_storage())
    assert complete_by_cell(study) == {(a, s): 1 for a in ("baseline", "dropout=0.2") for s in (0, 1)}
    client = store()
    runs = finished_runs(client, "tiny")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    parent_id = study.user_attrs["harness"]["parent_run_id"]
    arm_runs = study.user_attrs["harness"]["arm_runs"]  # study -> arm -> seed runs
    for r in runs:
        assert r.data.tags["mlflow.parentRunId"] == arm_runs[r.data.tags["harness.arm"]]
        assert {"harness.study", "harness.arm", "harness.seed", "harness.config_hash", "optuna.trial_number"} <= set(r.data.tags)
    trial_runs = {t.user_attrs["mlflow_run_id"] for t in study.get_trials()}
    assert trial_runs == {r.info.run_id for r in runs}
    summaries = client.search_runs([runs[0].info.experiment_id], "tags.`harness.kind` = 'arm-summary'")
    assert sorted(r.data.tags["harness.arm"] for r in summaries) == ["baseline", "dropout=0.2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in summaries} == {parent_id}
    s = next(r for r in summaries if r.data.tags["harness.arm"] == "baseline").data.metrics
    finals = [r.data.metrics["final_gap"] for r in runs if r.data.tags["harness.arm"] == "baseline"]
    assert s["final_gap"] == pytest.approx(sum(finals) / 2) and s["n_seeds"] == 2  # the runs' own names
    assert client.get_run(parent_id).info.status == "FINISHED"

    capsys.readouterr()
    assert main(["run", str(path)]) == 0  # the rerun is a no-op
    assert "nothing to run" in capsys.readouterr().out
    assert len(load_study("tiny", default_storage()).trials) == 4

    # The user deletes one cell's run in the UI: the rerun trains that cell again, only that one.
    victim = runs[0]
    client.delete_run(victim.info.run_id)
    assert main(["run", str(path)]) == 0
    study = load_study("tiny", default_storage())
    assert len(study.trials) == 5
    redone = study.trials[-1]
    assert (redone.user_attrs["arm"], redone.user_attrs["seed"]) == (victim.data.tags["harness.arm"], int(victim.data.tags["harness.seed"]))
    assert redone.state == TrialState.COMPLETE
    summaries = client.search_runs([runs[0].info.experiment_id], "tags.`harness.kind` = 'arm-summary'")
    assert len(summaries) == 2  # updated in place, not duplicated


@pytest.mark.slow
def test_a_failed_cell_is_retried_by_the_next_run(project, tiny, capsys):
    """A cell that crashed (not diverged: that is a result, tests/test_robustness.py) stays failed
    for the workers of this run and is trained again by the next `ablate run`, which leaves the
    finished cells alone."""
    from harness.studies import engine, worker
    from harness.studies.ablation import create_ablation
    from harness.tracking.store import init_store

    path = write_spec(project, tiny, seeds=(0,))
    url = default_storage()
    create_ablation(load_spec(path), open_storage(url), url, init_store())
    real = engine.run_tracked

    def crash_the_dropout_arm(cfg, *args, **kwargs):
        if cfg.model.dropout > 0:
            raise RuntimeError("No space left on device (injected)")
        return real(cfg, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:  # not `monkeypatch`: its undo would leave the project
        patch.setattr(engine, "run_tracked", crash_the_dropout_arm)
        assert worker.run_worker("tiny", url) == 2
    study = load_study("tiny", url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["error"] == "RuntimeError: No space left on device (injected)"
    assert len(study.get_trials()) == 2  # a crash is not retried by this run's workers
    capsys.readouterr()
    assert main(["status", "tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["arm", *CELL_STATES]
    counts = {row[0]: dict(zip(CELL_STATES, map(int, row[1:]))) for row in map(str.split, lines[1:])}
    assert set(counts) == {"baseline", "dropout=0.2", "total"}
    assert counts["baseline"]["done"] == 1 and counts["dropout=0.2"]["failed"] == 1
    assert counts["total"] == {s: sum(c[s] for a, c in counts.items() if a != "total") for s in CELL_STATES}
    assert main(["run", str(path), "--workers", "1"]) == 0
    study = load_study("tiny", url)
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["arm"] for t in complete) == ["baseline", "dropout=0.2"]  # baseline not rerun


def test_changed_base_config_is_refused_with_the_difference(project, tiny, capsys):
    path = write_spec(project, tiny, factors={"model.dropout": [0.2]})
    from harness.studies.spec import load_spec
    from harness.studies.ablation import create_ablation
    from harness.tracking.store import init_store

    client = init_store()
    spec = load_spec(path)
    create_ablation(spec, open_storage(default_storage()), default_storage(), client)
    tiny2 = {**tiny, "model.n_embd": 64}
    path = write_spec(project, tiny2, factors={"model.dropout": [0.2]})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the spec of study 'tiny' changed since it ran: arm 'baseline' now differs (model.n_embd: 32 -> 64)" in err
    assert "name: tiny-v2" in err


@pytest.mark.slow
def test_sigkilled_worker_loses_no_cell_and_runs_none_twice(project, tiny):
    """Two workers; SIGKILL one mid-trial. The survivor reaps its trial and runs the cell again."""
    path = write_spec(project, {**tiny, "train.epochs": 4, "data.train_chars": 12000}, seeds=(0, 1, 2))
    env = {**os.environ, "ABLATE_HOME": str(project), "ABLATE_POLL_S": "0.5"}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--workers", "2"],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim = stopped_mid_trial("tiny", default_storage(), time.time() + 180)
    except AssertionError:
        driver.kill()
        raise
    os.kill(victim.system_attrs["harness.worker"]["pid"], signal.SIGKILL)  # frozen mid-trial
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out
    study = load_study("tiny", default_storage())
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and "is gone" in killed.system_attrs["harness.reaped"]
    assert complete_by_cell(study) == {(a, s): 1 for a in ("baseline", "dropout=0.2") for s in (0, 1, 2)}
    client = store()
    runs = finished_runs(client, "tiny")
    by_status = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r)
    assert len(by_status["FINISHED"]) == 6
    cells = {(r.data.tags["harness.arm"], r.data.tags["harness.seed"]) for r in by_status["FINISHED"]}
    assert len(cells) == 6
    killed_run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED" and "worker died" in killed_run.data.tags["harness.reason"]
    assert "RUNNING" not in by_status


@pytest.mark.slow
@pytest.mark.service
def test_three_workers_on_postgresql_run_every_cell_exactly_once(project, tiny, postgres_server, monkeypatch):
    """The several-machine set-up on one machine: Optuna and MLflow both on PostgreSQL, the
    study created by the driver, then three `ablate worker` processes joining it."""
    from harness.studies.spec import load_spec
    from harness.studies.ablation import create_ablation
    from harness.tracking.store import init_store

    storage_url = postgres_server("optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_server("mlflow"))
    path = write_spec(project, tiny, seeds=(0, 1, 2), factors={"model.dropout": [0.2], "augment.noise": [0.05]})
    client = init_store()
    create_ablation(load_spec(path), open_storage(storage_url), storage_url, client)
    env = {**os.environ, "ABLATE_HOME": str(project), "ABLATE_POLL_S": "0.5"}
    workers = [subprocess.Popen([sys.executable, "-m", "harness.cli", "worker", "--study", "tiny",
                                 "--storage", storage_url, "--threads", "1"],
                                cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(3)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    trained = [int(o.split("worker done: ")[1].split()[0]) for o in outputs]
    assert sum(trained) == 9  # every cell trained once, none twice
    study = load_study("tiny", storage_url)
    # Trained by these three workers (which of them took how many depends on timing).
    assert {t.system_attrs["harness.worker"]["pid"] for t in study.trials} <= {w.pid for w in workers}
    arms = ("baseline", "dropout=0.2", "noise=0.05")
    assert complete_by_cell(study) == {(a, s): 1 for a in arms for s in (0, 1, 2)}
    assert len(study.trials) == 9
    runs = finished_runs(MlflowClient(os.environ["MLFLOW_TRACKING_URI"]), "tiny")
    assert sorted((r.data.tags["harness.arm"], r.data.tags["harness.seed"]) for r in runs) == \
        sorted((a, str(s)) for a in arms for s in (0, 1, 2))
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_dead_but_unreaped_worker_counts_as_dead():
    """A SIGKILLed worker whose parent has not reaped it yet is a zombie: /proc still lists it."""
    from harness.studies.liveness import process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert process_start(child.pid) is not None
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and process_start(child.pid) is not None:
        time.sleep(0.1)
    assert process_start(child.pid) is None  # still unreaped here: we have not waited on it
    assert child.wait() == -signal.SIGKILL


def test_a_live_worker_on_a_host_without_proc_is_alive(monkeypatch):
    """Same-host liveness does not read Linux's /proc itself: with it unreadable to the module (as
    on macOS), a live worker is alive and a dead one dead; a reused pid is told apart."""
    from types import SimpleNamespace

    from harness.studies import liveness

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(liveness, "open", no_proc, raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        def trial(pid, start):
            return SimpleNamespace(system_attrs={liveness.ATTR: {"host": socket.gethostname(), "pid": pid,
                                                                 "start": start}}, datetime_start=None)

        start = liveness.process_start(alive.pid)
        assert start is not None
        assert liveness.is_dead(trial(alive.pid, start)) is None
        assert "is gone" in liveness.is_dead(trial(dead.pid, None))
        assert "is gone" in liveness.is_dead(trial(alive.pid, "1.000"))  # same pid, another process
    finally:
        alive.kill()
        alive.wait()


def test_reaping_closes_the_run_a_dead_worker_never_named(project, tiny):
    """A worker killed after creating its MLflow run but before writing the run id on its trial
    leaves a RUNNING run that only its tags tie to the trial: reaping closes it as KILLED."""
    from harness.studies.liveness import ATTR
    from harness.studies.ablation import create_ablation
    from harness.studies.engine import reap_dead
    from harness.tracking.store import RunTracker, init_store

    spec = load_spec(write_spec(project, tiny, seeds=(0,)))
    client = init_store()
    study = create_ablation(spec, open_storage(default_storage()), default_storage(), client)
    trial = study.ask()  # a queued cell, as a worker takes it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study._storage.set_trial_system_attr(trial._trial_id, ATTR, {
        "host": socket.gethostname(), "pid": dead.pid, "start": "1"})
    orphan = RunTracker.start(client, spec.name, "orphan", {
        "harness.study": spec.name, "optuna.trial_number": str(trial.number)})
    other_study = RunTracker.start(client, spec.name, "other", {
        "harness.study": "another", "optuna.trial_number": str(trial.number)})

    assert reap_dead(study, client) == [trial.number]
    run = client.get_run(orphan.run_id)
    assert run.info.status == "KILLED"
    assert "worker died before the trial recorded this run" in run.data.tags["harness.reason"]
    assert client.get_run(other_study.run_id).info.status == "RUNNING"


def test_the_worker_layout_message_shows_a_configured_thread_count(monkeypatch):
    from harness.studies.launch import layout

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert layout(2, {None}) == "2 worker(s) x 4 thread(s)"
    assert layout(2, {1}) == "2 worker(s) x 1 thread(s)"  # train.threads wins over cores // workers
    assert layout(4, {None, 3}) == "4 worker(s) x 2-3 thread(s)"
