"""The numbers of a report: per-arm summaries and paired comparisons against the baseline.

Conventions:
- 95% confidence intervals are t-based: mean +- t(0.975, n-1) * sd / sqrt(n), sd with ddof=1.
- Paired comparisons pair runs that share a seed (arms sharing a seed share init, data order
  and augmentation). Several runs of one arm with the same seed are averaged first.
  The difference is arm - baseline.
- P(better) is the posterior probability that the arm beats the baseline on the metric: under
  the reference prior, the mean paired difference has a Student t posterior with n-1 degrees
  of freedom, centred on the observed mean difference with scale sd/sqrt(n). For a metric
  where lower is better (losses, gaps, wall time) it is P(difference < 0) = t.cdf(0, ...).
- p-values of the paired t-tests are Holm-adjusted across the arms compared in one report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from harness.core.metrics import ARM_METRICS, COMPARABLE_METRICS

CONFIDENCE = 0.95


def t_interval(mean: ArrayLike, std: ArrayLike, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """95% t-interval of a mean from the sample sd and size, elementwise; NaN where n < 2."""
    mean, std, n = (np.asarray(a, dtype=float) for a in (mean, std, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return mean - half, mean + half


def mean_interval(values: ArrayLike) -> dict[str, float]:
    """mean, std (ddof=1), n and the 95% t-interval of the mean (ci_low, ci_high) of `values`.

    The spread of one arm over its seeds, as a study's arm run records it. One value has std 0
    and no interval (NaN); no values have a NaN mean.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else np.nan
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    low, high = t_interval(mean, std, n)
    return {"mean": mean, "std": std, "n": float(n), "ci_low": float(low), "ci_high": float(high)}


def arm_table(runs: pd.DataFrame, order: list[str], metrics: tuple[str, ...] = ARM_METRICS) -> pd.DataFrame:
    """One row per (arm, metric), arms in `order`: arm, metric, n, mean, std, ci_low, ci_high.

    `runs` has an ``arm`` column and one column per metric. n counts the runs with a value;
    std (ddof=1) and the CI need n >= 2. An absent metric column counts as all missing.
    """
    present = [m for m in metrics if m in runs]
    values = runs[present].apply(pd.to_numeric, errors="coerce").groupby(runs["arm"])
    table = pd.concat({"n": values.count().stack(), "mean": values.mean().stack(),
                       "std": values.std(ddof=1).stack()}, axis=1, sort=False)
    full = pd.MultiIndex.from_product([order, metrics], names=["arm", "metric"])
    table = table.reindex(full)
    table["n"] = table["n"].fillna(0).astype(int)
    table["ci_low"], table["ci_high"] = t_interval(table["mean"], table["std"], table["n"])
    return table.reset_index()


@dataclass(frozen=True)
class Paired:
    """A paired comparison of one arm against the baseline on one metric (arm - baseline)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_p: float
    wilcoxon_p: float
    p_better: float
    n_better: int


def paired(arm: ArrayLike, baseline: ArrayLike, lower_is_better: bool = True) -> Paired:
    """Compare two arrays aligned by seed (NaN: no run with that seed) on the seeds both have.

    n = 1 gives the difference only (no CI, no test, no P(better)). The t-test is
    scipy.stats.ttest_rel; the Wilcoxon signed-rank test needs a non-zero difference.
    """
    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    shared = ~(np.isnan(a) | np.isnan(b))
    a, b = a[shared], b[shared]
    d = a - b
    n = len(d)
    sign = -1.0 if lower_is_better else 1.0
    n_better = int(np.sum(sign * d > 0))
    if n == 0:
        return Paired(0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 0)
    mean = float(d.mean())
    if n == 1:
        return Paired(1, mean, np.nan, np.nan, np.nan, np.nan, np.nan, n_better)
    sd = float(d.std(ddof=1))
    se = sd / np.sqrt(n)
    low, high = (float(v) for v in t_interval(mean, sd, n))
    if se == 0:
        # Every seed moved by the same amount: t is undefined, the direction is certain.
        t_p, p_better = np.nan, float(np.sign(sign * mean) / 2 + 0.5)
    else:
        t_p = float(stats.ttest_rel(a, b).pvalue)
        p_better = float(stats.t.cdf(0.0, n - 1, loc=sign * -mean, scale=se))
    return Paired(n, mean, low, high, t_p, _wilcoxon(d), p_better, n_better)


def _wilcoxon(d: np.ndarray) -> float:
    if not np.any(d != 0):
        return np.nan
    with warnings.catch_warnings():
        # Small n: scipy warns that the normal approximation is poor when ties force it.
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.wilcoxon(d).pvalue)


def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjustment; NaN entries are not tests and stay NaN.

    Sorted ascending, the i-th of m p-values (i from 0) becomes (m - i) * p, made
    non-decreasing by a running maximum and capped at 1; results return in input order.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def compare(runs: pd.DataFrame, order: list[str], baseline: str, metric: str) -> pd.DataFrame:
    """Every arm but the baseline against it on `metric`, in `order`.

    Runs pair by their ``seed`` column (runs without one are left out); runs of one arm sharing
    a seed are averaged first. Columns: arm, n (paired seeds), mean_diff, ci_low, ci_high, t_p,
    wilcoxon_p, p_holm, p_better, n_better.
    """
    lower = COMPARABLE_METRICS[metric].lower_is_better
    frame = runs[runs["seed"].notna()]
    values = pd.to_numeric(frame[metric], errors="coerce") if metric in frame else pd.Series(np.nan, frame.index)
    by_seed = values.groupby([frame["arm"], frame["seed"]]).mean().unstack("seed").reindex(order)
    matrix = by_seed.to_numpy(dtype=float)  # arms x seeds, NaN where an arm lacks a seed
    base = matrix[order.index(baseline)]
    rows = [{"arm": arm, **paired(row, base, lower).__dict__}
            for arm, row in zip(order, matrix) if arm != baseline]
    table = pd.DataFrame(rows, columns=["arm", "n", "mean_diff", "ci_low", "ci_high", "t_p",
                                        "wilcoxon_p", "p_better", "n_better"])
    table.insert(table.columns.get_loc("wilcoxon_p") + 1, "p_holm", holm(table["t_p"].to_numpy()))
    return table


def curve_bands(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and 95% t-band of `metric` over the runs of each arm at each evaluation step.

    `history` has columns arm, step, epoch (optional) and `metric`. Returns arm, step, x
    (mean epoch, or the step when there is no epoch), n, mean, low, high; the band is the
    mean where n = 1.
    """
    x_col = "epoch" if "epoch" in history else "step"
    frame = history[list(dict.fromkeys(["arm", "step", x_col, metric]))].dropna(subset=[metric])
    g = frame.groupby(["arm", "step"], sort=True)
    out = g.agg(x=(x_col, "mean"), n=(metric, "size"), mean=(metric, "mean"), sd=(metric, "std")).reset_index()
    low, high = t_interval(out["mean"], out["sd"], out["n"])
    out["low"] = np.where(out["n"] >= 2, low, out["mean"])
    out["high"] = np.where(out["n"] >= 2, high, out["mean"])
    return out.drop(columns="sd")


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both x and y (both minimised), by x."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    idx = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
    idx = idx[np.lexsort((y[idx], x[idx]))]
    front, best_y = [], np.inf
    for i in idx:
        if y[i] < best_y:
            front.append(i)
            best_y = y[i]
    return np.asarray(front, dtype=int)
