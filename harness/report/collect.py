"""Read one study from MLflow: its runs as a tidy table and their per-evaluation histories.

The layout read here is docs/tracking.md. Nothing in this module decides what a run means for
the report (arms, exclusions); it only turns the store into pandas.
"""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from harness.errors import UsageError

SUMMARY_METRICS = ("best_val_loss", "best_epoch", "gap_at_best", "final_gap", "max_gap",
                   "overfit_onset", "final_val_loss", "final_train_eval_loss", "wall_s", "n_params")
"""The per-run summary metrics of docs/tracking.md (logged once, at step 0)."""

HISTORY_FILE = "history.json"
_DOWNLOAD_THREADS = 8
_PAGE = 10_000


@dataclass(frozen=True)
class StudyData:
    """What the store holds for one experiment (= one study)."""

    name: str
    experiment_id: str
    tracking_uri: str
    runs: pd.DataFrame
    """One row per run of any kind and status. Columns: run_id, run_name, status, kind,
    parent_run_id, artifact_uri, start_time, end_time, ``tags.<key>`` for every tag,
    ``params.<key>`` for every param and the bare name of every metric (its latest value)."""

    @property
    def parent(self) -> pd.Series | None:
        """The study's parent run (harness.kind=study), the earliest if there are several."""
        parents = self.runs[self.runs["kind"] == "study"]
        if parents.empty:
            return None
        return parents.sort_values(["start_time", "run_id"]).iloc[0]

    def parent_tag(self, key: str) -> str | None:
        parent = self.parent
        if parent is None:
            return None
        value = parent.get(f"tags.{key}")
        return value if isinstance(value, str) and value else None


def load_study(name: str, tracking_uri: str | None = None) -> StudyData:
    """Every run of the experiment named `name`, or UsageError if there is none.

    Uses MlflowClient rather than ``mlflow.search_runs`` so the tracking URI is an argument,
    not process-wide state the report would have to set and restore.
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        listing = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "") if known else "none"
        raise UsageError(f"no study named {name!r} in the MLflow store {safe_uri(uri)}; "
                         f"studies there: {listing}")
    rows = [_row(run) for run in _all_runs(client, experiment.experiment_id)]
    if not rows:
        raise UsageError(f"study {name!r} has no runs in the MLflow store {safe_uri(uri)}")
    return StudyData(name=name, experiment_id=experiment.experiment_id, tracking_uri=uri,
                     runs=pd.DataFrame(rows))


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _row(run: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "run_name": info.run_name or "",
        "status": info.status,
        "kind": data.tags.get("harness.kind", ""),
        "parent_run_id": data.tags.get("mlflow.parentRunId", ""),
        "artifact_uri": info.artifact_uri,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update(data.metrics)
    return row


def safe_uri(uri: str) -> str:
    """The tracking URI without user:password (a server URL may carry them)."""
    parsed = urlparse(uri)
    if parsed.password is None and parsed.username is None:
        return uri
    return parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")).geturl()


def local_path(artifact_uri: str) -> Path | None:
    """The directory of a run's artifacts when it is on this file system, else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(artifact_uri)
    return None


def load_histories(runs: pd.DataFrame, tracking_uri: str) -> pd.DataFrame:
    """The per-evaluation metrics of `runs` from their history.json artifacts, long format.

    Columns: run_id, then every key of the files (step, epoch, val_loss, ...), one row per
    evaluation. Local artifact stores are read directly: fetching metric histories through
    the API costs one request per run and metric, which is minutes for a thousand runs.
    Remote stores are downloaded in a thread pool. A run without the file has no rows.
    """
    local: list[tuple[str, Path]] = []
    remote: list[str] = []
    for run_id, uri in zip(runs["run_id"], runs["artifact_uri"]):
        path = local_path(uri)
        if path is None:
            remote.append(run_id)
        else:
            local.append((run_id, path / HISTORY_FILE))
    frames = [_read_history(run_id, path) for run_id, path in local]
    if remote:
        with tempfile.TemporaryDirectory(prefix="ablate-report-") as tmp, \
                ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
            frames += pool.map(lambda rid: _download_history(rid, tracking_uri, Path(tmp)), remote)
    frames = [f for f in frames if f is not None]
    if not frames:
        return pd.DataFrame(columns=["run_id", "step"])
    return pd.concat(frames, ignore_index=True)


def _download_history(run_id: str, tracking_uri: str, tmp: Path) -> pd.DataFrame | None:
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=HISTORY_FILE,
                                                   dst_path=str(tmp / run_id),
                                                   tracking_uri=tracking_uri)
    except (MlflowException, OSError):
        return None
    return _read_history(run_id, Path(path))


def _read_history(run_id: str, path: Path) -> pd.DataFrame | None:
    try:
        columns = json.loads(path.read_text(encoding="utf-8"))
        frame = pd.DataFrame(columns)
    except (OSError, ValueError, TypeError):
        # A missing or malformed file only costs this run its curves; the report says how many.
        return None
    frame.insert(0, "run_id", run_id)
    return frame
