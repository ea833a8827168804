"""Shared pieces of the benchmarks: machine description, interleaved timing, tables, JSON out.

The machine these run on is shared and noisy, so every comparison is A/B interleaved in one
process and summarised by medians; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine(threads: int | None = None) -> dict:
    import torch

    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": os.getloadavg(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def interleaved(candidates: dict[str, Callable[[], None]], rounds: int, calls: int,
                sync: Callable[[], None] = lambda: None) -> dict[str, dict[str, list[float]]]:
    """Time each candidate `calls` times per round, round-robin, `rounds` rounds.

    Returns per candidate the per-call wall seconds and process CPU seconds of every round. The
    order rotates each round so no candidate always runs right after the same neighbour.
    """
    names = list(candidates)
    out = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = candidates[name]
            sync()
            w, c = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            sync()
            out[name]["wall"].append((time.perf_counter() - w) / calls)
            out[name]["cpu"].append((time.process_time() - c) / calls)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: robust to the machine's load drifting between rounds."""
    return median([x / y for x, y in zip(a, b) if y > 0])


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return "-" if v is None else str(v)


def write_json(name: str, payload: dict, out: Path | None = None) -> Path:
    path = out or OUT / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
