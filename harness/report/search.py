"""What only the Optuna study of a search knows: its trials' objective values and param importance.

Optional by design: a report from another machine, or after the storage was removed, must
still build from MLflow alone, so every failure here becomes a note, never an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend


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
    """A read-only view of the Optuna storage recorded in harness.tracking.storage.

    Same URLs as the study engine (harness.tracking.storage): ``journal:PATH``, or an RDB URL
    (postgresql+psycopg2://..., sqlite:///...). Unlike the engine it never creates anything:
    a journal file or SQLite database that does not exist raises FileNotFoundError. The tag has
    its password removed, so a password-protected server answers with an authentication error.
    """
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no journal file {path}")
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no SQLite database {url[len('sqlite:///'):]}")
    # Seconds, not minutes, when a server is down: the report goes on without Optuna.
    connect = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect}, skip_table_creation=True)


def load_search(name: str, storage_url: str | None, objective_tag: str | None) -> tuple[SearchData | None, str]:
    """The study `name` in `storage_url`, or None and the reason it is unavailable."""
    if not storage_url:
        return None, "the study's parent run has no harness.tracking.storage tag"
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except Exception as exc:  # noqa: BLE001 - any storage failure only costs the Optuna figures
        return None, f"Optuna study {name!r} could not be read from {storage_url}: {_reason(exc)}"
    directions = [d.name.lower() for d in study.directions]
    names = [s.strip() for s in (objective_tag or "").split(",") if s.strip()]
    if len(names) != len(directions):
        names = [f"objective_{i + 1}" for i in range(len(directions))]
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = pd.DataFrame([[t.number, *t.values] for t in done], columns=["number", *names])
    importances, notes = _importances(study, names, directions) if done else (_no_importance(), [])
    note = "; ".join([f"Optuna study {name!r} in {storage_url}: {len(done)} completed trials", *notes])
    return SearchData(names, directions, trials, importances, note), note


def _reason(exc: BaseException) -> str:
    """The root cause in one line: Optuna wraps driver errors in vaguer ones of its own."""
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"


def _no_importance() -> pd.DataFrame:
    return pd.DataFrame(columns=["objective", "param", "importance"])


def _importances(study: optuna.Study, names: list[str], directions: list[str]) -> tuple[pd.DataFrame, list[str]]:
    rows, notes = [], []
    for i, (objective, direction) in enumerate(zip(names, directions)):
        # PED-ANOVA ranks params by how they reach *low* target values: negate maximised ones.
        sign = 1.0 if direction == "minimize" else -1.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Optuna warns on every explicit target that it ranks params for *low* values;
            # the sign above already takes care of that.
            warnings.filterwarnings("ignore", message=".*to achieve low `target` values")
            try:
                values = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, sign=sign: sign * t.values[i])
            except (ValueError, RuntimeError) as exc:
                notes.append(f"no importance for {objective}: {exc}")
                continue
        notes += sorted({f"{objective}: {w.message}" for w in caught})
        rows += [{"objective": objective, "param": p, "importance": v} for p, v in values.items()]
    return (pd.DataFrame(rows) if rows else _no_importance()), notes
