"""A comparison in words: one sentence per arm, plain text (escaping is the renderer's job)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from harness.report.stats import METRICS

MIN_SEEDS = 5
"""Fewer paired seeds than this: the report gives the numbers but declares no winner."""
ALPHA = 0.05


def number(x: float) -> str:
    """Three significant digits; whole numbers from 1000 on (wall times)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def p_text(p: float) -> str:
    """'=0.03', '<0.001' or '=n/a': what follows 'p_holm' in a verdict."""
    if math.isnan(p):
        return "=n/a"
    return "<0.001" if p < 0.001 else f"={p:.2g}"


def verdict(row: Mapping[str, Any], metric: str, baseline: str) -> str:
    """The sentence for one row of stats.compare.

    n = 0: not compared; n = 1: the difference, no test; 2 <= n < MIN_SEEDS: the numbers with
    "evidence is thin", no winner; otherwise a winner (or loser) when the Holm-adjusted
    t-test p is below ALPHA, else "no clear difference".
    """
    info = METRICS[metric]
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
    sized = f"by {size} [{number(lo)}, {number(hi)}]{tail}"
    if n < MIN_SEEDS:
        return (f"{arm}: evidence is thin ({n} paired seeds, fewer than {MIN_SEEDS}); "
                f"it {verb} the {info.noun} {sized}; no winner declared.")
    if row["p_holm"] < ALPHA:
        return f"{arm} {verb} the {info.noun} {sized}."
    signed = f"{'+' if mean > 0 else '-' if mean < 0 else ''}{size}"
    return (f"{arm}: no clear difference in the {info.noun} "
            f"({signed} [{number(row['ci_low'])}, {number(row['ci_high'])}]{tail}).")
