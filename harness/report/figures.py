"""The report's figures, drawn with seaborn on matplotlib's Agg canvas.

Each figure function returns a matplotlib Figure, or None with the reason it has no data; the
report lists skipped figures with that reason. Figures are built as ``matplotlib.figure.Figure``
objects, never through pyplot, so nothing global (current figure, backend) is touched and
nothing needs closing. Styles are applied through seaborn's context managers for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness.core.metrics import COMPARABLE_METRICS
from harness.report import search_figures
from harness.report.search import SearchData
from harness.report.stats import curve_bands, pareto_front
from harness.report.verdict import GAP, HELDOUT, LABELS, MIN_SEEDS

DPI = 100
_NEUTRAL = "#9a9a9a"


@dataclass(frozen=True)
class FigureInput:
    runs: pd.DataFrame
    """Included runs: arm, seed, summary metrics, params.*."""
    history: pd.DataFrame
    """Per-evaluation rows of the included runs with an ``arm`` column."""
    arms: list[str]
    """The arms drawn (baseline first): all of them, or the baseline and the best ones."""
    baseline: str | None
    metric: str
    arm_stats: pd.DataFrame
    """stats.arm_table for at least `arms` and `metric`."""
    verdicts: pd.DataFrame
    """verdict.verdict_table (empty without a baseline)."""
    study_type: str | None
    search: SearchData | None
    search_note: str

    @property
    def colors(self) -> dict[str, tuple[float, float, float]]:
        return dict(zip(self.arms, sns.color_palette("tab10", max(len(self.arms), 1))))


@dataclass(frozen=True)
class FigureFile:
    name: str
    title: str
    caption: str
    path: Path | None
    """The PNG written, or None when the figure was skipped."""
    skipped: str
    """Why there is no figure ("" when there is one)."""


FigureFn = Callable[[FigureInput], "tuple[Figure | None, str]"]


def write_figures(data: FigureInput, folder: Path) -> list[FigureFile]:
    """Draw every figure that has data into `folder` as NAME.png; removes stale PNGs there."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        for name, title, fn in _figures(data):
            fig, text = fn(data)
            if fig is None:
                out.append(FigureFile(name, title, "", None, text))
                continue
            path = folder / f"{name}.png"
            fig.savefig(path, format="png", dpi=DPI)
            out.append(FigureFile(name, title, text, path, ""))
    written = {f.path for f in out if f.path}
    for stale in folder.glob("*.png"):
        if stale not in written:
            stale.unlink()
    return out


def _figures(data: FigureInput) -> list[tuple[str, str, FigureFn]]:
    noun = COMPARABLE_METRICS[data.metric].noun
    figures = [
        ("paired_differences", "Change against the baseline, paired by seed", paired_differences),
        ("validation_curves", "Validation loss of every arm", validation_curves),
        ("learning_curves", "Learning curves", learning_curves),
        ("gap", "Generalization gap over training", gap_curves),
        (f"{data.metric}_by_arm", f"{noun.capitalize()} per arm", metric_by_arm),
        ("tradeoff", "Held-out loss against gap", tradeoff),
        ("learning_rate", "Learning rate as applied", learning_rates),
        ("gradients", "Gradient norm and clip fraction", gradients),
    ]
    if data.study_type == "search":
        figures += [("importance", "Parameter importance", importance),
                    ("optimization_history", "Optimization history", optimization_history)]
    if data.search is not None and len(data.search.objectives) == 2:
        figures.append(("search_pareto", "Pareto front of the search's objectives", search_pareto))
    return figures


def _grid(n: int, ncols: int = 4, size: tuple[float, float] = (3.4, 2.6)) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[:n]:
        # Shared x: label every visible panel, since the one below may be a hidden filler.
        ax.tick_params(labelbottom=True)
    return fig, list(axes[:n])


def _x_label(history: pd.DataFrame) -> str:
    return "epoch" if "epoch" in history else "optimizer step"


def _band(ax, bands: pd.DataFrame, color, label: str, linestyle: str = "-", floor: float | None = None) -> None:
    ax.plot(bands["x"], bands["mean"], color=color, label=label, linestyle=linestyle, lw=1.6)
    low = bands["low"] if floor is None else bands["low"].clip(lower=floor)
    ax.fill_between(bands["x"], low, bands["high"], color=color, alpha=0.2, lw=0)


def _curves(ax, history: pd.DataFrame, metric: str, arm: str, color, label: str, linestyle: str = "-",
            floor: float | None = None, band: bool = True) -> None:
    """One arm's `metric` over training: the mean over its runs, and either a 95% t-band (at least
    MIN_SEEDS runs) or, with fewer, every run as a thin line.

    Under MIN_SEEDS runs a t-band is mostly the t quantile (12.7 at 2 runs) and reaches values the
    metric cannot take; the runs themselves show the spread honestly. `floor` clips a band at the
    metric's lower bound (0 for a loss).
    """
    rows = history[history["arm"] == arm]
    if rows.empty:
        return
    x_col = "epoch" if "epoch" in rows else "step"
    if rows["run_id"].nunique() < MIN_SEEDS:
        for _, run in rows.groupby("run_id", sort=True):
            ax.plot(run[x_col], run[metric], color=color, lw=0.7, alpha=0.45, linestyle=linestyle)
        bands = curve_bands(rows, metric)
        ax.plot(bands["x"], bands["mean"], color=color, label=label, linestyle=linestyle, lw=1.6)
        return
    bands = curve_bands(rows, metric)
    if band:
        _band(ax, bands, color, label, linestyle, floor)
    else:
        ax.plot(bands["x"], bands["mean"], color=color, label=label, linestyle=linestyle, lw=1.6)


def _spread_note(history: pd.DataFrame) -> str:
    """How the caption describes the spread drawn by `_curves`."""
    runs = history.groupby("arm")["run_id"].nunique()
    if (runs >= MIN_SEEDS).all():
        return "mean over seeds with a 95% t-band"
    if (runs < MIN_SEEDS).all():
        return f"mean over seeds (thick) and each seed (thin): under {MIN_SEEDS} seeds a t-band says little"
    return f"mean over seeds; a 95% t-band for arms with {MIN_SEEDS}+ seeds, each seed thin for the others"


def _shown_history(data: FigureInput, *metrics: str) -> pd.DataFrame | None:
    if data.history.empty or any(m not in data.history for m in metrics):
        return None
    frame = data.history[data.history["arm"].isin(data.arms)]
    return frame if frame[list(metrics)].notna().any().all() else None


def learning_curves(data: FigureInput) -> tuple[Figure | None, str]:
    history = _shown_history(data, "train_eval_loss", "val_loss")
    if history is None:
        return None, "no run has train_eval_loss and val_loss in its history.json"
    arms = [a for a in data.arms if a in set(history["arm"])]
    fig, axes = _grid(len(arms), ncols=3, size=(3.6, 2.9))
    for ax, arm in zip(axes, arms):
        _curves(ax, history, "train_eval_loss", arm, sns.color_palette()[0], "train (eval mode)", floor=0.0)
        _curves(ax, history, "val_loss", arm, sns.color_palette()[3], "validation", floor=0.0)
        ax.set_title(_short(arm) + (" (baseline)" if arm == data.baseline else ""), fontsize=9)
        ax.set_xlabel(_x_label(history))
        ax.set_ylabel("loss (nats/char)")
    axes[0].legend(fontsize=8)
    return fig, (f"Per arm: {_spread_note(history[history['arm'].isin(arms)])}; train loss measured in eval "
                 "mode (no dropout, no augmentation). Where the two lines part, the arm overfits.")


def _overlaid(data: FigureInput, metric: str, ylabel: str, band: bool) -> tuple[Figure, pd.DataFrame] | None:
    """Every shown arm's `metric` over training in one panel, the baseline dashed (None: no data)."""
    history = _shown_history(data, metric)
    if history is None:
        return None
    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.subplots()
    for arm, color in data.colors.items():
        _curves(ax, history, metric, arm, color, _short(arm), "--" if arm == data.baseline else "-", band=band)
    ax.set_xlabel(_x_label(history))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="best")
    return fig, history


def validation_curves(data: FigureInput) -> tuple[Figure | None, str]:
    drawn = _overlaid(data, "val_loss", "validation loss (nats/char)", band=False)
    if drawn is None:
        return None, "no run has val_loss in its history.json"
    fig, history = drawn
    return fig, ("Every arm's validation loss, mean over seeds (the baseline dashed"
                 + (f"; each seed thin for arms with fewer than {MIN_SEEDS}" if
                    (history.groupby("arm")["run_id"].nunique() < MIN_SEEDS).any() else "")
                 + "). Each run's own lowest validation loss picks the evaluation whose test loss the verdicts compare.")


_VERDICT_COLORS = dict(zip(LABELS, ("#2e8b57", "#d08c00", "#c0392b", "#7f7f7f", "#b0b0b0")))


def paired_differences(data: FigureInput) -> tuple[Figure | None, str]:
    """The quantity the verdicts test: per arm, the mean paired change on each axis with its CI."""
    table = data.verdicts[data.verdicts["arm"].isin(data.arms)] if not data.verdicts.empty else data.verdicts
    if table.empty:
        return None, "no baseline to pair against"
    fig = Figure(figsize=(11, 0.42 * len(table) + 1.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(table))
    colors = [_VERDICT_COLORS[v] for v in table["verdict"]]
    for ax, axis, label in ((axes[0], HELDOUT, "\u0394 held-out (test) loss, arm - baseline (nats)"),
                            (axes[1], GAP, "\u0394 gap on test text, arm - baseline (nats)")):
        mean = table[f"{axis}_diff"].to_numpy(float)
        low = np.nan_to_num(mean - table[f"{axis}_ci_low"].to_numpy(float))
        high = np.nan_to_num(table[f"{axis}_ci_high"].to_numpy(float) - mean)
        for i in range(len(table)):
            ax.errorbar(mean[i], y[i], xerr=[[low[i]], [high[i]]], fmt="o", color=colors[i], ms=5, capsize=3, lw=1.4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(label)
    axes[0].set_yticks(y, [f"{_short(a, 28)}  [{v}]" for a, v in zip(table["arm"], table["verdict"])])
    axes[0].set_ylim(len(table) - 0.5, -0.5)
    return fig, (f"Mean paired difference to the baseline {data.baseline} over shared seeds, with its 95% "
                 "t-interval: left of zero is better on both panels. Colour: the verdict "
                 "(green generalizes-better, amber closes-gap-by-underfitting, red hurts, grey no clear "
                 "effect or too few seeds). An arm left of zero on the right panel only closed its gap. "
                 "The intervals are not adjusted for the number of arms; the verdicts use Holm-adjusted "
                 "p-values, so an interval clear of zero can still read no-clear-effect.")


def gap_curves(data: FigureInput) -> tuple[Figure | None, str]:
    drawn = _overlaid(data, "gap", "val_loss - train_eval_loss (nats)", band=True)
    if drawn is None:
        return None, "no run has gap in its history.json"
    fig, history = drawn
    fig.axes[0].axhline(0, color="black", lw=0.6)
    return fig, f"The overfitting gap per arm, {_spread_note(history)}; the baseline dashed."


def metric_by_arm(data: FigureInput) -> tuple[Figure | None, str]:
    metric = data.metric
    runs = data.runs[data.runs["arm"].isin(data.arms)]
    if metric not in runs or runs[metric].isna().all():
        return None, f"no run has the summary metric {metric}"
    stats = data.arm_stats[data.arm_stats["metric"] == metric].set_index("arm").reindex(data.arms)
    fig = Figure(figsize=(8, 0.45 * len(data.arms) + 1.4), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(data.arms))
    # seaborn's stripplot jitters with the global numpy RNG; a seeded one keeps reruns identical.
    rng = np.random.default_rng(0)
    for i, arm in enumerate(data.arms):
        values = runs.loc[runs["arm"] == arm, metric].dropna()
        ax.scatter(values, i + rng.uniform(-0.15, 0.15, len(values)), s=16, alpha=0.6, color=data.colors[arm])
    low = (stats["mean"] - stats["ci_low"]).fillna(0).to_numpy()
    high = (stats["ci_high"] - stats["mean"]).fillna(0).to_numpy()
    ax.errorbar(stats["mean"], y, xerr=[low, high], fmt="D", color="black", ms=5, capsize=3, lw=1.2)
    if data.baseline is not None and not math.isnan(stats.loc[data.baseline, "mean"]):
        ax.axvline(stats.loc[data.baseline, "mean"], color="black", ls="--", lw=0.8)
    ax.set_yticks(y, [_short(a) + (" (baseline)" if a == data.baseline else "") for a in data.arms])
    ax.set_ylim(len(data.arms) - 0.5, -0.5)  # the baseline on top
    ax.set_xlabel(f"{metric} ({COMPARABLE_METRICS[metric].unit})" if COMPARABLE_METRICS[metric].unit else metric)
    ax.set_ylabel("")
    return fig, "Dots: runs. Diamonds: arm mean with its 95% t-interval. Dashed line: the baseline's mean."


TRADEOFF_AXES = (("test_loss", "test_gap", "held-out (test) loss at the selected evaluation (nats)",
                  "gap on test text at that evaluation (nats)"),
                 ("best_val_loss", "gap_at_best", "best validation loss (nats)", "gap at the best epoch (nats)"))
"""The verdicts' two axes; runs logged before the test split have only the validation pair."""


def tradeoff(data: FigureInput) -> tuple[Figure | None, str]:
    for x, y, x_label, y_label in TRADEOFF_AXES:
        if x in data.runs and y in data.runs and data.runs[[x, y]].notna().all(axis=1).any():
            break
    else:
        return None, "no run has both test_loss and test_gap (or best_val_loss and gap_at_best)"
    runs = data.runs.dropna(subset=[x, y])
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    others = runs[~runs["arm"].isin(data.arms)]
    if not others.empty:
        ax.scatter(others[x], others[y], s=10, color=_NEUTRAL, alpha=0.5, label="other arms")
    shown = runs[runs["arm"].isin(data.arms)].assign(label=lambda f: f["arm"].map(_short))
    sns.scatterplot(data=shown, x=x, y=y, hue="label", hue_order=[_short(a) for a in data.arms],
                    palette={_short(a): c for a, c in data.colors.items()}, s=30, ax=ax)
    caption = ("Each point is a run at its best epoch (chosen on validation loss): lower-left is better "
               "on both. A point that moved down but right closed its gap by fitting the training text worse.")
    if data.study_type == "search":
        front = runs.iloc[pareto_front(runs[x].to_numpy(), runs[y].to_numpy())]
        ax.plot(front[x], front[y], "k-", drawstyle="steps-post", lw=1, label="Pareto front")
        ax.scatter(front[x], front[y], s=60, facecolors="none", edgecolors="black")
        caption += f" The line joins the {len(front)} runs no other run beats on both axes here (Pareto front)."
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(fontsize=8, loc="best")
    return fig, caption


def learning_rates(data: FigureInput) -> tuple[Figure | None, str]:
    history = _shown_history(data, "lr")
    if history is None:
        return None, "no run has lr in its history.json"
    schedule = data.runs.set_index("arm")["params.schedule.name"] if "params.schedule.name" in data.runs \
        else pd.Series("unknown", index=data.runs["arm"])
    schedule = schedule.fillna("unknown").groupby(level=0).first()
    # A panel per scheduler whose learning rate moves in some arm; a flat line says nothing.
    moving = history.groupby("arm")["lr"].agg(lambda v: v.max() > v.min())
    names = sorted({schedule[a] for a in data.arms if a in schedule and moving.get(a, False)})
    if not names:
        return None, "the learning rate never changes in the arms shown (constant schedule, no warmup)"
    bands = curve_bands(history, "lr")
    fig, axes = _grid(len(names), ncols=2, size=(4.6, 3.2))
    for ax, name in zip(axes, names):
        for arm, color in data.colors.items():
            rows = bands[bands["arm"] == arm]
            if schedule.get(arm) == name and not rows.empty:
                ax.plot(rows["x"], rows["mean"], color=color, label=_short(arm), lw=1.5)
        ax.set_title(f"schedule.name={name}", fontsize=9)
        ax.set_xlabel(_x_label(history))
        ax.set_ylabel("learning rate")
        ax.legend(fontsize=7)
    return fig, "The learning rate the optimizer applied at each evaluation, per scheduler (mean over seeds)."


def gradients(data: FigureInput) -> tuple[Figure | None, str]:
    column = "params.optim.clip_norm"
    if column not in data.runs:
        return None, "the runs have no optim.clip_norm param"
    clip = data.runs.groupby("arm")[column].first().reindex(data.arms).fillna("None").astype(str)
    if clip.nunique() < 2:
        return None, "optim.clip_norm does not vary across the arms shown"
    reference = clip.get(data.baseline) if data.baseline else None
    arms = [a for a in data.arms if reference is None or a == data.baseline or clip[a] != reference]
    history = _shown_history(data, "grad_norm", "clip_frac")
    if history is None:
        return None, "no run has grad_norm and clip_frac in its history.json"
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, metric, label in ((axes[0], "grad_norm", "gradient norm before clipping"),
                              (axes[1], "clip_frac", "fraction of steps clipped")):
        for arm in arms:
            _curves(ax, history, metric, arm, data.colors[arm], f"{_short(arm)} (clip_norm={clip[arm]})", floor=0.0)
        ax.set_xlabel(_x_label(history))
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    return fig, (f"Arms whose optim.clip_norm differs from the baseline's, and the baseline: "
                 f"{_spread_note(history[history['arm'].isin(arms)])}.")


def _from_search(data: FigureInput, draw: Callable[[SearchData], Figure | None], missing: str,
                 caption: str) -> tuple[Figure | None, str]:
    """A figure of what the search logged, or why there is none."""
    if data.search is None:
        return None, data.search_note
    fig = draw(data.search)
    return (None, missing) if fig is None else (fig, caption)


def importance(data: FigureInput) -> tuple[Figure | None, str]:
    search = data.search
    return _from_search(data, lambda d: search_figures.importance(d.importances, d.evaluator),
                        f"no parameter importance: {search and search.note}",
                        f"{search and search.evaluator} importance of each searched parameter, normalised per "
                        f"objective. {search and search.note}.")


def optimization_history(data: FigureInput) -> tuple[Figure | None, str]:
    return _from_search(data, lambda d: search_figures.history(d.trials, d.objectives),
                        "the search has no completed trial",
                        "Each completed trial's objective value by trial number (lower is better), the best so far "
                        "as a step line, the baseline trial circled.")


def search_pareto(data: FigureInput) -> tuple[Figure | None, str]:
    fig = search_figures.pareto(data.search.trials, data.search.objectives, data.search.front)
    if fig is None:
        return None, "the search has no completed trial"
    return fig, (f"Every completed trial on the two objectives the search minimised (on validation text), the "
                 f"Pareto front joined and labelled: the {len(data.search.front)} trials no other trial beats on both.")


def _short(label: str, width: int = 40) -> str:
    """A label fit for a legend: truncated, and with $ escaped so matplotlib never reads mathtext."""
    label = label if len(label) <= width else label[: width - 1] + "\u2026"
    return label.replace("$", r"\$")
