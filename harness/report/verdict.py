"""A comparison in words: one sentence per arm, plain text (escaping is the renderer's job).

Two kinds: `verdict` words a comparison on one metric (the report's secondary view, --metric);
`verdict_table` gives each arm its verdict on held-out loss and gap together, from a fixed
vocabulary (LABELS): a smaller gap alone is never called a win, since an arm that fits its
training text worse shrinks the gap too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from harness.core.metrics import COMPARABLE_METRICS
from harness.report.formatting import interval, number, p_text, signed
from harness.report.stats import compare

MIN_SEEDS = 5
"""Fewer paired seeds than this: the report gives the numbers but declares no winner."""
ALPHA = 0.05


def verdict(row: Mapping[str, Any], metric: str, baseline: str) -> str:
    """The sentence for one row of stats.compare.

    n = 0: not compared; n = 1: the difference, no test; 2 <= n < MIN_SEEDS: the numbers with
    "evidence is thin", no winner; otherwise a winner (or loser) when the Holm-adjusted
    t-test p is below ALPHA, else "no clear difference".
    """
    info = COMPARABLE_METRICS[metric]
    arm, n = row["arm"], int(row["n"])
    if n == 0:
        return f"{arm}: shares no seed with the baseline {baseline}; not compared."
    mean = row["mean_diff"]
    improved = (mean < 0) == info.lower_is_better and mean != 0
    verb = info.better if improved else info.worse
    unit = f" {info.unit}" if info.unit else ""
    size = f"{number(abs(mean))}{unit}"
    if n == 1:
        if mean == 0:
            return f"{arm}: same {info.noun} as {baseline} on the one shared seed; one pair allows no test."
        return (f"{arm} {verb} the {info.noun} by {size} on the one seed shared with {baseline}; "
                "one pair allows no test.")
    tail = (f", p_holm{p_text(row['p_holm'])}, "
            f"better on {int(row['n_better'])}/{n} seeds")
    # The interval of the change's size, oriented like the verb.
    lo, hi = sorted((math.copysign(1, mean) * row["ci_low"], math.copysign(1, mean) * row["ci_high"]))
    sized = f"by {size} {interval(lo, hi)}{tail}"
    if n < MIN_SEEDS:
        if mean == 0:  # no verb fits a change of nothing
            return (f"{arm}: evidence is thin ({n} paired seeds, fewer than {MIN_SEEDS}); no mean change "
                    f"in the {info.noun} ({interval(row['ci_low'], row['ci_high'])}{tail}); "
                    "no winner declared.")
        return (f"{arm}: evidence is thin ({n} paired seeds, fewer than {MIN_SEEDS}); "
                f"it {verb} the {info.noun} {sized}; no winner declared.")
    if row["p_holm"] < ALPHA:
        return f"{arm} {verb} the {info.noun} {sized}."
    signed = f"{'+' if mean > 0 else '-' if mean < 0 else ''}{size}"
    return (f"{arm}: no clear difference in the {info.noun} "
            f"({signed} {interval(row['ci_low'], row['ci_high'])}{tail}).")


# --- the two-axis verdict: held-out loss and gap together ---------------------------------------

HELDOUT = "test_loss"
"""The held-out axis: test loss at the evaluation validation chose. No decision saw that text."""
GAP = "test_gap"
"""The gap axis, on the same test text at the same evaluation."""

GENERALIZES = "generalizes-better"
UNDERFITS = "closes-gap-by-underfitting"
HURTS = "hurts"
UNCLEAR = "no-clear-effect"
FEW = "too-few-seeds"
LABELS = (GENERALIZES, UNDERFITS, HURTS, UNCLEAR, FEW)
"""The fixed vocabulary of verdicts.csv, most favourable first."""


def judge(loss: Mapping[str, Any], gap: Mapping[str, Any], failed: int = 0,
          ignore_failed: bool = False) -> str:
    """One arm's label from its paired comparisons on HELDOUT (`loss`) and GAP (`gap`).

    Under MIN_SEEDS pairs nothing is declared. Then, in order: held-out loss lower (Holm p <
    ALPHA) is `generalizes-better`, unless seeds of the arm failed and `ignore_failed` is off;
    a smaller gap (Holm p < ALPHA) without a lower held-out loss is `closes-gap-by-underfitting`
    (whether held-out loss rose or not: the gap closed because the arm fits its training text
    worse); a higher held-out loss is `hurts`; anything else `no-clear-effect`.
    """
    if int(loss["n"]) < MIN_SEEDS:
        return FEW
    lower, higher = _significant(loss, -1), _significant(loss, +1)
    if lower and (failed == 0 or ignore_failed):
        return GENERALIZES
    if _significant(gap, -1) and not lower:
        return UNDERFITS
    if higher:
        return HURTS
    return UNCLEAR


def _significant(row: Mapping[str, Any], direction: int) -> bool:
    p = row["p_holm"]
    return not math.isnan(p) and p < ALPHA and direction * row["mean_diff"] > 0


def _change(row: Mapping[str, Any], unit: str = " nats") -> str:
    """'-0.041 nats [-0.060, -0.022], p_holm=0.003, lower on 5/5 seeds' (as far as n allows)."""
    if int(row["n"]) == 0:
        return "not compared"
    text = signed(row["mean_diff"], row["ci_low"], row["ci_high"], unit)
    if not math.isnan(row["p_holm"]):
        text += f", p_holm{p_text(row['p_holm'])}"
    return text + f", lower on {int(row['n_better'])}/{int(row['n'])} seeds"


def sentence(arm: str, label: str, loss: Mapping[str, Any], gap: Mapping[str, Any], baseline: str,
             failed: int = 0, ignore_failed: bool = False) -> str:
    """The verdict in words: the label's meaning, then both paired changes with CI and Holm p."""
    n = int(loss["n"])
    both = f"held-out loss {_change(loss)}; gap {_change(gap)}"
    failures = ""
    if failed:
        failures = (f" {failed} seed(s) failed (diverged or crashed) and are not in these pairs"
                    + (" (--ignore-failed: judged on the finished seeds)." if ignore_failed else "."))
    if label == FEW:
        if n == 0:
            return f"{arm}: no seed shared with {baseline}; nothing to compare.{failures}"
        return (f"{arm}: too few seeds ({n} pair{'s' * (n != 1)} with {baseline}, fewer than {MIN_SEEDS}); "
                f"{both}; nothing declared.{failures}")
    if label == GENERALIZES:
        return f"{arm} generalizes better than {baseline}: {both}.{failures}"
    if label == UNDERFITS:
        return (f"{arm} closes the gap by underfitting: the gap shrank, but held-out loss is not lower "
                f"than {baseline}'s; {both}.{failures}")
    if label == HURTS:
        return f"{arm} hurts: held-out loss is higher than {baseline}'s; {both}.{failures}"
    held_back = ""
    if failed and _significant(loss, -1):
        held_back = (" Held-out loss is lower on the finished seeds, but an arm with failed seeds is not "
                     "declared better (ablate report --ignore-failed judges the finished seeds alone).")
    return f"{arm}: no clear effect against {baseline}; {both}.{held_back}{failures}"


VERDICT_COLUMNS = ["arm", "n", "failed", "verdict", "test_loss_diff", "test_loss_ci_low", "test_loss_ci_high",
                   "test_loss_p_holm", "test_gap_diff", "test_gap_ci_low", "test_gap_ci_high", "test_gap_p_holm",
                   "seeds_lower_loss", "seeds_smaller_gap", "sentence"]
"""verdicts.csv: one row per arm compared with the baseline (docs/report.md)."""


def verdict_table(runs: pd.DataFrame, order: list[str], baseline: str, failed: Mapping[str, int],
                  ignore_failed: bool = False) -> pd.DataFrame:
    """Every arm but the baseline, judged on HELDOUT and GAP paired by seed (VERDICT_COLUMNS).

    Each axis is Holm-adjusted across the arms on its own (two families of tests). `failed`
    counts, per arm, the seeds whose runs all FAILED: they are shown and hold back
    `generalizes-better` unless `ignore_failed`.
    """
    loss = compare(runs, order, baseline, HELDOUT).set_index("arm")
    gap = compare(runs, order, baseline, GAP).set_index("arm")
    rows = []
    for arm in loss.index:
        lo, ga, k = loss.loc[arm], gap.loc[arm], int(failed.get(arm, 0))
        label = judge(lo, ga, k, ignore_failed)
        rows.append({
            "arm": arm, "n": int(lo["n"]), "failed": k, "verdict": label,
            "test_loss_diff": lo["mean_diff"], "test_loss_ci_low": lo["ci_low"],
            "test_loss_ci_high": lo["ci_high"], "test_loss_p_holm": lo["p_holm"],
            "test_gap_diff": ga["mean_diff"], "test_gap_ci_low": ga["ci_low"],
            "test_gap_ci_high": ga["ci_high"], "test_gap_p_holm": ga["p_holm"],
            "seeds_lower_loss": int(lo["n_better"]), "seeds_smaller_gap": int(ga["n_better"]),
            "sentence": sentence(arm, label, lo, ga, baseline, k, ignore_failed),
        })
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)
