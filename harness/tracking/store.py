"""MLflow: the store under mlruns/, experiments, and one run's params, metrics, tags and artifacts.

The layout is documented in docs/tracking.md; reports and `ablate status` rely on it.
Metrics of one evaluation go out in one `log_batch` call on the run's own logging thread, so
logging never waits on the database inside the training loop; `finish` waits for them before
closing the run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.core.errors import UsageError
from harness.core.metrics import Evaluation, Summary, history_columns
from harness.core.paths import mlruns_dir, project_root
from harness.tracking.uris import local_path, redact

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def init_store() -> MlflowClient:
    """Point MLflow at the project's store and create its database once.

    MLflow migrates a new SQLite database on first use, and two processes doing that at once
    race ("table ... already exists"): a file lock beside the database serialises the first
    opening, whether the processes are a driver's workers or two `ablate train` started together.
    """
    # MLflow sets its logger to INFO on import, announcing database migrations to the user.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if not uri.startswith("sqlite:///"):
        return _open_client(uri)
    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.parent / ".mlflow-db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _open_client(uri)


def read_store(what: str) -> MlflowClient:
    """The project's MLflow store for a command that only reads (report, status): never creates it.

    A SQLite store that is not there yet holds nothing, so `what` (the thing looked for) is
    reported missing with UsageError instead of creating an empty database.
    """
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UsageError(f"{what}: the MLflow store {redact(uri)} does not exist yet (nothing was "
                         f"tracked in {project_root()}); run ablate train, run or search first")
    mlflow.set_tracking_uri(uri)
    return _open_client(uri)


def _open_client(uri: str) -> MlflowClient:
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise UsageError(f"MLflow tracking store {redact(uri)!r} does not answer: "
                         f"{str(exc).splitlines()[0]}") from None
    return client


MAX_NAME = 128
"""Longest experiment (and study) name: the name is also a folder of artifacts (mlruns/artifacts/
NAME), and a path component longer than the file system's 255 bytes fails after the run exists."""


def check_experiment_name(name: str, option: str = "--experiment") -> str:
    """`name` when MLflow and the artifact folder can take it; else UsageError (nothing created)."""
    if not name.strip():
        raise UsageError(f"{option}={name!r}: an experiment needs a name; allowed: 1 to {MAX_NAME} "
                         f"printable characters")
    if len(name) > MAX_NAME:
        raise UsageError(f"{option}: a name of {len(name)} characters is too long; allowed: 1 to "
                         f"{MAX_NAME} characters")
    if not name.isprintable():
        raise UsageError(f"{option}={name!r}: control characters are not allowed in a name")
    return name


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if not tracking_uri().startswith(("http://", "https://", "databricks")):
        # A database store writes artifacts where it is told; a tracking server decides itself.
        location = (mlruns_dir() / "artifacts" / _safe(name)).as_uri()
    try:
        # The kind tag marks the experiment as model training for MLflow 3 UIs that read it; 3.17's
        # browser-kept GenAI switch ignores it, so links carry harness.tracking.mlflow_ui's parameters.
        return client.create_experiment(name, artifact_location=location,
                                        tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class RunTracker:
    """One MLflow run of one training: open it, stream evaluations, close it with a status."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._pending: list[Future] = []
        self._logger: ThreadPoolExecutor | None = None

    @classmethod
    def start(cls, client: MlflowClient, experiment: str, run_name: str | None,
              tags: dict[str, str], params: dict[str, Any] | None = None,
              parent_run_id: str | None = None) -> "RunTracker":
        all_tags = {"harness.kind": "run", **tags}
        commit = git_commit()
        if commit:
            all_tags.setdefault("harness.git_commit", commit)
            all_tags.setdefault("mlflow.source.git.commit", commit)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id(client, experiment), run_name=run_name,
                                tags={k: str(v) for k, v in all_tags.items()})
        tracker = cls(client, run.info.run_id)
        if params:
            tracker.log_params(params)
        return tracker

    @classmethod
    def resume(cls, client: MlflowClient, run_id: str) -> "RunTracker":
        """Reopen an interrupted run: RUNNING again, and no longer tagged with why it stopped
        (a new interruption tags it again)."""
        client.update_run(run_id, status="RUNNING")
        if "harness.reason" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "harness.reason")
        return cls(client, run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_eval(self, ev: Evaluation) -> None:
        """All metrics of one evaluation in one call, made on this run's logging thread.

        Not MLflow's `synchronous=False`: closing a run that used MLflow's asynchronous queue
        waits up to a second for the queue's thread to stop (benchmarks/tracking_overhead.py).
        """
        if self._logger is None:
            self._logger = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ablate-log-{self.run_id[:8]}")
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, ev.step) for k, v in ev.metrics().items()]
        self._pending.append(self._logger.submit(self.client.log_batch, self.run_id, metrics=metrics))

    def flush(self) -> None:
        """Wait until every evaluation is stored; re-raises the first logging error."""
        try:
            for op in self._pending:
                op.result()
        finally:
            self._pending.clear()
            if self._logger is not None:
                self._logger.shutdown()
                self._logger = None

    def log_summary(self, summary: Summary, history: list[Evaluation]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0)
                                                    for k, v in summary.metrics().items()])
        self.log_text(json.dumps(history_columns(history)), "history.json")

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_config(self, config: dict[str, Any]) -> None:
        self.log_text(yaml.safe_dump(config, sort_keys=False), CONFIG_ARTIFACT)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED", reason: str | None = None, error: str | None = None) -> None:
        self.flush()
        tags = {}
        if reason:
            tags["harness.reason"] = reason
        if error:
            tags["harness.error"] = error
        if tags:
            self.set_tags(tags)
        self.client.set_terminated(self.run_id, status=status)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


CONFIG_ARTIFACT = "config.yaml"
"""The run's resolved config, as it trained (the schema of the release that ran it)."""


def logged_config(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The config a run logged (CONFIG_ARTIFACT), or None when it has none or it is not a mapping."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
            tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except Exception:  # no such artifact, an unreadable store or file: nothing to compare
            return None
    return tree if isinstance(tree, dict) else None


CHECKPOINT_ARTIFACT = "checkpoint/last.pt"
"""Where a run keeps the checkpoint it resumes or is fine-tuned from (train.save_checkpoint)."""


def has_checkpoint(client: MlflowClient, run_id: str) -> bool:
    """Whether the run's checkpoint artifact is there (in any artifact store, local or remote)."""
    folder = CHECKPOINT_ARTIFACT.rsplit("/", 1)[0]
    return CHECKPOINT_ARTIFACT in {f.path for f in client.list_artifacts(run_id, folder)}


def local_artifact_dir(client: MlflowClient, run_id: str) -> Path | None:
    """The run's artifact folder when it is on this machine's disk, else None."""
    return local_path(client.get_run(run_id).info.artifact_uri)


def transfer_state(init_from: str | None) -> dict[str, Any] | None:
    """The checkpoint `transfer.init_from` names when it is `runs:/<run id>`: that MLflow run's
    CHECKPOINT_ARTIFACT, loaded for harness.core.train (which reads paths itself, so a path or no
    reference gives None).

    The run is looked up in the project's store, which may not be open yet (preflight runs before
    it is), and a store that does not exist is not created.
    """
    from harness.core.checkpoint import RUN_PREFIX, load_checkpoint  # torch: this module loads it nowhere else

    if not init_from or not init_from.startswith(RUN_PREFIX):
        return None
    run_id = init_from[len(RUN_PREFIX):].strip("/").split("/")[0]
    read_store(f"transfer.init_from={init_from!r}")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT,
                                                    tracking_uri=tracking_uri())
    except Exception as exc:
        raise UsageError(f"transfer.init_from={init_from!r}: no checkpoint in that MLflow run "
                         f"({str(exc).splitlines()[0]}); train it with train.save_checkpoint=true") from None
    return load_checkpoint(local)


def save_checkpoint_artifact(tracker: RunTracker, state: dict[str, Any]) -> None:
    from harness.core.checkpoint import save_checkpoint

    folder, name = CHECKPOINT_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        save_checkpoint(state, path)
        tracker.log_file(path, folder)

