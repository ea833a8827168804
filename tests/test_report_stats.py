"""The report's statistics and verdicts against answers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.report.stats import arm_table, compare, curve_bands, holm, mean_interval, paired, pareto_front
from harness.report.verdict import verdict

T_975_DF3 = 3.182446305  # t table: 97.5th percentile, 3 degrees of freedom


def t3_cdf(t: float) -> float:
    """Student t CDF with 3 degrees of freedom in closed form (independent of scipy)."""
    x = t / math.sqrt(3)
    return 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi


def test_arm_table_gives_n_mean_std_and_t_interval():
    runs = pd.DataFrame({"arm": ["a"] * 4 + ["b", "b"], "final_gap": [1.0, 2.0, 3.0, 4.0, np.nan, 3.0]})
    table = arm_table(runs, ["b", "a"], metrics=("final_gap", "wall_s")).set_index(["arm", "metric"])
    assert list(table.index) == [("b", "final_gap"), ("b", "wall_s"), ("a", "final_gap"), ("a", "wall_s")]
    a = table.loc[("a", "final_gap")]
    sd = math.sqrt(5 / 3)  # squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3
    assert a["n"] == 4 and a["mean"] == pytest.approx(2.5) and a["std"] == pytest.approx(sd)
    half = T_975_DF3 * sd / 2
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-8)
    # Missing values do not count; one value has no spread; an absent metric has n = 0.
    b = table.loc[("b", "final_gap")]
    assert b["n"] == 1 and b["mean"] == 3.0 and math.isnan(b["std"]) and math.isnan(b["ci_low"])
    assert table.loc[("a", "wall_s"), "n"] == 0 and math.isnan(table.loc[("a", "wall_s"), "mean"])


# Aligned by seed 0-5. Seeds 0-3 are shared; seed 4 only has an arm run and seed 5 only a
# baseline run (NaN: no run): they must not pair.
BASE = np.array([1.0, 1.2, 0.9, 1.1, np.nan, 7.0])
ARM = np.array([0.8, 1.1, 0.8, 0.8, -9.0, np.nan])


def test_paired_difference_by_hand():
    # d = arm - base = [-0.2, -0.1, -0.1, -0.3]; mean -0.175;
    # squared deviations 0.000625 + 0.005625 + 0.005625 + 0.015625 = 0.0275; sd = sqrt(0.0275 / 3)
    sd = math.sqrt(0.0275 / 3)
    se = sd / 2
    t = -0.175 / se  # -3.6556
    out = paired(ARM, BASE)
    assert out.n == 4 and out.n_better == 4
    assert out.mean_diff == pytest.approx(-0.175)
    assert (out.ci_low, out.ci_high) == pytest.approx((-0.175 - T_975_DF3 * se, -0.175 + T_975_DF3 * se), abs=1e-8)
    assert out.ci_low == pytest.approx(-0.32735, abs=1e-5) and out.ci_high == pytest.approx(-0.02265, abs=1e-5)
    assert out.t_p == pytest.approx(2 * t3_cdf(t), rel=1e-6)
    assert out.t_p == pytest.approx(0.035353, abs=1e-6)
    # P(better) for a loss: P(delta < 0) under t3 centred on -0.175 with scale se.
    assert out.p_better == pytest.approx(t3_cdf(0.175 / se), rel=1e-6)


def test_paired_wilcoxon_exact_when_every_seed_improves():
    # Five distinct negative differences: the exact two-sided p is 2 / 2**5.
    base = np.ones(5)
    arm = base - np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert paired(arm, base).wilcoxon_p == pytest.approx(2 / 32)


def test_paired_direction_for_a_metric_where_higher_is_better():
    low, high = paired(ARM, BASE, lower_is_better=True), paired(ARM, BASE, lower_is_better=False)
    assert high.p_better == pytest.approx(1 - low.p_better)
    assert high.n_better == 0


def test_paired_with_one_seed_gives_only_the_difference():
    out = paired([0.5, np.nan], [0.8, 0.1])
    assert out.n == 1 and out.mean_diff == pytest.approx(-0.3) and out.n_better == 1
    assert all(math.isnan(v) for v in (out.ci_low, out.t_p, out.wilcoxon_p, out.p_better))


def test_paired_with_identical_differences_has_no_t_but_a_certain_direction():
    out = paired([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert math.isnan(out.t_p) and out.p_better == 1.0
    assert out.ci_low == out.ci_high == pytest.approx(-0.5)


def test_holm_on_a_known_vector():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_keeps_order_monotone_caps_at_one_and_skips_nan():
    assert holm([0.01, 0.02, 0.025]) == pytest.approx([0.03, 0.04, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([np.nan, 0.01, 0.04])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.02, 0.04])
    assert holm([]).size == 0


def _runs(n: int, shift: float, noise: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """A baseline and an arm over n seeds; the arm's final gap is the baseline's + shift."""
    rng = np.random.default_rng(seed)
    base = 1.0 + rng.normal(0, 0.1, n)  # a seed effect both arms share
    arm = base + shift + rng.normal(0, noise, n)
    rows = [{"arm": "baseline", "seed": s, "final_gap": v} for s, v in enumerate(base)]
    rows += [{"arm": "dropout=0.3", "seed": s, "final_gap": v} for s, v in enumerate(arm)]
    return pd.DataFrame(rows)


def _verdict(n: int, shift: float, metric: str = "final_gap") -> str:
    runs = _runs(n, shift).rename(columns={"final_gap": metric})
    row = compare(runs, ["baseline", "dropout=0.3"], "baseline", metric).iloc[0]
    return verdict(row, metric, "baseline")


def test_verdict_with_ten_seeds_names_the_winner():
    text = _verdict(10, -0.21)
    assert text.startswith("dropout=0.3 shrank the final gap by 0.2")
    assert "nats [" in text and "p_holm<0.001" in text and text.endswith("better on 10/10 seeds.")


def test_verdict_with_ten_seeds_and_no_effect_says_no_clear_difference():
    text = _verdict(10, 0.0)
    assert text.startswith("dropout=0.3: no clear difference in the final gap")
    assert "shrank" not in text and "widened" not in text


def test_verdict_with_ten_seeds_names_a_loser_too():
    text = _verdict(10, +0.3)
    assert text.startswith("dropout=0.3 widened the final gap by 0.")
    assert text.endswith("better on 0/10 seeds.")


def test_verdict_with_three_seeds_says_the_evidence_is_thin():
    text = _verdict(3, -0.21)
    assert "evidence is thin (3 paired seeds, fewer than 5)" in text
    assert text.endswith("no winner declared.") and "better on 3/3 seeds" in text


def test_verdict_with_one_seed_runs_no_test():
    text = _verdict(1, -0.21)
    assert text.startswith("dropout=0.3 shrank the final gap by 0.2")
    assert text.endswith("one pair allows no test.") and "p_holm" not in text


def test_verdict_follows_the_metric_direction():
    text = _verdict(10, +2.0, metric="overfit_onset")
    assert text.startswith("dropout=0.3 delayed the overfitting onset by 1.9")
    assert text.endswith("better on 10/10 seeds.")


def test_verdict_without_shared_seeds():
    runs = _runs(3, -0.2)
    runs.loc[runs["arm"] == "dropout=0.3", "seed"] += 100
    row = compare(runs, ["baseline", "dropout=0.3"], "baseline", "final_gap").iloc[0]
    assert verdict(row, "final_gap", "baseline") == \
        "dropout=0.3: shares no seed with the baseline baseline; not compared."


def test_compare_adjusts_across_arms_with_holm():
    a, b = _runs(6, -0.05, noise=0.05, seed=1), _runs(6, -0.04, noise=0.05, seed=1)
    runs = pd.concat([a, b[b["arm"] != "baseline"].replace("dropout=0.3", "wd=0.1")])
    table = compare(runs, ["baseline", "dropout=0.3", "wd=0.1"], "baseline", "final_gap")
    assert list(table["arm"]) == ["dropout=0.3", "wd=0.1"]
    assert table["p_holm"].to_numpy() == pytest.approx(holm(table["t_p"].to_numpy()))


def test_curve_bands_mean_and_t_band():
    history = pd.DataFrame({"arm": ["a"] * 3, "step": [10, 10, 20], "epoch": [1.0, 1.0, 2.0],
                            "gap": [1.0, 3.0, 5.0]})
    bands = curve_bands(history, "gap")
    first, second = bands.iloc[0], bands.iloc[1]
    half = 12.7062047 * math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(n)
    assert (first["x"], first["n"], first["mean"]) == (1.0, 2, 2.0)
    assert (first["low"], first["high"]) == pytest.approx((2 - half, 2 + half))
    assert (second["n"], second["low"], second["high"]) == (1, 5.0, 5.0)


def test_pareto_front_keeps_the_points_nothing_beats_on_both():
    x = np.array([1.0, 2.0, 3.0, 1.5, np.nan, 2.5])
    y = np.array([3.0, 1.0, 0.5, 3.5, 0.0, 1.0])
    assert list(pareto_front(x, y)) == [0, 1, 2]


def test_compare_averages_runs_of_one_arm_sharing_a_seed_and_skips_unseeded_runs():
    runs = pd.DataFrame({
        "arm": ["baseline", "baseline", "a", "a", "a", "a"],
        "seed": pd.array([0, 1, 0, 0, 1, None], dtype="Int64"),
        "final_gap": [1.0, 2.0, 0.5, 1.5, 1.0, -50.0],
    })
    row = compare(runs, ["baseline", "a"], "baseline", "final_gap").iloc[0]
    # Seed 0: mean(0.5, 1.5) - 1.0 = 0; seed 1: 1.0 - 2.0 = -1; the unseeded run is ignored.
    assert row["n"] == 2 and row["mean_diff"] == pytest.approx(-0.5) and row["n_better"] == 1


def test_curve_bands_are_sorted_and_drop_only_missing_values():
    """Groups come out sorted by arm and step whatever the input order, and only a missing value
    of the metric drops a row (a missing epoch does not)."""
    history = pd.DataFrame({"arm": ["b", "a", "a", "a"], "step": [5, 20, 10, 10], "gap": [4.0, 2.0, 1.0, np.nan],
                            "epoch": [0.5, 2.0, np.nan, 1.0]})
    bands = curve_bands(history, "gap")
    assert list(zip(bands["arm"], bands["step"], bands["n"])) == [("a", 10, 1), ("a", 20, 1), ("b", 5, 1)]
    assert list(bands["x"].iloc[1:]) == [2.0, 0.5]


def test_curve_bands_without_epochs_use_the_step():
    history = pd.DataFrame({"arm": ["a", "a"], "step": [10, 20], "gap": [1.0, 2.0]})
    bands = curve_bands(history, "gap")
    assert list(bands["x"]) == [10.0, 20.0]


def test_pareto_front_of_plain_lists_and_of_no_point():
    """Lists (None for a missing value) are points too; with no comparable point the front is an
    empty index array, still usable to index."""
    assert list(pareto_front([3, 1, None], [1, 3, 0])) == [1, 0]
    none = pareto_front(np.array([np.nan, 1.0]), np.array([1.0, np.nan]))
    assert none.dtype.kind == "i" and len(np.arange(2)[none]) == 0


def test_arm_table_counts_text_numbers_and_only_values():
    """Values read as text count as numbers, text that is no number counts as missing, and n is
    a whole count (a report prints it)."""
    runs = pd.DataFrame({"arm": ["a", "a", "a"], "final_gap": ["1.5", "2.5", "n/a"]})
    row = arm_table(runs, ["a"], metrics=("final_gap",)).iloc[0]
    assert (row["n"], row["mean"]) == (2, 2.0)
    assert arm_table(runs, ["a"], metrics=("final_gap",))["n"].dtype.kind == "i"


def test_numbers_in_words():
    """Three significant digits; whole numbers from 1000 on; n/a for a missing value."""
    from harness.report.formatting import number, p_text

    assert [number(x) for x in (0.012345, 2.0, 999.4, 1000.0, -1234.6)] == ["0.0123", "2", "999", "1000", "-1235"]
    assert number(float("nan")) == "n/a" and number(None) == "n/a"
    assert [p_text(p) for p in (float("nan"), 0.0004, 0.001, 0.0312)] == ["=n/a", "<0.001", "=0.001", "=0.031"]


def test_verdict_of_one_seed_in_full_words():
    """A metric without a unit reads without one; a zero change on the one seed is 'same'."""
    row = {"arm": "a", "n": 1, "mean_diff": 2.0, "ci_low": np.nan, "ci_high": np.nan, "p_holm": np.nan,
           "n_better": 1}
    assert verdict(row, "overfit_onset", "base") == \
        "a delayed the overfitting onset by 2 on the one seed shared with base; one pair allows no test."
    assert verdict({**row, "mean_diff": 0.0, "n_better": 0}, "final_gap", "base") == \
        "a: same final gap as base on the one shared seed; one pair allows no test."


def test_verdict_at_the_thresholds_in_full_words():
    """Five seeds are enough to declare; the interval of the change's size is oriented like the
    verb; p_holm exactly at ALPHA is not significant."""
    row = {"arm": "a", "n": 5, "mean_diff": -0.2, "ci_low": -0.3, "ci_high": -0.1, "p_holm": 0.01, "n_better": 5}
    assert verdict(row, "final_gap", "base") == \
        "a shrank the final gap by 0.2 nats [0.1, 0.3], p_holm=0.01, better on 5/5 seeds."
    assert verdict({**row, "p_holm": 0.05}, "final_gap", "base") == \
        "a: no clear difference in the final gap (-0.2 nats [-0.3, -0.1], p_holm=0.05, better on 5/5 seeds)."
    assert verdict({**row, "n": 4, "n_better": 4}, "final_gap", "base").startswith("a: evidence is thin (4 paired")


def test_paired_at_its_edges():
    """No shared seed: nothing but n = 0. One seed: the difference alone. Every difference zero:
    no test, an even P(better). A zero difference is never a seed 'better' in either direction."""
    none = paired([np.nan, 1.0], [1.0, np.nan])
    assert (none.n, none.n_better) == (0, 0) and all(math.isnan(v) for v in (
        none.mean_diff, none.ci_low, none.ci_high, none.t_p, none.wilcoxon_p, none.p_better))
    one = paired([1.5], [1.0])
    assert (one.n, one.mean_diff, one.n_better) == (1, 0.5, 0) and math.isnan(one.ci_high)
    same = paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.p_better == 0.5 and math.isnan(same.t_p) and math.isnan(same.wilcoxon_p)
    assert paired([1.0, 3.0], [1.0, 2.0], lower_is_better=False).n_better == 1


def test_compare_and_holm_at_their_edges():
    """compare(): its columns in order, also when no arm is compared; a metric no run has, or
    text that is no number, compares nothing. holm(): adjusted values cap at 1."""
    columns = ["arm", "n", "mean_diff", "ci_low", "ci_high", "t_p", "wilcoxon_p", "p_holm", "p_better", "n_better"]
    runs = _runs(3, -0.2)
    assert list(compare(runs, ["baseline", "dropout=0.3"], "baseline", "final_gap").columns) == columns
    only_base = compare(runs[runs["arm"] == "baseline"], ["baseline"], "baseline", "final_gap")
    assert list(only_base.columns) == columns and only_base.empty
    assert compare(runs, ["baseline", "dropout=0.3"], "baseline", "wall_s")["n"].tolist() == [0]
    text = runs.assign(final_gap=runs["final_gap"].astype(object))
    text.loc[text["arm"] == "dropout=0.3", "final_gap"] = "n/a"
    assert compare(text, ["baseline", "dropout=0.3"], "baseline", "final_gap")["n"].tolist() == [0]
    assert holm([0.6, 0.8]).tolist() == [1.0, 1.0]


def test_no_clear_difference_shows_the_sign_of_the_change():
    row = {"arm": "a", "n": 5, "ci_low": -0.1, "ci_high": 0.5, "p_holm": 0.5, "n_better": 2}
    assert "(+0.2 nats [-0.1, 0.5]" in verdict({**row, "mean_diff": 0.2}, "final_gap", "base")
    assert "(0 nats [-0.1, 0.5]" in verdict({**row, "mean_diff": 0.0}, "final_gap", "base")
    assert "(-0.2 nats [-0.1, 0.5]" in verdict({**row, "mean_diff": -0.2}, "final_gap", "base")


@pytest.mark.parametrize(("metric", "shift", "expected"), [
    ("overfit_onset", 0.0, "a: evidence is thin (3 paired seeds, fewer than 5); no mean change in the overfitting "
                           "onset ([0, 0], p_holm=n/a, better on 0/3 seeds); no winner declared."),
    ("final_gap", 0.0, "a: evidence is thin (3 paired seeds, fewer than 5); no mean change in the final gap "
                       "([0, 0], p_holm=n/a, better on 0/3 seeds); no winner declared."),
    ("overfit_onset", 1.0, "a: evidence is thin (3 paired seeds, fewer than 5); it delayed the overfitting onset "
                           "by 1 [1, 1], p_holm=n/a, better on 3/3 seeds; no winner declared."),
])
def test_thin_evidence_words_no_change_and_a_change_of_exactly_one(metric, shift, expected):
    """No verb for a change of nothing; a later onset by exactly one epoch is still 'delayed'."""
    runs = pd.DataFrame([{"arm": arm, "seed": s, metric: 10.0 + s + (shift if arm == "a" else 0.0)}
                         for arm in ("base", "a") for s in range(3)])
    row = compare(runs, ["base", "a"], "base", metric).iloc[0]
    assert verdict(row, metric, "base") == expected


def test_mean_interval_of_one_arm_over_its_seeds():
    out = mean_interval([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)
    half = T_975_DF3 * sd / 2
    assert out == pytest.approx({"mean": 2.5, "std": sd, "n": 4.0, "ci_low": 2.5 - half, "ci_high": 2.5 + half},
                                abs=1e-8)
    one = mean_interval([3.0])
    assert (one["mean"], one["std"], one["n"]) == (3.0, 0.0, 1.0)
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert math.isnan(mean_interval([])["mean"]) and mean_interval([])["n"] == 0.0
