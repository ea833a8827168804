"""`ablate submit`: a study's workers as a Slurm job array or a Kubernetes Job.

Optuna's own recipe for a distributed study: one storage every node reaches (an RDB: a journal
file must not be shared over NFS), identical workers that pull queued trials from it. Here the
driver's part (validate the spec, create the study and its MLflow runs, queue the cells) runs
on the submitting machine, then the engine's scheduler starts `ablate worker` processes:

- Slurm: an array of N tasks, each one worker (or, with --gpus-per-task, --workers-per-gpu
  workers pinned to each of its GPUs); a task that dies or is cancelled loses nothing, the next
  worker reaps its trial (harness.studies.liveness) and runs the cell again.
- Kubernetes: a Job of `parallelism` worker pods (a manifest for `kubectl apply -f -`).

The storage URL and the tracking URI never go into argv or the job script: the array task
inherits them from the submitting environment (sbatch --export=ALL, kept by slurmctld like the
rest of the job's environment), a pod reads them from a Secret.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import UsageError
from harness.core.paths import mlruns_dir, project_root
from harness.studies.launch import workers_per_gpu
from harness.studies.spec import AblationSpec, check_name, load_spec
from harness.tracking.storage import STORAGE_ENV, load_study, open_storage
from harness.tracking.store import tracking_uri
from harness.tracking.uris import redact

SHARED = ("postgresql", "mysql")
"""Storages every node of a cluster can share safely (Optuna advises an RDB over a journal on NFS)."""


@dataclass(frozen=True)
class SlurmJob:
    """What `ablate submit slurm` asks of the scheduler."""
    study: str
    array: int
    gpus_per_task: int = 0
    workers_per_gpu: int | None = None
    cpus_per_task: int = 1
    partition: str | None = None
    time: str | None = None


SLURM_VALUE = re.compile(r"[A-Za-z0-9_.,:+-]+")


def check_slurm_value(option: str, value: str | None) -> None:
    """A --partition or --time goes into an #SBATCH line: one word of Slurm's characters."""
    if value is not None and not SLURM_VALUE.fullmatch(value):
        raise UsageError(f"{option} {value!r}: allowed: letters, digits and _ . , : + - (as sbatch takes it, "
                         f"e.g. --partition gpu, --time 2:00:00)")


@dataclass(frozen=True)
class K8sJob:
    """What `ablate submit k8s` writes into its Job manifest."""
    study: str
    workers: int
    image: str
    secret: str = "ablate-storage"
    gpus_per_pod: int = 0
    cpus_per_worker: int = 1
    memory: str = "2Gi"


def check_shared(url: str) -> None:
    """UsageError unless both stores can be reached, and shared, from other machines."""
    if not url.startswith(SHARED):
        raise UsageError(f"storage {redact(url)!r}: a cluster's workers run on other nodes and need a "
                         f"database they all reach (Optuna advises an RDB: a journal file must not be "
                         f"shared over NFS); allowed: postgresql+psycopg2://... in ${STORAGE_ENV} or --storage")
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://", "postgresql", "mysql")):
        raise UsageError(f"MLflow tracking store {redact(uri)!r}: the workers on other nodes need a "
                         f"tracking server (or database) they all reach; allowed: MLFLOW_TRACKING_URI="
                         f"http://HOST:5000 (see docs/cluster.md)")


def resolve_target(target: str, url: str, dry_run: bool) -> tuple[str, AblationSpec | None]:
    """SPEC_OR_STUDY, checked and nothing written: (the study's name, the ablation spec to
    create it from), or (name, None) for the name of a study already in `url` (checked there
    unless `dry_run`)."""
    from harness.core.config import read_yaml
    from harness.studies.ablation import check_cells, describe

    path = Path(target)
    if not path.is_file():
        if path.suffix in (".yaml", ".yml"):
            raise UsageError(f"{target!r}: no such spec file; allowed: an ablation spec (experiments/NAME.yaml) "
                             f"or the name of a study in the storage")
        check_name(target)  # it goes into the job's name and script
        if not dry_run:
            load_study(target, url, create=False)  # UsageError listing the studies there
        return target, None
    raw = read_yaml(target, what="spec")
    if isinstance(raw, dict) and "space" in raw:
        raise UsageError(f"{target!r} is a search spec: start it with ablate search {target} (its driver "
                         f"samples and confirms), then give its study name to ablate submit to add workers")
    spec = load_spec(target)
    check_cells(spec)
    print(describe(spec), file=sys.stderr)
    return spec.name, spec


def create(spec: AblationSpec | None, url: str) -> None:
    """Create (or top up) the spec's study and its MLflow runs: the driver's part."""
    from harness.studies.ablation import create_ablation
    from harness.tracking.store import init_store

    if spec is not None:
        create_ablation(spec, open_storage(url), url, init_store())


# --- Slurm ----------------------------------------------------------------------------------------

def slurm_script(job: SlurmJob) -> str:
    """The sbatch script of the array. It names the project, the Python and the study, never the
    storage: the task inherits ABLATE_STORAGE and MLFLOW_TRACKING_URI from `sbatch`'s environment.

    Without GPUs each task is one worker with --cpus-per-task threads. With G GPUs per task it
    starts --workers-per-gpu workers on each GPU Slurm gave it (its CUDA_VISIBLE_DEVICES), the
    task's CPUs shared among them, as `ablate run` packs a GPU machine.
    """
    logs = mlruns_dir() / "logs" / job.study
    lines = ["#!/bin/bash", f"#SBATCH --job-name=ablate-{job.study}", f"#SBATCH --array=0-{job.array - 1}",
             f"#SBATCH --output={logs}/slurm-%A_%a.log", f"#SBATCH --cpus-per-task={job.cpus_per_task}",
             "#SBATCH --export=ALL"]
    if job.gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={job.gpus_per_task}")
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.time:
        lines.append(f"#SBATCH --time={job.time}")
    root = shlex.quote(str(project_root()))
    worker = f"{shlex.quote(sys.executable)} -m harness.cli worker --study {shlex.quote(job.study)}"
    lines += ["set -euo pipefail", f"cd {root}", f"export ABLATE_HOME={root} PYTHONUNBUFFERED=1"]
    if not job.gpus_per_task:
        lines.append(f"exec {worker} --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"")
        return "\n".join(lines) + "\n"
    per_gpu = job.workers_per_gpu or workers_per_gpu(job.gpus_per_task, job.cpus_per_task)
    lines += [
        "IFS=, read -ra gpus <<< \"${CUDA_VISIBLE_DEVICES:?Slurm gave this task no GPU}\"",
        f"per_gpu={per_gpu}",
        "threads=$(( ${SLURM_CPUS_PER_TASK:-1} / (${#gpus[@]} * per_gpu) )); (( threads >= 1 )) || threads=1",
        "for gpu in \"${gpus[@]}\"; do",
        "  for _ in $(seq \"$per_gpu\"); do",
        f"    CUDA_VISIBLE_DEVICES=$gpu OMP_NUM_THREADS=$threads {worker} --threads \"$threads\" &",
        "  done",
        "done",
        "wait",
    ]
    return "\n".join(lines) + "\n"


def submit_slurm(target: str, job: SlurmJob, url: str, dry_run: bool) -> int:
    """Create the study, then sbatch the array (or print its script with `dry_run`, which
    writes nothing and needs neither store)."""
    check_slurm_value("--partition", job.partition)
    check_slurm_value("--time", job.time)
    if not dry_run:
        check_shared(url)
        if shutil.which("sbatch") is None:  # before the study is created
            raise UsageError("sbatch not found: run ablate submit slurm on a Slurm login node "
                             "(or print the script with --dry-run)")
    name, spec = resolve_target(target, url, dry_run)
    job = SlurmJob(**{**job.__dict__, "study": name})
    script = slurm_script(job)
    if dry_run:
        print(script, end="")
        return 0
    env = {**os.environ, STORAGE_ENV: url, "MLFLOW_TRACKING_URI": tracking_uri()}
    sbatch(script, env, test_only=True)  # a partition or time the cluster refuses stops here
    create(spec, url)
    (mlruns_dir() / "logs" / name).mkdir(parents=True, exist_ok=True)
    job_id = sbatch(script, env).split(";")[0]
    print(f"submitted study {name}: Slurm job {job_id}, {job.array} array task(s)")
    print(f"  follow it: squeue -j {job_id}; ablate status {name}; logs in {mlruns_dir() / 'logs' / name}")
    print(f"  stop it: scancel {job_id} (a cancelled task's cell runs again in the next task or run)")
    print(f"  when it is done: ablate report {name}")
    return 0


def sbatch(script: str, env: dict[str, str], test_only: bool = False) -> str:
    """sbatch's answer for `script` (--parsable: the job id); UsageError with its reason when it
    refuses. `test_only` checks the job against the cluster (partition, limits) and submits nothing."""
    out = subprocess.run(["sbatch", "--test-only" if test_only else "--parsable"], input=script, env=env,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise UsageError(f"sbatch refused the job: {why}")
    return out.stdout.strip()


# --- Kubernetes ---------------------------------------------------------------------------------

def k8s_name(study: str) -> str:
    """A DNS-1123 name for the Job (lower case, digits, '-', at most 63 characters)."""
    return ("ablate-" + re.sub(r"[^a-z0-9-]+", "-", study.lower())).strip("-")[:63].rstrip("-")


def k8s_manifest(job: K8sJob) -> str:
    """A batch/v1 Job of `workers` pods, each one `ablate worker` of the study.

    The image needs this project installed (`pip install .`, torch with CUDA for GPU pods) and
    its corpus prepared at build time (`ablate data`), so a pod needs no network but the
    stores'. Secret `secret` holds the Optuna storage URL (key `storage`) and the MLflow tracking
    URI (key `tracking-uri`); they reach the pod as environment variables, never in its args.
    A pod that fails restarts (restartPolicy OnFailure) and rejoins: the trial it held is reaped
    after the grace period and runs again.
    """
    import yaml

    name = k8s_name(job.study)
    labels = {"app.kubernetes.io/name": "ablate", "ablate/study": name[len("ablate-"):] or "study"}
    resources: dict = {"requests": {"cpu": str(job.cpus_per_worker), "memory": job.memory},
                       "limits": {"memory": job.memory}}
    if job.gpus_per_pod:
        resources["limits"]["nvidia.com/gpu"] = job.gpus_per_pod
    def secret(key: str) -> dict:
        return {"valueFrom": {"secretKeyRef": {"name": job.secret, "key": key}}}

    container = {
        "name": "worker", "image": job.image,
        "command": ["ablate", "worker", "--study", job.study, "--threads", str(job.cpus_per_worker)],
        "workingDir": "/work",
        "env": [{"name": STORAGE_ENV, **secret("storage")}, {"name": "MLFLOW_TRACKING_URI", **secret("tracking-uri")},
                {"name": "ABLATE_HOME", "value": "/work"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": resources,
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    }
    manifest = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "parallelism": job.workers, "completions": job.workers, "backoffLimit": 4 * job.workers,
            "template": {"metadata": {"labels": labels},
                         "spec": {"restartPolicy": "OnFailure", "containers": [container],
                                  "volumes": [{"name": "work", "emptyDir": {}}]}},
        },
    }
    return f"# ablate worker Job of study {json.dumps(job.study)}: kubectl apply -f -\n" + \
        yaml.safe_dump(manifest, sort_keys=False)


def submit_k8s(target: str, job: K8sJob, url: str, dry_run: bool) -> int:
    """Create the study (not with `dry_run`), then print the Job manifest for kubectl."""
    if not dry_run:
        check_shared(url)
    name, spec = resolve_target(target, url, dry_run)
    if not dry_run:
        create(spec, url)
    print(k8s_manifest(K8sJob(**{**job.__dict__, "study": name})), end="")
    if not dry_run:
        print(f"study {name} is ready; apply the manifest above: ablate submit k8s ... | kubectl apply -f -",
              file=sys.stderr)
    return 0

