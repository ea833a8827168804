"""How every number a study prints looks: values, intervals, paired changes and p-values.

One owner, so a report's tables, its verdict sentences, an arm run's description and the
confirmation step's printout write an interval or a p-value the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def number(x: float) -> str:
    """Three significant digits; whole numbers from 1000 on (wall times)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def interval(low: float, high: float, fmt: Callable[[float], str] = number) -> str:
    """'[low, high]', or '' when there is no interval (NaN bounds: fewer than two values)."""
    return "" if math.isnan(low) else f"[{fmt(low)}, {fmt(high)}]"


def signed(mean: float, low: float, high: float, unit: str = "") -> str:
    """'-0.041 nats [-0.060, -0.022]': a paired change with its interval (none when it has none)."""
    text = f"{mean:+.3g}{unit}"
    return text if math.isnan(low) else f"{text} {interval(low, high, lambda x: f'{x:+.3g}')}"


def p_value(p: float) -> str:
    """'0.03', '<0.001' or 'n/a'."""
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def p_text(p: float) -> str:
    """'=0.03', '<0.001' or '=n/a': what follows 'p_holm' in a verdict."""
    text = p_value(p)
    return text if text.startswith("<") else f"={text}"
