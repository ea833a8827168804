"""Scaling out: workers packed on every GPU of a machine (the assignment, on a fake device list),
the device each cell ran on, the Slurm job script and a real single-node Slurm cluster running a
study end to end, and the Kubernetes Job manifest.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.cli import main
from harness.core import train as core_train
from harness.core.errors import UsageError
from harness.studies import launch
from harness.studies.launch import Placement, on_gpus, spawn_workers
from harness.tracking.storage import default_storage, load_study, open_storage

from test_ablation import complete_by_cell, finished_runs, stopped_mid_trial, write_spec

SECRET = "s3cr3t-pw"
FOUR = ["0", "1", "2", "3"]
"""A fake machine's four GPUs, as CUDA_VISIBLE_DEVICES names them."""


# --- every GPU packed ---------------------------------------------------------------------------

def test_a_cpu_machine_starts_one_worker_per_core_as_before(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    placement = Placement()
    assert placement.devices([]) == []
    assert placement.assign(100, []) == [None] * 8  # CUDA_VISIBLE_DEVICES left as it is
    assert placement.assign(3, []) == [None] * 3  # capped by the work
    assert Placement(workers=2).assign(100, []) == [None, None]
    assert Placement(gpus="none").assign(2, []) == ["", ""]  # --gpus none hides the GPUs


def test_workers_are_packed_on_every_gpu_and_the_host_is_not_oversubscribed(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    gpus = Placement().devices(FOUR)
    assert gpus == FOUR
    devices = Placement().assign(1000, gpus)
    # 16 per GPU measured best, capped at the 4 cores per GPU this host has.
    assert sorted(devices) == sorted(FOUR * 4)
    assert launch.threads_per_worker(len(devices)) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert len(Placement().assign(1000, ["0"])) == launch.MAX_WORKERS_PER_GPU  # one GPU, many cores
    assert Placement(per_gpu=2).assign(1000, gpus) == FOUR * 2  # round-robin, 2 each
    assert Placement(per_gpu=8).assign(5, gpus) == ["0", "1", "2", "3", "0"]  # capped by the work
    assert Placement(workers=6).assign(1000, gpus) == ["0", "1", "2", "3", "0", "1"]
    assert on_gpus(Placement(per_gpu=2).assign(1000, gpus)) == " on GPU(s) 0,1,2,3 (2 worker(s) each)"
    assert on_gpus([None, None]) == ""


def test_gpus_selects_devices_by_position_among_the_visible_ones():
    visible = ["4", "5", "6", "7"]  # CUDA_VISIBLE_DEVICES=4,5,6,7: torch numbers them 0-3
    assert Placement(gpus="1,3").devices(visible) == ["5", "7"]
    assert Placement(gpus="none").devices(visible) == []


@pytest.mark.parametrize("placement, visible, message", [
    (Placement(gpus="4"), FOUR, "--gpus '4': not a GPU of this machine; allowed: none, or a comma-separated list of 0-3"),
    (Placement(gpus="1,1"), FOUR, "a GPU is listed twice"),
    (Placement(gpus="x"), FOUR, "not a GPU of this machine"),
    (Placement(gpus="0"), [], "--gpus: no CUDA device is visible on this machine"),
    (Placement(per_gpu=2), [], "--workers-per-gpu: no CUDA device is visible"),
    (Placement(workers=2, per_gpu=2), FOUR, "--workers and --workers-per-gpu both given"),
    (Placement(per_gpu=2, gpus="none"), FOUR, "--workers-per-gpu with --gpus none"),
])
def test_a_placement_this_machine_cannot_meet_is_refused(placement, visible, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        placement.devices(visible)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert launch.visible_gpus() == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch.visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch.visible_gpus() == []


def test_gpus_on_a_cpu_machine_is_refused_before_anything_is_written(project, tiny, capsys):
    path = write_spec(project, tiny)
    assert main(["run", str(path), "--gpus", "0"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err
    assert not (project / "mlruns").exists()


def test_each_worker_is_pinned_to_its_gpu(tmp_path):
    procs = spawn_workers("no-such-study", f"journal:{tmp_path / 'j'}", 2, 1, tmp_path / "logs", ["1", "3"])
    try:
        envs = [dict(e.split("=", 1) for e in Path(f"/proc/{p.pid}/environ").read_text().split("\0") if "=" in e)
                for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["1", "3"]
    assert all(e["OMP_NUM_THREADS"] == "1" for e in envs)


def test_the_device_label_names_the_machines_gpu(monkeypatch):
    assert core_train.device_label("cpu") == "cpu"
    monkeypatch.setattr(core_train, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert core_train.device_label("cuda") == "cuda:3"  # a worker pinned to GPU 3 sees it as cuda:0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert core_train.device_label("cuda") == "cuda:0"


def test_runs_are_tagged_with_their_device_and_status_shows_where_each_cell_ran(project, tiny, capsys):
    from harness.studies.ablation import create_ablation
    from harness.studies.spec import load_spec
    from harness.studies.worker import open_strategy
    from harness.studies.engine import work
    from harness.tracking.store import init_store

    spec = load_spec(write_spec(project, {**tiny, "train.epochs": 1}, seeds=(0,)))
    client = init_store()
    study = create_ablation(spec, open_storage(default_storage()), default_storage(), client)
    assert main(["status", "tiny", "--cells"]) == 0
    assert re.search(r"baseline/seed=0\s+waiting\s+-\s+-", capsys.readouterr().out)
    assert work(*open_strategy(study), client) == 2
    runs = finished_runs(client, "tiny")
    assert [r.data.tags["harness.device"] for r in runs] == ["cpu", "cpu"]
    assert main(["status", "tiny", "--cells"]) == 0
    out = capsys.readouterr().out
    host = re.escape(socket.gethostname())
    assert re.search(rf"baseline/seed=0\s+done\s+{host}\s+cpu", out), out
    assert re.search(rf"dropout=0.2/seed=0\s+done\s+{host}\s+cpu", out), out


# --- the job script and the manifest --------------------------------------------------------------

def test_the_slurm_dry_run_prints_a_script_without_the_password_and_writes_nothing(project, tiny, capsys,
                                                                                   monkeypatch):
    monkeypatch.setenv("ABLATE_STORAGE", f"postgresql+psycopg2://ablate:{SECRET}@db.example/optuna")
    path = write_spec(project, tiny)
    assert main(["submit", "slurm", str(path), "--array", "3", "--partition", "gpu", "--time", "1:00:00",
                 "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --array=0-2", "#SBATCH --partition=gpu", "#SBATCH --time=1:00:00",
                 "#SBATCH --export=ALL", "-m harness.cli worker --study tiny"):
        assert line in script
    assert SECRET not in script and "postgresql" not in script
    assert "--gpus-per-task" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert not (project / "mlruns").exists()


def test_a_gpu_array_task_packs_workers_on_each_of_its_gpus(project, tiny, capsys, tmp_path):
    """The GPU task's loop, run by bash with a stand-in for the Python: 2 GPUs x 3 workers, each
    pinned to one of the GPUs Slurm gave the task, the task's 12 CPUs shared (2 threads each)."""
    path = write_spec(project, tiny)
    assert main(["submit", "slurm", str(path), "--array", "1", "--gpus-per-task", "2", "--workers-per-gpu", "3",
                 "--cpus-per-task", "12", "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --gpus-per-task=2" in script
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\necho "gpu=$CUDA_VISIBLE_DEVICES omp=$OMP_NUM_THREADS $*"\n')
    fake.chmod(0o755)
    script = script.replace(sys.executable, str(fake))
    out = subprocess.run(["bash"], input=script, text=True, capture_output=True, check=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "4,6", "SLURM_CPUS_PER_TASK": "12"}).stdout
    lines = sorted(out.splitlines())
    assert lines == sorted([f"gpu={g} omp=2 -m harness.cli worker --study tiny --threads 2" for g in ("4", "6")] * 3)


def test_the_k8s_manifest_is_a_job_a_cluster_accepts(project, tiny, capsys, monkeypatch):
    monkeypatch.setenv("ABLATE_STORAGE", f"postgresql+psycopg2://ablate:{SECRET}@db.example/optuna")
    path = write_spec(project, tiny, name="Tiny_Study.v2")
    assert main(["submit", "k8s", str(path), "--workers", "8", "--image", "registry.example/ablate:1",
                 "--gpus-per-pod", "1", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert SECRET not in text and "postgresql" not in text
    job = yaml.safe_load(text)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name  # DNS-1123, as the API requires
    spec = job["spec"]
    assert spec["parallelism"] == 8 and spec["completions"] == 8
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")  # what a Job's pods allow
    assert spec["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/ablate:1"
    assert container["command"][:4] == ["ablate", "worker", "--study", "Tiny_Study.v2"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ABLATE_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "ablate-storage", "key": "storage"}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["key"] == "tracking-uri"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= mounts
    assert not (project / "mlruns").exists()


@pytest.mark.parametrize("option", [["--partition", "gpu\nrm -rf ~"], ["--time", "1:00 --mem=1"]])
def test_a_slurm_option_cannot_add_lines_to_the_script(project, tiny, capsys, option):
    path = write_spec(project, tiny)
    assert main(["submit", "slurm", str(path), "--array", "2", *option, "--dry-run"]) == 2
    assert f"{option[0]} " in capsys.readouterr().err


@pytest.mark.parametrize("engine", [["slurm", "--array", "2"], ["k8s", "--workers", "2", "--image", "x"]])
def test_a_cluster_refuses_a_journal_storage(project, tiny, capsys, engine):
    path = write_spec(project, tiny)
    assert main(["submit", engine[0], str(path), *engine[1:]]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "a journal file must not be shared over NFS" in err
    assert not (project / "mlruns").exists()


# --- a real Slurm cluster -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm_cluster():
    """The SLURM_CONF of a running single-node cluster (CI's, or one started here), or skip."""
    from slurm import CONF_ENV, Cluster, available

    conf = os.environ.get(CONF_ENV)
    if conf:
        yield conf
        return
    why = available()
    if why is not None:
        pytest.skip(f"no Slurm cluster: {why}")
    cluster = Cluster()
    yield str(cluster.conf)
    cluster.stop()


@pytest.fixture
def mlflow_server(postgres_server, tmp_path):
    """An MLflow tracking server on 127.0.0.1, PostgreSQL behind it, proxying the artifacts."""
    from postgres import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres_server("mlflow"),
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            break
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("the MLflow server did not start")
            time.sleep(1)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def slurm(conf: str, *cmd: str) -> str:
    return subprocess.run(cmd, env={**os.environ, "SLURM_CONF": conf}, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def task_of(pid: int) -> str:
    """The Slurm array task (JOBID_TASK) a worker process runs in, from its environment."""
    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


@pytest.mark.slow
@pytest.mark.service
def test_a_study_runs_on_slurm_and_a_cancelled_task_is_retried(project, tiny, postgres_server, mlflow_server,
                                                               slurm_cluster, monkeypatch, capsys):
    """`ablate submit slurm` on a real single-node cluster, Optuna on PostgreSQL and MLflow
    behind a tracking server: a task is cancelled with scancel while it trains a cell, the
    array's other tasks reap its trial and run the cell again, every cell ends finished exactly
    once, and the report is built from the tracking server."""
    storage = postgres_server("optuna")
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("ABLATE_STORAGE", storage)
    monkeypatch.setenv("ABLATE_POLL_S", "0.5")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the workers import this tree
    path = write_spec(project, {**tiny, "train.epochs": 4}, seeds=(0, 1))
    assert main(["submit", "slurm", str(path), "--array", "3", "--partition", "nope"]) == 2
    assert "sbatch refused the job: " in capsys.readouterr().err
    assert not (project / "mlruns").exists()  # checked with sbatch --test-only before the study exists
    with pytest.raises(UsageError, match="holds no Optuna studies"):  # not even its tables
        load_study("tiny", storage, create=False)
    assert main(["submit", "slurm", str(path), "--array", "3"]) == 0
    out = capsys.readouterr().out
    job = re.search(r"Slurm job (\d+), 3 array task\(s\)", out).group(1)
    assert f"squeue -j {job}" in out and "ablate status tiny" in out
    script = slurm(slurm_cluster, "scontrol", "write", "batch_script", job, "-")
    assert "postgresql" not in script and "harness.cli worker --study tiny" in script

    victim = stopped_mid_trial("tiny", storage, time.time() + 240)  # frozen mid-cell, then cancelled
    task = task_of(victim.system_attrs["harness.worker"]["pid"])
    slurm(slurm_cluster, "scancel", task)
    deadline = time.time() + 300
    while slurm(slurm_cluster, "squeue", "-h", "-j", job).strip():
        assert time.time() < deadline, slurm(slurm_cluster, "squeue", "-j", job)
        time.sleep(1)
    assert "JobState=CANCELLED" in slurm(slurm_cluster, "scontrol", "show", "job", task)

    study = load_study("tiny", storage)
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL and "is gone" in dead.system_attrs["harness.reaped"]
    cells = {(a, s) for a in ("baseline", "dropout=0.2") for s in (0, 1)}
    assert complete_by_cell(study) == dict.fromkeys(cells, 1)
    redone = [t for t in study.trials if t.state == TrialState.COMPLETE
              and (t.user_attrs["arm"], t.user_attrs["seed"]) == (victim.user_attrs["arm"], victim.user_attrs["seed"])]
    assert redone[0].system_attrs["harness.worker"]["pid"] != victim.system_attrs["harness.worker"]["pid"]
    client = MlflowClient(mlflow_server)
    runs = finished_runs(client, "tiny")
    assert sorted((r.data.tags["harness.arm"], int(r.data.tags["harness.seed"])) for r in runs
                  if r.info.status == "FINISHED") == sorted(cells)
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert main(["report", "tiny"]) == 0
    assert (project / "reports" / "tiny" / "index.html").is_file()
    assert "dropout=0.2" in (project / "reports" / "tiny" / "report.md").read_text()
