"""Two-axis verdicts (issue 10): an arm is judged on held-out loss and gap together.

The case that motivated them: an arm that shrinks the gap because it fits its training text
worse (input noise 0.5, a 20x lower learning rate) must never read as a win.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.report.verdict import (FEW, GENERALIZES, HURTS, UNCLEAR, UNDERFITS, VERDICT_COLUMNS, judge,
                                    verdict_table)

SEEDS = range(5)
# A paired-seed offset shared by every arm (what pairing removes) and a little run noise.
OFFSET = np.array([0.05, -0.03, 0.0, 0.02, -0.04])
NOISE = np.array([0.004, -0.002, 0.001, -0.003, 0.0])


def runs(arms: dict[str, tuple[float, float]], seeds=SEEDS) -> pd.DataFrame:
    """Runs with test_loss = 2.5 + shift + offset + noise and test_gap = 0.6 + shift + ..., per arm."""
    rows = []
    for i, (arm, (loss_shift, gap_shift)) in enumerate(arms.items()):
        for s in seeds:
            jitter = NOISE[s] * (i + 1)
            rows.append({"arm": arm, "seed": s, "test_loss": 2.5 + loss_shift + OFFSET[s] + jitter,
                         "test_gap": 0.6 + gap_shift + OFFSET[s] - jitter})
    return pd.DataFrame(rows)


def table(arms: dict[str, tuple[float, float]], failed: dict[str, int] | None = None, **kw) -> pd.DataFrame:
    frame = runs({"baseline": (0.0, 0.0), **arms})
    return verdict_table(frame, list(frame["arm"].unique()), "baseline", failed or {}, **kw).set_index("arm")


def test_each_label_from_paired_runs():
    t = table({"dropout": (-0.05, -0.2),         # lower held-out loss, smaller gap
               "noise=0.5": (+0.35, -0.3),       # the gap closes because training text fits worse
               "lr/20": (0.0, -0.25),            # smaller gap, held-out loss unchanged
               "norm=none": (+0.2, +0.1),        # worse on held-out loss, gap not smaller
               "clip=0.5": (0.0, 0.0)})          # nothing happens
    assert t["verdict"].to_dict() == {"dropout": GENERALIZES, "noise=0.5": UNDERFITS, "lr/20": UNDERFITS,
                                      "norm=none": HURTS, "clip=0.5": UNCLEAR}
    assert list(t.reset_index().columns) == VERDICT_COLUMNS
    noise = t.loc["noise=0.5"]
    assert noise["test_loss_diff"] == pytest.approx(0.35 + np.mean(NOISE) * 2)
    assert noise["test_gap_diff"] == pytest.approx(-0.3 - np.mean(NOISE) * 2)
    assert noise["seeds_lower_loss"] == 0 and noise["seeds_smaller_gap"] == 5
    assert "closes the gap by underfitting" in noise["sentence"] and "not lower" in noise["sentence"]


def test_holm_is_applied_per_axis_across_arms():
    t = table({"a": (-0.05, 0.0), "b": (0.0, -0.2), "c": (0.01, 0.0)})
    # Holm over three arms: the smallest t-test p is multiplied by 3 (or more after the running max).
    from scipy import stats as st

    frame = runs({"baseline": (0.0, 0.0), "a": (-0.05, 0.0), "b": (0.0, -0.2), "c": (0.01, 0.0)})
    base = frame[frame["arm"] == "baseline"]["test_loss"].to_numpy()
    raw = {arm: st.ttest_rel(frame[frame["arm"] == arm]["test_loss"].to_numpy(), base).pvalue for arm in "abc"}
    assert t.loc["a", "test_loss_p_holm"] == pytest.approx(min(1.0, 3 * min(raw.values())))
    assert t.loc["a", "test_loss_p_holm"] > raw["a"]


def test_under_five_pairs_nothing_is_declared():
    frame = runs({"baseline": (0.0, 0.0), "dropout": (-0.3, -0.3)}, seeds=range(4))
    row = verdict_table(frame, ["baseline", "dropout"], "baseline", {}).iloc[0]
    assert row["verdict"] == FEW and row["n"] == 4
    assert "too few seeds (4 pairs with baseline, fewer than 5)" in row["sentence"]
    assert "nothing declared" in row["sentence"] and "-0.3" in row["sentence"]


def test_failed_seeds_hold_back_generalizes_better_unless_ignored():
    held = table({"dropout": (-0.05, -0.2)}, failed={"dropout": 2})
    assert held.loc["dropout", "verdict"] == UNCLEAR and held.loc["dropout", "failed"] == 2
    assert "2 seed(s) failed" in held.loc["dropout", "sentence"]
    assert "not declared better" in held.loc["dropout", "sentence"]
    ignored = table({"dropout": (-0.05, -0.2)}, failed={"dropout": 2}, ignore_failed=True)
    assert ignored.loc["dropout", "verdict"] == GENERALIZES
    # A failing arm that is worse stays 'hurts': failures never improve a verdict.
    assert table({"x": (0.2, 0.1)}, failed={"x": 1}).loc["x", "verdict"] == HURTS


@pytest.mark.parametrize(("loss", "gap", "label"), [
    ({"n": 5, "mean_diff": -0.1, "p_holm": 0.01}, {"n": 5, "mean_diff": 0.1, "p_holm": 0.01}, GENERALIZES),
    ({"n": 5, "mean_diff": -0.1, "p_holm": 0.06}, {"n": 5, "mean_diff": -0.1, "p_holm": 0.01}, UNDERFITS),
    ({"n": 5, "mean_diff": 0.1, "p_holm": 0.01}, {"n": 5, "mean_diff": -0.1, "p_holm": 0.01}, UNDERFITS),
    ({"n": 5, "mean_diff": 0.1, "p_holm": 0.01}, {"n": 5, "mean_diff": -0.1, "p_holm": 0.2}, HURTS),
    ({"n": 5, "mean_diff": 0.1, "p_holm": 0.05}, {"n": 5, "mean_diff": 0.1, "p_holm": 0.01}, UNCLEAR),
    ({"n": 5, "mean_diff": 0.0, "p_holm": math.nan}, {"n": 5, "mean_diff": 0.0, "p_holm": math.nan}, UNCLEAR),
    ({"n": 4, "mean_diff": -1.0, "p_holm": 0.0001}, {"n": 4, "mean_diff": -1.0, "p_holm": 0.0001}, FEW),
])
def test_judge_boundaries(loss, gap, label):
    assert judge(loss, gap) == label


def test_featured_arms_keep_every_finding_even_the_worst():
    """With more arms than TOP_ARMS, sentences and figures show the baseline, every arm with a
    verdict other than no-clear-effect or too-few-seeds, then the best by held-out loss."""
    from harness.report import TOP_ARMS, _featured

    order = ["baseline"] + [f"arm{i:02d}" for i in range(14)]
    stats = pd.DataFrame({"arm": order, "metric": "test_loss", "mean": [2.5] + [2.0 + 0.01 * i for i in range(14)]})
    verdicts = pd.DataFrame({"arm": order[1:], "verdict": [UNCLEAR] * 13 + [HURTS]})
    shown = _featured(stats, order, "baseline", "test_loss", verdicts)
    assert "arm13" in shown and "baseline" in shown  # the worst arm, but it hurts: a finding
    assert len(shown) == TOP_ARMS and shown == [a for a in order if a in shown]
    assert shown[1:-1] == [f"arm{i:02d}" for i in range(TOP_ARMS - 2)]  # then the best by held-out loss


def test_verdict_table_rows_carry_the_paired_comparisons():
    """Each row's numbers are stats.compare's on that axis, the sentence is the arm's, and an
    empty table still has every column."""
    from harness.report.stats import compare

    arms = {"dropout": (-0.05, -0.2), "noise=0.5": (0.35, -0.3)}
    frame = runs({"baseline": (0.0, 0.0), **arms})
    order = list(frame["arm"].unique())
    t = verdict_table(frame, order, "baseline", {"noise=0.5": 1}, ignore_failed=True).set_index("arm")
    for axis in ("test_loss", "test_gap"):
        c = compare(frame, order, "baseline", axis).set_index("arm")
        for column in ("ci_low", "ci_high", "p_holm"):
            assert t[f"{axis}_{column}"].to_numpy() == pytest.approx(c.loc[t.index, column].to_numpy())
    assert all(t.loc[arm, "sentence"].startswith(arm) for arm in arms)
    assert "(--ignore-failed: judged on the finished seeds)" in t.loc["noise=0.5", "sentence"]
    empty = verdict_table(frame[frame["arm"] == "baseline"], ["baseline"], "baseline", {})
    assert list(empty.columns) == VERDICT_COLUMNS and empty.empty


def test_failed_seeds_hold_back_a_win_by_default():
    """judge() itself: without ignore_failed, a failed seed keeps 'generalizes-better' back."""
    loss, gap = {"n": 5, "mean_diff": -0.1, "p_holm": 0.01}, {"n": 5, "mean_diff": 0.0, "p_holm": 0.5}
    assert judge(loss, gap, failed=1) == UNCLEAR and judge(loss, gap, failed=1, ignore_failed=True) == GENERALIZES
