"""The report's figures draw what is honest for the data: issue 12's complaints, each pinned.

Built from small synthetic frames (no MLflow): the figure functions take a FigureInput.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection

from harness.report import figures
from harness.report.stats import arm_table
from harness.report.verdict import verdict_table


def history(seeds: int, spread: float = 0.5, lr: str = "constant") -> pd.DataFrame:
    rows = []
    for arm in ("baseline", "dropout"):
        for s in range(seeds):
            for e in range(1, 6):
                val = 2.0 + (0.1 if arm == "dropout" else 0.0) + spread * (s - seeds / 2) + 0.01 * e
                rows.append({"run_id": f"{arm}-{s}", "arm": arm, "step": 10 * e, "epoch": float(e),
                             "val_loss": val, "train_eval_loss": val - 0.3, "gap": 0.3,
                             "lr": 0.003 if lr == "constant" else 0.003 / e})
    return pd.DataFrame(rows)


def data(hist: pd.DataFrame) -> figures.FigureInput:
    runs = hist.groupby("run_id").last().reset_index()
    runs["seed"] = runs["run_id"].str.split("-").str[1].astype(int)
    runs["test_loss"], runs["test_gap"] = runs["val_loss"], runs["gap"]
    runs["params.schedule.name"] = "constant"
    order = ["baseline", "dropout"]
    return figures.FigureInput(runs=runs, history=hist, arms=order, baseline="baseline", metric="test_loss",
                               arm_stats=arm_table(runs, order),
                               verdicts=verdict_table(runs, order, "baseline", {}),
                               study_type="ablation", search=None, search_note="")


def test_under_five_seeds_each_seed_is_drawn_and_no_band():
    fig, caption = figures.validation_curves(data(history(seeds=2)))
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * (2 + 1)  # per arm: each seed thin, then the mean
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert "each seed thin" in caption
    fig, caption = figures.learning_curves(data(history(seeds=2)))
    assert "each seed (thin)" in caption
    assert not [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]


def test_with_five_seeds_loss_bands_never_leave_the_metrics_range():
    fig, caption = figures.learning_curves(data(history(seeds=5, spread=2.0)))
    bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert bands and "95% t-band" in caption
    lowest = min(path.vertices[:, 1].min() for band in bands for path in band.get_paths())
    assert lowest >= 0.0  # the t-band went far below 0 before clipping (a loss cannot)


def test_paired_differences_plot_the_tested_quantity():
    d = data(history(seeds=5))
    fig, caption = figures.paired_differences(d)
    left, right = fig.axes
    # dropout sits 0.1 above the baseline on every seed: the point is at +0.1, its verdict named.
    xs = [ln.get_xdata()[0] for ln in left.lines if len(ln.get_xdata()) == 1]
    assert np.allclose(xs, 0.1)
    assert [t.get_text() for t in left.get_yticklabels()] == ["dropout  [no-clear-effect]"]
    assert "left of zero is better" in caption
    empty = figures.FigureInput(**{**d.__dict__, "verdicts": d.verdicts.iloc[0:0]})
    assert figures.paired_differences(empty) == (None, "no baseline to pair against")


def test_a_constant_learning_rate_draws_no_panel():
    assert figures.learning_rates(data(history(seeds=2))) == \
        (None, "the learning rate never changes in the arms shown (constant schedule, no warmup)")
    fig, _ = figures.learning_rates(data(history(seeds=2, lr="decaying")))
    assert fig is not None
