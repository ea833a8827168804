"""Read one study from MLflow: its runs as a tidy table and their per-evaluation histories.

The layout read here is docs/tracking.md. Nothing in this module decides what a run means for
the report (arms, exclusions); it only turns the store into pandas.
"""

from __future__ import annotations

import gc
import json
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from harness.core.errors import UsageError
from harness.tracking.uris import local_path, redact

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
        raise UsageError(f"no study named {name!r} in the MLflow store {redact(uri)}; "
                         f"studies there: {listing}")
    with gc_paused():
        rows = [_row(run) for run in _all_runs(client, experiment.experiment_id)]
    if not rows:
        raise UsageError(f"study {name!r} has no runs in the MLflow store {redact(uri)}")
    return StudyData(name=name, experiment_id=experiment.experiment_id, tracking_uri=uri,
                     runs=pd.DataFrame(rows))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector for a burst of allocations.

    Reading 1,000 runs builds ~75,000 ORM objects (params, tags, metrics); the collector's
    repeated passes over them made search_runs 2-3x slower in benchmarks/report_scale.py.
    The objects hold no cycles worth collecting mid-burst; collection resumes afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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


PRETRAIN_COLUMNS = ["run_id", "seed", "status", "study", "used_by", "best_val_loss", "test_loss", "wall_s"]


def load_pretraining(study: StudyData, runs: pd.DataFrame) -> pd.DataFrame:
    """The pretraining runs (harness.kind=pretrain) of study `study` and those its included
    `runs` fine-tuned from (tag harness.pretrain_run; another study's, when a finished one was
    reused): PRETRAIN_COLUMNS, one row per run, by seed. `used_by` counts the runs that loaded it."""
    own = study.runs[study.runs["kind"] == "pretrain"]
    used = (runs["tags.harness.pretrain_run"].dropna().value_counts()
            if "tags.harness.pretrain_run" in runs else pd.Series(dtype=int))
    rows = {r["run_id"]: r.to_dict() for _, r in own.iterrows()}
    client = MlflowClient(tracking_uri=study.tracking_uri)
    for run_id in used.index:
        if run_id not in rows:
            try:
                rows[run_id] = _row(client.get_run(run_id))
            except MlflowException:  # deleted since: the tag still names it
                rows[run_id] = {"run_id": run_id, "status": "DELETED"}
    table = pd.DataFrame([{"run_id": run_id, "seed": row.get("tags.harness.seed", ""), "status": row.get("status", ""),
                           "study": row.get("tags.harness.study") or "", "used_by": int(used.get(run_id, 0)),
                           **{m: row.get(m, float("nan")) for m in ("best_val_loss", "test_loss", "wall_s")}}
                          for run_id, row in rows.items()], columns=PRETRAIN_COLUMNS)
    order = table.assign(_seed=pd.to_numeric(table["seed"], errors="coerce")).sort_values(["_seed", "run_id"])
    return order.drop(columns="_seed").reset_index(drop=True)


def load_histories(runs: pd.DataFrame, tracking_uri: str) -> pd.DataFrame:
    """The per-evaluation metrics of `runs` from their history.json artifacts, long format.

    Columns: run_id, then every key of the files (step, epoch, val_loss, ...), one row per
    evaluation; a key some files lack is NaN for their rows. Local artifact stores are read
    directly: fetching metric histories through the API costs one request per run and metric,
    which is minutes for a thousand runs. Remote stores are downloaded in a thread pool.
    A run whose file is missing or malformed has no rows.
    """
    loaded = _read_artifact(runs, tracking_uri, HISTORY_FILE, _read_history)
    return _long_table([(run_id, columns) for run_id, columns in loaded if columns is not None])


SAMPLES_FILE = "samples.txt"


def load_texts(runs: pd.DataFrame, tracking_uri: str, name: str = SAMPLES_FILE) -> dict[str, str]:
    """run_id -> the text artifact `name` (the generated samples) of each run that has it."""
    return {run_id: text for run_id, text in _read_artifact(runs, tracking_uri, name, _read_text)
            if text is not None}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _read_artifact(runs: pd.DataFrame, tracking_uri: str, name: str,
                   read: Callable[[Path], Any]) -> list[tuple[str, Any]]:
    """(run_id, read(file)) for the artifact `name` of every run in `runs` (None where unusable).

    Local artifact stores are read directly; remote ones are downloaded in a thread pool.
    """
    local: list[tuple[str, Path]] = []
    remote: list[str] = []
    for run_id, uri in zip(runs["run_id"], runs["artifact_uri"]):
        path = local_path(uri)
        if path is None:
            remote.append(run_id)
        else:
            local.append((run_id, path / name))
    with gc_paused():
        loaded = [(run_id, read(path)) for run_id, path in local]
    if remote:
        with tempfile.TemporaryDirectory(prefix="ablate-report-") as tmp, \
                ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
            loaded += zip(remote, pool.map(lambda rid: _download(rid, name, tracking_uri, Path(tmp), read), remote))
    return loaded


def _long_table(histories: list[tuple[str, dict[str, np.ndarray]]]) -> pd.DataFrame:
    # One concatenation per column: a DataFrame per run and pd.concat cost ~10x more at 1,000 runs.
    keys = list(dict.fromkeys(k for _, columns in histories for k in columns))
    lengths = [len(next(iter(columns.values()))) for _, columns in histories]
    table = {"run_id": np.repeat([run_id for run_id, _ in histories], lengths).astype(object)}
    for key in keys:
        table[key] = np.concatenate([columns.get(key, np.full(n, np.nan))
                                     for (_, columns), n in zip(histories, lengths)]) if histories else []
    if not histories:
        table["step"] = []
    return pd.DataFrame(table)


def _download(run_id: str, name: str, tracking_uri: str, tmp: Path, read: Callable[[Path], Any]) -> Any:
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                   dst_path=str(tmp / run_id), tracking_uri=tracking_uri)
    except (MlflowException, OSError):
        return None
    return read(Path(path))


def _read_history(path: Path) -> dict[str, np.ndarray] | None:
    """The columns of one history.json as float arrays of one length, or None if unusable.

    A missing or malformed file only costs its run the curves; the report says how many.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        columns = {str(k): np.asarray(v, dtype=float) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    lengths = {c.shape for c in columns.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        return None
    return columns
