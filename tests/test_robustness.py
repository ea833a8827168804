"""Nothing lost: faults and misuse that used to lose the user's files, leave studies or runs
half-made, or keep a study from ever completing (issue 11). Real stores, real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.cli import main
from harness.core.config import build_config
from harness.core.errors import UsageError
from harness.report import build_report
from harness.tracking.run import run_tracked
from harness.studies.spec import load_spec, parse_spec
from harness.tracking.storage import default_storage, load_study, open_storage
from harness.studies.ablation import create_ablation
from harness.studies.record import read
from harness.tracking.store import init_store
from harness.core.train import Interrupted
from harness.studies.worker import run_worker

from postgres import free_port
from report_fixtures import Store, make_loose


def write_spec(project: Path, tiny: dict, name: str = "robust", factors: dict | None = None,
               base: dict | None = None, seeds: tuple[int, ...] = (0,)) -> Path:
    tree: dict = {}
    for key, value in tiny.items():
        section, leaf = key.split(".")
        tree.setdefault(section, {})[leaf] = value
    tree["train"]["epochs"] = 1
    for section, values in (base or {}).items():
        tree.setdefault(section, {}).update(values)
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": tree, "factors": factors or {"model.dropout": [0.2]},
                                    "seeds": list(seeds)}))
    return path


def cli(project: Path, *args: str, timeout: float = 300, **popen: object) -> subprocess.CompletedProcess:
    """`ablate ARGS` as a user runs it: a fresh process in the project folder."""
    env = {**os.environ, "ABLATE_HOME": str(project)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. the report writes only into its own folder ------------------------------------------------

def test_report_never_overwrites_or_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    make_loose(store)
    mine = tmp_path / "mine"
    (mine / "figures").mkdir(parents=True)
    (mine / "figures" / "holiday.png").write_bytes(b"my photo")
    (mine / "index.html").write_text("my page")
    (mine / "runs.csv").write_text("my data")
    before = files(mine)
    with pytest.raises(UsageError, match="marker"):
        build_report("train", out_dir=mine, tracking_uri=store.tracking_uri)
    assert files(mine) == before
    a_file = tmp_path / "a.txt"
    a_file.write_text("mine")
    with pytest.raises(UsageError, match="is a file"):
        build_report("train", out_dir=a_file, tracking_uri=store.tracking_uri)
    assert a_file.read_text() == "mine"

    from harness.report.output import MARKER

    out = tmp_path / "reports" / "train"
    build_report("train", out_dir=out, tracking_uri=store.tracking_uri)
    assert (out / MARKER).is_file() and (out / "index.html").is_file()
    # Its own folder is replaced on the next report, stale figures included.
    (out / "figures" / "old-figure.png").write_bytes(b"stale")
    build_report("train", out_dir=out, tracking_uri=store.tracking_uri)
    assert not (out / "figures" / "old-figure.png").exists()
    # An empty folder the user made is fine too.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_report("train", out_dir=empty, tracking_uri=store.tracking_uri).index_html.is_file()


def test_report_of_an_unknown_study_through_the_cli_creates_nothing(project: Path) -> None:
    done = cli(project, "report", "nosuch")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no study named 'nosuch'" in done.stderr
    assert list(project.iterdir()) == []


# --- 5. transfer from a run of the project's store -------------------------------------------------

def test_init_from_a_run_reads_the_project_store_and_creates_no_other(project: Path, tiny: dict) -> None:
    client = init_store()
    source = run_tracked(build_config({}, {**tiny, "train.epochs": 1, "train.save_checkpoint": True}),
                         client, "source")
    sets = [a for k, v in {**tiny, "train.epochs": 1}.items() for a in ("--set", f"{k}={v}")]
    ref = f"transfer.init_from=runs:/{source.run_id}"
    done = cli(project, "train", "--quiet", *sets, "--set", ref)
    assert done.returncode == 0, done.stderr
    spec = write_spec(project, tiny, base={"transfer": {"init_from": f"runs:/{source.run_id}"}})
    done = cli(project, "run", str(spec), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert not (project / "mlflow.db").exists()  # MLflow's own default, beside the project's store


# --- 6. creating a study is all or nothing --------------------------------------------------------

def test_a_study_whose_creation_fails_leaves_nothing_behind_and_runs_again(project: Path, tiny: dict) -> None:
    """The parent run's artifacts cannot be written (a file stands where its folder goes): the
    failure happens after the Optuna study and the MLflow parent run exist. Neither may remain."""
    from harness.studies.search import create_search
    from harness.studies.search_space import parse_search_spec

    client = init_store()
    url = default_storage()
    storage = open_storage(url)
    base = {"data": {"corpus": tiny["data.corpus"]}}
    makers = {
        "half-abl": lambda: create_ablation(parse_spec({"name": "half-abl", "base": base, "seeds": [0],
                                                        "factors": {"model.dropout": [0.2]}}), storage, url, client),
        "half-search": lambda: create_search(parse_search_spec({"name": "half-search", "base": base, "trials": 2,
                                                                "space": {"model.dropout": {"float": [0.0, 0.5]}}}),
                                             storage, url, client, 2, None),
    }
    for name, make in makers.items():
        blocker = project / "mlruns" / "artifacts" / name
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("in the way")
        with pytest.raises(OSError):
            make()
        assert name not in optuna.get_all_study_names(storage)
        exp = client.get_experiment_by_name(name)
        assert client.search_runs([exp.experiment_id]) == []  # the parent run is gone (deleted)
        blocker.unlink()
        study = make()
        assert read(study).experiment == name
        assert client.get_run(read(study).parent_run_id).info.status == "RUNNING"


# --- 8. resuming ------------------------------------------------------------------------------------

def test_a_finished_run_does_not_resume_and_a_resumed_run_drops_its_interrupted_reason(
        project: Path, tiny: dict, capsys: pytest.CaptureFixture) -> None:
    client = init_store()

    def ctrl_c(_ev: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the first evaluation, inside the training loop

    with pytest.raises(Interrupted):
        run_tracked(build_config({}, {**tiny, "train.epochs": 2}), client, "resume", should_stop=ctrl_c)
    exp = client.get_experiment_by_name("resume")
    run_id = client.search_runs([exp.experiment_id])[0].info.run_id
    assert client.get_run(run_id).info.status == "KILLED"
    assert "interrupted" in client.get_run(run_id).data.tags["harness.reason"]

    assert main(["train", "--resume", run_id, "--quiet"]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "harness.reason" not in run.data.tags
    evaluations = len(client.get_metric_history(run_id, "val_loss"))
    capsys.readouterr()

    assert main(["train", "--resume", run_id, "--quiet"]) == 2
    assert "FINISHED" in capsys.readouterr().err
    assert len(client.get_metric_history(run_id, "val_loss")) == evaluations
    assert client.get_run(run_id).info.status == "FINISHED"


# --- 10. a diverging arm is a result ----------------------------------------------------------------

def test_a_diverging_arm_is_settled_and_the_study_completes(project: Path, tiny: dict,
                                                            capsys: pytest.CaptureFixture) -> None:
    path = write_spec(project, tiny, name="diverge", factors={"optim.lr": [1.0e30]})
    spec = load_spec(path)
    client = init_store()
    url = default_storage()
    create_ablation(spec, open_storage(url), url, client)
    run_worker("diverge", url)  # in-process: the baseline, then the diverging cell, retried once
    study = load_study("diverge", url)
    diverging = [t for t in study.get_trials() if t.user_attrs["arm"] != "baseline"]
    assert [t.state for t in diverging] == [TrialState.FAIL] * 2
    assert all("non-finite loss" in t.user_attrs["diverged"] for t in diverging)

    capsys.readouterr()
    assert main(["run", str(path)]) == 0  # nothing left to run: every cell is settled
    out = capsys.readouterr().out
    assert any(line.split()[:3] == ["lr=1e+30", "0", "diverged"] for line in out.splitlines())  # cells table
    assert "1 cell(s) diverged" in out
    parent = client.get_run(read(study).parent_run_id)
    assert parent.info.status == "FINISHED"
    summaries = {r.data.tags["harness.arm"]: r for r in client.search_runs(
        [parent.info.experiment_id], "tags.`harness.kind` = 'arm-summary'")}
    assert set(summaries) == {"baseline", "lr=1e+30"}
    assert summaries["lr=1e+30"].data.tags["harness.diverged"] == "0"
    assert summaries["baseline"].data.tags["harness.diverged"] == ""
    assert main(["status", "diverge"]) == 0
    table = capsys.readouterr().out.splitlines()
    header, row = table[0].split(), next(line.split() for line in table if line.startswith("lr=1e+30"))
    assert row[header.index("diverged")] == "1" and row[header.index("failed")] == "0"
    assert len(load_study("diverge", url).get_trials()) == 3  # bounded: no further retry


# --- 14. Ctrl-C closes the interrupted cells ----------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_of_ablate_run_closes_the_running_cells(project: Path, tiny: dict) -> None:
    # Long cells (write_spec's base overrides win over the tiny recipe's epochs): Ctrl-C must land
    # while both workers train, however idle and fast the machine is.
    path = write_spec(project, tiny, name="ctrlc", base={"train": {"epochs": 400}})
    spec = load_spec(path)
    env = {**os.environ, "ABLATE_HOME": str(project)}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--workers", "2"],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    claimed: list = []
    while len(claimed) < 2 and time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = load_study(spec.name, default_storage(), create=False).get_trials(states=(TrialState.RUNNING,))
        except UsageError:
            continue
        claimed = [t for t in trials if "harness.worker" in t.system_attrs and "mlflow_run_id" in t.user_attrs]
    assert len(claimed) == 2, "the workers never started training"
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out
    study = load_study(spec.name, default_storage())
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    client = MlflowClient(mlflow.get_tracking_uri())
    for trial in claimed:
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    done = cli(project, "status", spec.name)
    header = done.stdout.splitlines()[0].split()
    total = next(line.split() for line in done.stdout.splitlines() if line.startswith("total"))
    assert total[header.index("running")] == "0" and total[header.index("failed")] == "2"


@pytest.mark.slow
@pytest.mark.parametrize("command, sig", [("run", signal.SIGTERM), ("search", signal.SIGHUP)])
def test_sigterm_or_sighup_to_the_driver_stops_its_workers_like_ctrl_c(project: Path, tiny: dict, command: str,
                                                                      sig: int) -> None:
    """What a scheduler, a container stop or `kill PID` sends (SIGTERM), or a closed terminal
    (SIGHUP), reaches the driver alone: it stops its workers and closes their trials and runs."""
    path = write_spec(project, tiny, name="stop", base={"train": {"epochs": 400}})
    if command == "search":
        spec = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({"name": "stop", "base": spec["base"], "trials": 4, "pruner": {"name": "none"},
                                        "space": {"model.dropout": {"float": [0.0, 0.3]}}}))
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", command, str(path), "--workers", "2"],
                              cwd=project, env={**os.environ, "ABLATE_HOME": str(project)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    claimed: list = []
    while len(claimed) < 2 and time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = load_study("stop", default_storage(), create=False).get_trials(states=(TrialState.RUNNING,))
        except UsageError:
            continue
        claimed = [t for t in trials if "harness.worker" in t.system_attrs and "mlflow_run_id" in t.user_attrs]
    assert len(claimed) == 2, "the workers never started training"
    driver.send_signal(sig)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out
    for trial in claimed:  # the workers are gone, not training on
        assert not psutil.pid_exists(trial.system_attrs["harness.worker"]["pid"])
    study = load_study("stop", default_storage())
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    client = MlflowClient(mlflow.get_tracking_uri())
    for trial in claimed:
        assert study.trials[trial.number].state == TrialState.FAIL
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"


# --- (b) a dead storage through the CLI ------------------------------------------------------------

def test_a_dead_storage_is_one_line_and_exit_2_for_run_search_and_worker(project: Path, tiny: dict) -> None:
    dead = f"postgresql+psycopg2://user:pw@127.0.0.1:{free_port()}/optuna"
    spec = write_spec(project, tiny)
    search = project / "search.yaml"
    search.write_text(yaml.safe_dump({"name": "s", "base": yaml.safe_load(spec.read_text())["base"], "trials": 2,
                                      "space": {"model.dropout": {"float": [0.0, 0.5]}}}))
    made = set(os.listdir(project))
    for args in (["run", str(spec)], ["search", str(search)], ["worker", "--study", "robust"]):
        done = cli(project, *args, "--storage", dead)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "does not answer" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and ":pw@" not in done.stderr
        assert done.stdout == ""  # not even the study plan
    assert set(os.listdir(project)) == made


# --- 12. reading never creates, on PostgreSQL too ----------------------------------------------------

@pytest.mark.service
def test_status_and_worker_on_an_empty_database_create_no_tables(project: Path, postgres_server,
                                                                 capsys: pytest.CaptureFixture) -> None:
    import sqlalchemy

    url = postgres_server("empty")
    for argv in (["status", "x", "--storage", url], ["worker", "--study", "x", "--storage", url]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds no Optuna studies" in err
    engine = sqlalchemy.create_engine(url)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
