"""A search's figures: optimization history, intermediate values (the pruner's view), the Pareto
front of two objectives, parameter importance. One set, drawn for the artifacts a search logs
when it ends (harness.report.search.log_search_results) and for the search section of its report.

Each takes the tables of harness.report.search (the trials table, the importance table), so the
report draws the same figures from what the search logged as the search did from Optuna. Figures
are seaborn on matplotlib `Figure` objects (never pyplot), so nothing global is touched and nothing
needs closing; each returns None when there is nothing to draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#d62728"}
BASELINE_COLOR = "#2ca02c"


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
    ax.legend(loc="best", fontsize="small")  # where it hides the fewest points
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
