"""Cells per hour of a small ablation: 1 worker x 2 threads against 2 workers x 1 thread.

Each layout runs the same study (`ablate run` in a fresh temporary project, so nothing is
cached between them), alternating A/B `--repeats` times; the table gives the median wall time
and cells/hour of each, and the ratio. Run: python benchmarks/workers.py [--quick] [--repeats N --epochs N --seeds N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import OUT, median, table, write_json


def spec(epochs: int, seeds: int) -> dict:
    return {
        "name": "bench-workers",
        "base": {"data": {"train_chars": 20000, "block_size": 64},
                 "model": {"n_layer": 2, "n_head": 4, "n_embd": 128},
                 "train": {"epochs": epochs, "batch_size": 32, "eval_windows": 128},
                 "sample": {"count": 0}},
        "factors": {"model.dropout": [0.2]},
        "seeds": list(range(seeds)),
    }


def run_layout(workers: int, threads: int, study: dict) -> float:
    """Wall seconds of `ablate run` on a fresh project with this worker layout."""
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "bench.yaml"
        path.write_text(yaml.safe_dump(study))
        # OMP/MKL follow the worker's --threads; launch.py passes threads = cores // workers.
        env = {**os.environ, "ABLATE_HOME": home, "ABLATE_POLL_S": "0.5"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [sys.executable, "-m", "harness.cli", "run", str(path), "--workers", str(workers)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"ablate run failed ({workers}x{threads}):\n{proc.stdout}\n{proc.stderr}")
        return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12, help="epochs per cell (12: about 20 s on one core)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per arm (2 arms: 2 x seeds cells)")
    parser.add_argument("--out", type=Path, default=OUT / "workers.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    epochs, seeds, repeats = (1, 1, 1) if args.quick else (args.epochs, args.seeds, args.repeats)
    study = spec(epochs, seeds)
    cells = 2 * seeds
    layouts = {"1 worker x 2 threads": 1, "2 workers x 1 thread": 2}
    walls: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(repeats):
        for name, workers in layouts.items():  # interleaved A/B: the machine's noise hits both
            walls[name].append(run_layout(workers, max(1, cores // workers), study))
    rows = {name: {"median_wall_s": median(w), "cells_per_hour": cells * 3600 / median(w), "walls_s": w}
            for name, w in walls.items()}
    ratio = rows["2 workers x 1 thread"]["cells_per_hour"] / rows["1 worker x 2 threads"]["cells_per_hour"]
    print(f"{cells} cells ({epochs} epochs each), {repeats} repeat(s), {cores} cores")
    print(table(["layout", "median wall s", "cells/hour"],
                [[name, row["median_wall_s"], row["cells_per_hour"]] for name, row in rows.items()]))
    print(f"ratio (2x1 / 1x2): {ratio:.2f}")
    path = write_json("workers", {
        "quick": args.quick, "cells": cells, "epochs": epochs, "repeats": repeats, "cores": cores,
        "load_average_1min": os.getloadavg()[0], "layouts": rows, "ratio_2x1_over_1x2": ratio}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
