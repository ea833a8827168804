"""The command line end to end, as a user drives it: real processes, real signals, real stores.

- `ablate train` interrupted with SIGINT (Ctrl-C), then `ablate train --resume` in a new process,
  ends with the same evaluations as a run never interrupted.
- Ctrl-C of the `ablate run` driver (the signal reaches its whole process group, as a terminal
  sends it), then the same command again: every cell ends with one COMPLETE trial and one
  FINISHED run; then `ablate report` reads what the training side wrote (tags, metrics,
  history), so a renamed tag on either side breaks it.
- The shipped experiments/*.yaml and studies/*.yaml validate and pass the pre-flight checks.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.cli import main
from harness.core.config import build_config
from harness.studies.spec import cell_config
from harness.tracking.storage import default_storage, load_study
from harness.core.train import train

from conftest import SHARED_DATA
from test_ablation import complete_by_cell, sigterm_reached, stopped_mid_trial, write_spec

ROOT = Path(__file__).resolve().parents[1]


def sigint_default() -> None:
    """As in a terminal: a test run started in the background passes SIGINT on ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, what: str, timeout: float = 240.0, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def stopped_outside_a_write(proc: subprocess.Popen, client: MlflowClient, run_id: str):
    """SIGSTOP `proc` at a moment it holds no write lock on the SQLite store, and return its run.
    Stopped in the middle of a write, it would lock every reader out ('database is locked') until
    it runs again: that moment is let pass (SIGCONT) and the stop tried again."""
    for _ in range(50):
        proc.send_signal(signal.SIGSTOP)
        try:
            return client.get_run(run_id)
        except MlflowException as exc:
            if "database is locked" not in str(exc):
                raise
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the training process held the store's write lock at every stop")


@pytest.mark.slow
def test_sigint_of_ablate_train_then_resume_in_a_new_process(project, tiny):
    overrides = {**tiny, "train.epochs": 8, "model.dropout": 0.1, "augment.char_swap": 0.05}
    sets = [f"--set={k}={v}" for k, v in overrides.items()]
    env = {**os.environ, "ABLATE_HOME": str(project)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "train", "--quiet", *sets], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    client = MlflowClient(mlflow.get_tracking_uri())

    def evaluated_run():
        if not (project / "mlruns" / "mlflow.db").exists() or proc.poll() is not None:
            return None
        exp = client.get_experiment_by_name("train")
        runs = [] if exp is None else client.search_runs([exp.experiment_id])
        return runs[0].info.run_id if runs and "val_loss" in runs[0].data.metrics else None

    run_id = wait_for(evaluated_run, "the first evaluation")
    # Frozen, the run cannot end before the Ctrl-C lands: it is mid-training for certain.
    assert stopped_outside_a_write(proc, client, run_id).info.status == "RUNNING"
    assert len(client.get_metric_history(run_id, "val_loss")) < 8
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert f"ablate train --resume {run_id}" in killed.data.tags["harness.reason"]

    resumed = subprocess.run([sys.executable, "-m", "harness.cli", "train", "--quiet", "--resume", run_id],
                             cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"run {run_id} FINISHED" in resumed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "harness.reason" not in run.data.tags
    full = train(build_config({}, overrides)).history
    logged = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in logged] == [e.step for e in full]
    assert [m.value for m in logged] == pytest.approx([e.val_loss for e in full], rel=1e-6)
    assert run.data.metrics["best_val_loss"] == pytest.approx(min(e.val_loss for e in full), rel=1e-6)


@pytest.mark.slow
def test_ctrl_c_of_the_run_driver_then_rerun_then_report(project, tiny, capsys):
    arms, seeds = ("baseline", "dropout=0.2"), (0, 1)
    path = write_spec(project, {**tiny, "train.epochs": 3}, seeds=seeds)
    env = {**os.environ, "ABLATE_HOME": str(project), "ABLATE_POLL_S": "0.5"}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--workers", "2"],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, preexec_fn=sigint_default)
    try:
        held = stopped_mid_trial("tiny", default_storage(), time.time() + 240)
    except AssertionError:
        driver.kill()
        raise
    pid = held.system_attrs["harness.worker"]["pid"]
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the driver and its workers all get it
    wait_for(lambda: sigterm_reached(pid), "the driver stopping its workers", timeout=60, poll=0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out
    study = load_study("tiny", default_storage())
    assert study.trials[held.number].state == TrialState.FAIL
    client = MlflowClient(mlflow.get_tracking_uri())
    assert client.get_run(held.user_attrs["mlflow_run_id"]).info.status == "KILLED"

    assert main(["run", str(path), "--workers", "2"]) == 0
    study = load_study("tiny", default_storage())
    assert complete_by_cell(study) == {(a, s): 1 for a in arms for s in seeds}
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([exp_id], "tags.`harness.kind` = 'run'")
    assert "RUNNING" not in {r.info.status for r in runs}
    finished = {r.info.run_id: r for r in runs if r.info.status == "FINISHED"}
    cells = sorted((r.data.tags["harness.arm"], int(r.data.tags["harness.seed"])) for r in finished.values())
    assert cells == sorted((a, s) for a in arms for s in seeds)  # one FINISHED run per cell
    assert {t.user_attrs["mlflow_run_id"] for t in study.get_trials(states=(TrialState.COMPLETE,))} == set(finished)

    capsys.readouterr()
    assert main(["report", "tiny"]) == 0
    assert "report: " in capsys.readouterr().out
    out_dir = project / "reports" / "tiny"
    assert {"index.html", "report.md", "runs.csv", "verdicts.csv"} <= {p.name for p in out_dir.iterdir()}
    with (out_dir / "runs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # The report found every finished run under its arm and seed, with the metrics the run logged.
    assert sorted(r["run_id"] for r in rows) == sorted(finished)
    for row in rows:
        run = finished[row["run_id"]]
        assert (row["arm"], row["seed"]) == (run.data.tags["harness.arm"], run.data.tags["harness.seed"])
        assert float(row["test_loss"]) == pytest.approx(run.data.metrics["test_loss"])
    with (out_dir / "verdicts.csv").open(newline="") as f:
        (verdict,) = list(csv.DictReader(f))
    test_loss = {(r.data.tags["harness.arm"], int(r.data.tags["harness.seed"])): r.data.metrics["test_loss"]
                 for r in finished.values()}
    diffs = [test_loss[("dropout=0.2", s)] - test_loss[("baseline", s)] for s in seeds]
    assert verdict["arm"] == "dropout=0.2" and int(verdict["n"]) == len(seeds)
    assert float(verdict["test_loss_diff"]) == pytest.approx(sum(diffs) / len(diffs))
    assert verdict["verdict"] == "too-few-seeds"  # two seeds: the numbers, no winner


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiments_pass_a_dry_run(path, project, capsys, monkeypatch):
    """`ablate run --dry-run`: the spec parses, every cell's config builds and passes pre-flight
    (corpus, split, device, prompt, model), and nothing is written."""
    if SHARED_DATA.exists():
        monkeypatch.setenv("ABLATE_TINYSHAKESPEARE", str(SHARED_DATA))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"study {path.stem}" in out and "seeds" in out
    assert not (project / "mlruns").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate_and_pass_preflight(path, monkeypatch):
    """What `ablate search` checks before it touches a store: the spec and its space (every
    extreme builds a config), and the baseline's pre-flight at every seed."""
    from harness.tracking.run import preflight
    from harness.studies.search_results import describe
    from harness.studies.search_space import load_search_spec
    from harness.studies.engine import DataCache

    if SHARED_DATA.exists():
        monkeypatch.setenv("ABLATE_TINYSHAKESPEARE", str(SHARED_DATA))
    spec = load_search_spec(str(path))
    data = DataCache()
    for seed in spec.seeds:
        cfg = cell_config(spec.baseline, seed)
        preflight(cfg, data.get(cfg))
    assert spec.trials and spec.name in describe(spec, spec.trials)  # the total is stated in the spec
