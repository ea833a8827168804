"""A search's results: what a search logs under search/ on its parent MLflow run when it ends, and
what its report reads back.

The search calls `log_search_results` at its end: the trials table (trials.csv), the best trials
(best_trials.json: the best trial, or the Pareto front of two objectives), parameter importance
(importance.csv, importance.json) and the figures of harness.report.search_figures. The report's
search section (`load_search`) reads those artifacts back from the parent run, so it needs no
Optuna storage: a storage on another machine, behind a password (the storage tag has it
removed), or deleted costs the report nothing. Only when the artifacts are missing (a search
from before they were logged, or one stopped before its end) does the report open the Optuna
storage, read-only; a failure there is a note, never an error.

Importance is computed here and only here: from MIN_IMPORTANCE_TRIALS completed trials on,
PED-ANOVA (Optuna's default) or fANOVA. The search protocol's notions (which trials count toward
the total, which is the baseline) belong to harness.studies.search, which passes them in.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import FrozenTrial, TrialState

from harness.report import search_figures
from harness.report.collect import StudyData, load_texts
from harness.core.metrics import PRUNED_VALUE
from harness.tracking.storage import STORAGE_ENV, STORAGE_TAG, load_study
from harness.tracking.uris import redact, scrub

ARTIFACTS = "search"
"""The folder of the parent run's artifacts that holds a search's results."""
MIN_IMPORTANCE_TRIALS = 4
"""Below this many completed trials an importance is noise (Optuna returns equal shares)."""
EVALUATORS = {"ped-anova": "PED-ANOVA", "fanova": "fANOVA"}
"""`ablate search --importance` choices and how figures and importance.json name them."""
IMPORTANCE_COLUMNS = ["objective", "param", "importance"]


@dataclass(frozen=True)
class SearchData:
    """A search's results as its report shows them."""

    objectives: list[str]
    """The objective names (run summary metrics, all minimised): the objective columns of `trials`."""
    trials: pd.DataFrame
    """trials_table: number, state, baseline, one column per objective, epochs, params, runs, reason."""
    front: list[int]
    """The best trials' numbers: the best trial, or the Pareto front of two objectives."""
    importances: pd.DataFrame
    """objective, param, importance (normalised per objective); empty when there is none."""
    evaluator: str
    """The importance evaluator, as EVALUATORS names it."""
    note: str
    """Where the data came from and anything that limits it."""


# --- what a search logs --------------------------------------------------------------------------------

def trials_table(trials: list[FrozenTrial], objectives: list[str], baseline: Callable[[FrozenTrial], bool],
                 counted: Callable[[FrozenTrial], bool] | None = None) -> pd.DataFrame:
    """One row per trial: number, state, counted, baseline, epochs, the objective values (COMPLETE
    trials only), params.*, its MLflow runs and why it failed.

    `baseline` and `counted` are the search protocol's (harness.studies.search); without `counted`
    (a report reading the Optuna storage) the column is left out.
    """
    rows = []
    for t in trials:
        row: dict = {"number": t.number, "state": t.state.name}
        if counted is not None:
            row["counted"] = counted(t)
        row |= {"baseline": baseline(t), "epochs": t.user_attrs.get("epochs")}
        for i, name in enumerate(objectives):
            row[name] = t.values[i] if t.state == TrialState.COMPLETE else None
        row.update({f"params.{k}": v for k, v in t.params.items()})
        row["mlflow_run_ids"] = ",".join(t.user_attrs.get("mlflow_run_ids", []))
        row["reason"] = t.user_attrs.get("error") or t.user_attrs.get("skipped") or \
            t.system_attrs.get("harness.reaped", "")
        rows.append(row)
    return pd.DataFrame(rows)


def importance_table(study: optuna.Study, objectives: list[str], evaluator: str) -> tuple[pd.DataFrame, list[str]]:
    """objective, param, importance (normalised per objective), with notes instead of errors.

    `evaluator`: a key of EVALUATORS. fANOVA leaves out parameters some trials lack (the
    conditional ones); PED-ANOVA ranks them too.
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    empty = pd.DataFrame(columns=IMPORTANCE_COLUMNS)
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return empty, [f"parameter importance needs at least {MIN_IMPORTANCE_TRIALS} completed trials; "
                       f"this study has {len(done)}"]
    notes = []
    if evaluator == "fanova":
        common = set.intersection(*(set(t.params) for t in done))
        left_out = sorted({p for t in done for p in t.params} - common)
        if left_out:
            notes.append(f"fANOVA leaves out parameters absent from some trials: {', '.join(left_out)}")
    rows = []
    for i, name in enumerate(objectives):
        engine = FanovaImportanceEvaluator(seed=0) if evaluator == "fanova" else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = get_param_importances(study, evaluator=engine, target=lambda t, i=i: t.values[i])
            except (ValueError, RuntimeError) as exc:
                notes.append(f"no importance for {name}: {exc}")
                continue
        # PED-ANOVA's reminder that it ranks params by how they reach *low* values is moot: we minimise.
        notes += sorted({f"{name}: {w.message}" for w in caught if "computes the importances" not in str(w.message)})
        rows += [{"objective": name, "param": p, "importance": float(v)} for p, v in values.items()]
    return (pd.DataFrame(rows) if rows else empty), notes


def log_search_results(client: MlflowClient, parent_run_id: str, table: pd.DataFrame, study: optuna.Study,
                       objectives: list[str], at: str, best: list[FrozenTrial], evaluator: str) -> list[str]:
    """Log a search's results on its parent run under search/; returns notes on what is missing.

    `table`: trials_table of the study's trials, with the protocol's flags. `at`: where the
    objective is read ("best" or "final"), which names what the trials reported to the pruner.
    `best`: the best trial or the Pareto front. `evaluator`: a key of EVALUATORS.
    Logs trials.csv, best_trials.json, importance.csv and importance.json (importance_table, with
    the objectives and notes), importance.png, history.png, and intermediate.png (one objective)
    or pareto.png (two).
    """
    client.log_text(parent_run_id, table.to_csv(index=False), f"{ARTIFACTS}/trials.csv")
    client.log_text(parent_run_id, json.dumps([{"number": t.number, "values": t.values, "params": t.params,
                                                "mlflow_run_ids": t.user_attrs.get("mlflow_run_ids", [])}
                                               for t in best], indent=2, default=str),
                    f"{ARTIFACTS}/best_trials.json")
    importances, notes = importance_table(study, objectives, evaluator)
    label = EVALUATORS[evaluator]
    client.log_text(parent_run_id, importances.to_csv(index=False), f"{ARTIFACTS}/importance.csv")
    client.log_text(parent_run_id, json.dumps({"evaluator": label, "objectives": objectives, "notes": notes,
                                               "importances": importances.to_dict(orient="records")}, indent=2),
                    f"{ARTIFACTS}/importance.json")
    plots = [("importance.png", search_figures.importance(importances, label)),
             ("history.png", search_figures.history(table, objectives))]
    if len(objectives) > 1:
        plots.append(("pareto.png", search_figures.pareto(table, objectives, [t.number for t in best])))
    else:
        curves = {t.number: (t.state.name, dict(t.intermediate_values)) for t in study.get_trials(deepcopy=False)
                  if t.intermediate_values}
        reported = PRUNED_VALUE[at]
        plots.append(("intermediate.png", search_figures.intermediate(curves, reported)))
    for filename, fig in plots:
        if fig is None:
            notes.append(f"{filename}: nothing to plot yet")
            continue
        client.log_figure(parent_run_id, fig, f"{ARTIFACTS}/{filename}")
    return notes


# --- what a report reads --------------------------------------------------------------------------------

def load_search(study: StudyData) -> tuple[SearchData | None, str]:
    """The search section of `study`'s report, and a note on where it came from.

    First what the search logged under search/ on its parent run; without that, its Optuna study
    read from the storage (storage_url); None and the reason when neither can be read.
    """
    logged, why = _from_mlflow(study)
    if logged is not None:
        return logged, logged.note
    return _from_optuna(study, why)


def _from_mlflow(study: StudyData) -> tuple[SearchData | None, str]:
    """The logged results, or None and why they cannot be used."""
    parent = study.parent
    if parent is None:
        return None, "the study has no parent run"
    files = ("trials.csv", "importance.json", "best_trials.json")
    where = pd.DataFrame({"run_id": [parent["run_id"]], "artifact_uri": [parent["artifact_uri"]]})
    texts = {name: load_texts(where, study.tracking_uri, f"{ARTIFACTS}/{name}").get(parent["run_id"])
             for name in files}
    missing = [f"{ARTIFACTS}/{name}" for name in files if texts[name] is None]
    if missing:
        return None, (f"its parent run has no {', '.join(missing)} (the search stopped before its end, or "
                      f"ran before searches logged them)")
    try:
        importance = json.loads(texts["importance.json"])
        objectives = [str(name) for name in importance["objectives"]]
        importances = pd.DataFrame(importance["importances"], columns=IMPORTANCE_COLUMNS)
        front = [int(trial["number"]) for trial in json.loads(texts["best_trials.json"])]
        trials = pd.read_csv(io.StringIO(texts["trials.csv"]))
        absent = {"number", "state", "baseline", *objectives} - set(trials.columns)
        if absent:
            raise ValueError(f"trials.csv has no column {', '.join(sorted(absent))}")
        evaluator, notes = str(importance["evaluator"]), [str(n) for n in importance["notes"]]
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"its parent run's {ARTIFACTS}/ results cannot be read ({type(exc).__name__}: {exc})"
    note = "; ".join([f"Search results as the search logged them on its parent run ({ARTIFACTS}/): "
                      f"{_completed(trials)}", *notes])
    return SearchData(objectives, trials, front, importances, evaluator, note), note


def storage_url(tag: str) -> str:
    """The Optuna storage to read the study from: $ABLATE_STORAGE when it is the tagged storage
    (the tag is its URL with the password removed, so the variable can still log in), else the tag."""
    env = os.environ.get(STORAGE_ENV)
    return env if env and redact(env) == tag else tag


def _from_optuna(study: StudyData, why_not_logged: str) -> tuple[SearchData | None, str]:
    """The results read from the Optuna storage (read-only: nothing is ever created there)."""
    tag = study.parent_tag(STORAGE_TAG)
    if not tag:
        return None, f"the study's parent run has no {STORAGE_TAG} tag and {why_not_logged}"
    url = storage_url(tag)
    try:
        found = load_study(study.name, url, create=False)
        trials = found.get_trials(deepcopy=False)
        objectives = _objective_names(found, study.parent_tag("harness.objective"))
        arm = study.parent_tag("harness.baseline_arm")
        table = trials_table(trials, objectives, baseline=lambda t: f"trial-{t.number}" == arm)
        importances, notes = importance_table(found, objectives, "ped-anova")
        front = [t.number for t in found.best_trials]
    except Exception as exc:  # noqa: BLE001 - any storage failure only costs the search section
        return None, (f"Optuna study {study.name!r} could not be read from {tag}: {scrub(_reason(exc), url)}; "
                      f"and {why_not_logged}")
    note = "; ".join([f"Search results read from Optuna study {study.name!r} in {tag}, since {why_not_logged}: "
                      f"{_completed(table)}", *notes])
    return SearchData(objectives, table, front, importances, EVALUATORS["ped-anova"], note), note


def _objective_names(study: optuna.Study, objective_tag: str | None) -> list[str]:
    """The study's metric names (a search sets them), else the harness.objective tag's, else
    objective_1, ...: one per direction."""
    n = len(study.directions)
    tagged = [s.strip() for s in (objective_tag or "").split(",") if s.strip()]
    for names in (study.metric_names, tagged):
        if names and len(names) == n:
            return list(names)
    return [f"objective_{i + 1}" for i in range(n)]


def _completed(trials: pd.DataFrame) -> str:
    return f"{int((trials['state'] == 'COMPLETE').sum())} completed trials of {len(trials)}"


def _reason(exc: BaseException) -> str:
    """The root cause in one line: Optuna wraps driver errors in vaguer ones of its own."""
    while exc.__cause__ or (exc.__context__ and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"
