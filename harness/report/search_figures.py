"""What a search logs on its parent run once it ends (under search/): the trials table, the best
trials, parameter importance, and the figures: optimization history, intermediate values (the
pruner's view), the Pareto front of two objectives, parameter importance.

Only the driver imports this module: scikit-learn (fANOVA) and seaborn would cost every worker
seconds of start-up. Figures are seaborn on matplotlib `Figure` objects (never pyplot), so nothing
global is touched and nothing needs closing; each returns None when there is nothing to draw.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import FrozenTrial, TrialState

from harness.studies.search import counts_toward_total, is_baseline
from harness.studies.search_space import SearchSpec
from harness.studies.study import info

ARTIFACTS = "search"
MIN_IMPORTANCE_TRIALS = 4
"""Below this many completed trials an importance is noise (Optuna returns equal shares)."""

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#d62728"}
BASELINE_COLOR = "#2ca02c"


# --- tables -------------------------------------------------------------------------------------------

def trials_frame(trials: list[FrozenTrial], spec: SearchSpec) -> pd.DataFrame:
    """One row per trial: number, state, objective values, epochs, params, runs, why it failed."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "counted": counts_toward_total(t),
                               "baseline": is_baseline(t), "epochs": t.user_attrs.get("epochs")}
        for i, name in enumerate(spec.objective.names):
            row[name] = t.values[i] if t.state == TrialState.COMPLETE else None
        row.update({f"params.{k}": v for k, v in t.params.items()})
        row["mlflow_run_ids"] = ",".join(t.user_attrs.get("mlflow_run_ids", []))
        row["reason"] = t.user_attrs.get("error") or t.user_attrs.get("skipped") or \
            t.system_attrs.get("harness.reaped", "")
        rows.append(row)
    return pd.DataFrame(rows)


def importance_table(study: optuna.Study, spec: SearchSpec, evaluator: str) -> tuple[pd.DataFrame, list[str]]:
    """objective, param, importance (normalised per objective); notes instead of errors."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    empty = pd.DataFrame(columns=["objective", "param", "importance"])
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
    for i, name in enumerate(spec.objective.names):
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


def log_results(study: optuna.Study, spec: SearchSpec, client: MlflowClient, best: list[FrozenTrial],
                evaluator: str) -> list[str]:
    """Tables and figures on the parent run, under search/; returns notes on what is missing."""
    parent = info(study)["parent_run_id"]
    table = trials_frame(study.get_trials(deepcopy=False), spec)
    client.log_text(parent, table.to_csv(index=False), f"{ARTIFACTS}/trials.csv")
    client.log_text(parent, json.dumps([{"number": t.number, "values": t.values, "params": t.params,
                                         "mlflow_run_ids": t.user_attrs.get("mlflow_run_ids", [])}
                                        for t in best], indent=2, default=str), f"{ARTIFACTS}/best_trials.json")
    importances, notes = importance_table(study, spec, evaluator)
    label = "fANOVA" if evaluator == "fanova" else "PED-ANOVA"
    client.log_text(parent, importances.to_csv(index=False), f"{ARTIFACTS}/importance.csv")
    client.log_text(parent, json.dumps({"evaluator": label, "notes": notes,
                                        "importances": importances.to_dict(orient="records")}, indent=2),
                    f"{ARTIFACTS}/importance.json")
    names = spec.objective.names
    plots = [("importance.png", importance(importances, label)),
             ("history.png", history(table, names))]
    if spec.objective.multi:
        plots.append(("pareto.png", pareto(table, names, [t.number for t in best])))
    else:
        curves = {t.number: (t.state.name, dict(t.intermediate_values)) for t in study.get_trials(deepcopy=False)
                  if t.intermediate_values}
        reported = "best val_loss so far" if spec.objective.at == "best" else "val_loss"
        plots.append(("intermediate.png", intermediate(curves, reported)))
    for filename, fig in plots:
        if fig is None:
            notes.append(f"{filename}: nothing to plot yet")
            continue
        client.log_figure(parent, fig, f"{ARTIFACTS}/{filename}")
    return notes


# --- figures ------------------------------------------------------------------------------------------

def _figure(width: float = 7.0, height: float = 4.2, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, color="#e5e5e5")
        ax.set_axisbelow(True)
    return fig, list(axes)


def history(trials: pd.DataFrame, objectives: list[str]) -> Figure | None:
    """Each COMPLETE trial's objective value(s) by trial number, the best so far as a step line,
    the baseline trial marked. `trials`: number, state, baseline and one column per objective."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    if done.empty:
        return None
    fig, axes = _figure(ncols=len(objectives), width=6.0 if len(objectives) > 1 else 7.0)
    for ax, name in zip(axes, objectives):
        sns.scatterplot(data=done, x="number", y=name, ax=ax, color=STATE_COLORS["COMPLETE"], label="trial")
        ax.step(done["number"], np.minimum.accumulate(done[name].to_numpy()), where="post",
                color="black", linewidth=1.2, label="best so far")
        base = done[done["baseline"]]
        if not base.empty:
            ax.scatter(base["number"], base[name], s=90, facecolors="none", edgecolors=BASELINE_COLOR,
                       linewidths=2, label="baseline", zorder=3)
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{name} (lower is better)")
        ax.legend(loc="upper right", fontsize="small")
    fig.suptitle("Optimization history")
    return fig


def intermediate(curves: dict[int, tuple[str, dict[int, float]]], value_name: str) -> Figure | None:
    """The value each trial reported at each evaluation (what the pruner compared): one line per
    trial, pruned trials in red and ending in a cross. `curves`: number -> (state, {step: value})."""
    rows = [{"trial": n, "state": state, "evaluation": step, "value": value}
            for n, (state, values) in curves.items() for step, value in sorted(values.items())]
    if not rows:
        return None
    data = pd.DataFrame(rows)
    fig, (ax,) = _figure()
    for (n, state), part in data.groupby(["trial", "state"]):
        color = STATE_COLORS.get(state, "#7f7f7f")
        ax.plot(part["evaluation"], part["value"], color=color, alpha=0.7, linewidth=1.2)
        if state == "PRUNED":
            ax.scatter(part["evaluation"].iloc[-1:], part["value"].iloc[-1:], marker="x", color=color, zorder=3)
    for state, color in STATE_COLORS.items():
        ax.plot([], [], color=color, label=state.lower())
    ax.set_xlabel("evaluation (step reported to the pruner)")
    ax.set_ylabel(value_name)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title("Intermediate values")
    return fig


def pareto(trials: pd.DataFrame, objectives: list[str], front: list[int]) -> Figure | None:
    """All COMPLETE trials on the two objectives, the Pareto front connected and labelled."""
    done = trials[trials["state"] == "COMPLETE"]
    if done.empty:
        return None
    x, y = objectives
    on_front = done["number"].isin(front)
    fig, (ax,) = _figure(width=6.5, height=5.0)
    sns.scatterplot(data=done[~on_front], x=x, y=y, ax=ax, color="#9a9a9a", label="dominated")
    line = done[on_front].sort_values(x)
    ax.plot(line[x], line[y], "o-", color=STATE_COLORS["COMPLETE"], label="Pareto front", zorder=3)
    for _, row in line.iterrows():
        ax.annotate(f"trial-{int(row['number'])}", (row[x], row[y]), textcoords="offset points",
                    xytext=(5, 4), fontsize="x-small")
    base = done[done["baseline"]]
    if not base.empty:
        ax.scatter(base[x], base[y], s=110, facecolors="none", edgecolors=BASELINE_COLOR, linewidths=2,
                   label="baseline", zorder=4)
    ax.set_xlabel(f"{x} (lower is better)")
    ax.set_ylabel(f"{y} (lower is better)")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title("Pareto front")
    return fig


def importance(table: pd.DataFrame, evaluator: str) -> Figure | None:
    """Normalised importance per parameter (and per objective). `table`: objective, param, importance."""
    if table.empty:
        return None
    height = 1.2 + 0.35 * table["param"].nunique() * max(1, table["objective"].nunique()) ** 0.5
    fig, (ax,) = _figure(height=height)
    sns.barplot(data=table, x="importance", y="param", hue="objective", ax=ax)
    ax.set_xlabel(f"importance ({evaluator}, normalised per objective)")
    ax.set_ylabel("")
    ax.legend(loc="lower right", fontsize="small", title="objective")
    ax.set_title("Parameter importance")
    return fig
