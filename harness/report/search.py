"""What only the Optuna study of a search knows: its trials' objective values and param importance.

Optional by design: a report from another machine, or after the storage was removed, must
still build from MLflow alone, so every failure here becomes a note, never an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import optuna
import pandas as pd
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

_RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


@dataclass(frozen=True)
class SearchData:
    objectives: list[str]
    """Objective names (from the parent's harness.objective tag, else objective_1, ...)."""
    directions: list[str]
    """"minimize" or "maximize", per objective."""
    trials: pd.DataFrame
    """Completed trials: number, then one column per objective."""
    importances: pd.DataFrame
    """objective, param, importance (PED-ANOVA, Optuna's default evaluator; sums to 1 per objective)."""
    note: str
    """Where the data came from and anything that limits it."""


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage from the URL recorded in harness.storage.

    RDB URLs (sqlite:///, postgresql+psycopg2://, ...) go to Optuna as they are. A journal file
    may be given as ``journal:PATH``, ``journal:///PATH``, ``file:PATH`` or a plain path.
    Raises FileNotFoundError for a file that does not exist rather than creating it.
    """
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+")[0]
    if scheme in _RDB_SCHEMES:
        if scheme == "sqlite" and not Path(url.split(":///", 1)[-1]).exists():
            raise FileNotFoundError(url)
        return optuna.storages.RDBStorage(url)
    path = Path(parsed.path if scheme in ("journal", "file") else url)
    if not path.exists():
        raise FileNotFoundError(str(path))
    return JournalStorage(JournalFileBackend(str(path)))


def load_search(name: str, storage_url: str | None, objective_tag: str | None) -> tuple[SearchData | None, str]:
    """The study `name` in `storage_url`, or None and the reason it is unavailable."""
    if not storage_url:
        return None, "the study's parent run has no harness.storage tag"
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except Exception as exc:  # noqa: BLE001 - any storage failure only costs the Optuna figures
        return None, f"Optuna study {name!r} could not be read from {storage_url}: {type(exc).__name__}: {exc}"
    directions = [d.name.lower() for d in study.directions]
    names = [s.strip() for s in (objective_tag or "").split(",") if s.strip()]
    if len(names) != len(directions):
        names = [f"objective_{i + 1}" for i in range(len(directions))]
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = pd.DataFrame([[t.number, *t.values] for t in done], columns=["number", *names])
    importances, notes = _importances(study, names, directions) if done else (_no_importance(), [])
    note = "; ".join([f"Optuna study {name!r} in {storage_url}: {len(done)} completed trials", *notes])
    return SearchData(names, directions, trials, importances, note), note


def _no_importance() -> pd.DataFrame:
    return pd.DataFrame(columns=["objective", "param", "importance"])


def _importances(study: optuna.Study, names: list[str], directions: list[str]) -> tuple[pd.DataFrame, list[str]]:
    rows, notes = [], []
    for i, (objective, direction) in enumerate(zip(names, directions)):
        # PED-ANOVA ranks params by how they reach *low* target values: negate maximised ones.
        sign = 1.0 if direction == "minimize" else -1.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, sign=sign: sign * t.values[i])
            except (ValueError, RuntimeError) as exc:
                notes.append(f"no importance for {objective}: {exc}")
                continue
        notes += sorted({f"{objective}: {w.message}" for w in caught})
        rows += [{"objective": objective, "param": p, "importance": v} for p, v in values.items()]
    return (pd.DataFrame(rows) if rows else _no_importance()), notes
