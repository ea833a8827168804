"""Cells per hour of experiments/regularization.yaml's cell with N workers sharing one GPU, then
the whole study's wall time at the best N (the goal: under 5 minutes on one H200).

Each N runs `ablate run` of a small study of that cell (the base recipe and one dropout arm,
`--cells-per-worker` cells per worker) in a fresh temporary project, pinned to GPU 0 with
`--gpus 0 --workers-per-gpu N`. Cells/hour is counted over the trials' own times (first start
to last completion, as Optuna stored them: the workers' start-up excluded) and over the whole
command's wall time. Then the study itself runs at the best N, within what is left of
`--budget`; its runs' harness.device tags and `ablate status --cells` must name cuda:0.

  python benchmarks/gpu_study.py                    # on a CUDA machine (benchmarks/gpu_study.sh)
  python benchmarks/gpu_study.py --quick            # CPU smoke run (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import OUT, ROOT, machine, table, write_json
from harness.studies.spec import parse_spec

STUDY = ROOT / "experiments" / "regularization.yaml"
QUICK_BASE = {"data": {"train_chars": 3000, "block_size": 16}, "model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
              "train": {"epochs": 1, "batch_size": 16, "eval_windows": 16}, "sample": {"count": 0}}


def cell_spec(name: str, cells: int, device: str, quick: bool) -> dict:
    """A study of `cells` cells of the regularization study's recipe: its base and one dropout arm."""
    base = yaml.safe_load(STUDY.read_text())["base"]
    if quick:
        base = {section: {**base.get(section, {}), **QUICK_BASE.get(section, {})} for section in {*base, *QUICK_BASE}}
    base.setdefault("train", {})["device"] = device
    return {"name": name, "base": base, "factors": {"model.dropout": [0.1]}, "seeds": list(range(math.ceil(cells / 2)))}


def ablate(home: str, args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess | None]:
    """Wall seconds of `ablate ARGS` in project `home`, and the finished process (None: timed out)."""
    env = {**os.environ, "ABLATE_HOME": home, "ABLATE_POLL_S": "0.5"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("ABLATE_STORAGE", None)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=home, env=env, capture_output=True,
                              text=True, timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, None
    return time.perf_counter() - start, proc


def trial_window(home: str, name: str) -> tuple[int, float]:
    """(cells completed, seconds from the first trial's start to the last one's completion)."""
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(Path(home) / "mlruns" / "optuna.journal")))
    done = [t for t in optuna.load_study(study_name=name, storage=storage).trials
            if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return 0, float("nan")
    return len(done), (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()


def placement(workers: int, gpu: bool) -> list[str]:
    return ["--gpus", "0", "--workers-per-gpu", str(workers)] if gpu else ["--gpus", "none", "--workers", str(workers)]


def sweep(counts: list[int], per_worker: int, gpu: bool, quick: bool, deadline: float) -> list[dict]:
    rows = []
    for n in counts:
        cells = max(2, n * per_worker)
        with tempfile.TemporaryDirectory() as home:
            path = Path(home) / "cell.yaml"
            path.write_text(yaml.safe_dump(cell_spec("gpu-cell", cells, "cuda" if gpu else "cpu", quick)))
            wall, proc = ablate(home, ["run", str(path), *placement(n, gpu), "--yes"], deadline - time.time())
            if proc is not None and proc.returncode != 0:
                raise SystemExit(f"ablate run failed at {n} worker(s):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            done, window = trial_window(home, "gpu-cell")
        rows.append({"workers": n, "cells": cells, "done": done, "wall_s": round(wall, 1), "finished": proc is not None,
                     "cells_per_h": round(done / window * 3600) if done and window > 0 else None,
                     "cells_per_h_wall": round(done / wall * 3600) if done else None})
        print(f"{n} worker(s): {done}/{cells} cells, {wall:.0f} s, {rows[-1]['cells_per_h']} cells/h", flush=True)
        if proc is None:
            break
    return rows


def full_study(best: int, gpu: bool, quick: bool, deadline: float) -> dict:
    """The regularization study (its quick recipe with --quick) at `best` workers, until `deadline`."""
    with tempfile.TemporaryDirectory() as home:
        raw = yaml.safe_load(STUDY.read_text())
        if quick:  # the smoke run: the study's first factor alone, one seed, tiny cells
            first = next(iter(raw["factors"]))
            raw = {**raw, "base": cell_spec("x", 2, "cpu", True)["base"], "seeds": [0],
                   "factors": {first: raw["factors"][first][:1]}, "arms": []}
        elif gpu:
            raw["base"].setdefault("train", {})["device"] = "cuda"
        path = Path(home) / "regularization.yaml"
        path.write_text(yaml.safe_dump(raw))
        wall, proc = ablate(home, ["run", str(path), *placement(best, gpu), "--yes"], deadline - time.time())
        done, window = trial_window(home, raw["name"])
        status = ablate(home, ["status", raw["name"], "--cells"], 60)[1]
        devices = sorted({line.split()[-1] for line in (status.stdout if status else "").splitlines()
                          if "/seed=" in line and line.split()[1] == "done"})
    return {"workers": best, "cells": len(parse_spec(raw, allow_large=True).cells), "done": done, "wall_s": round(wall, 1),
            "finished": proc is not None and proc.returncode == 0, "window_s": round(window, 1),
            "devices": devices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: tiny cells, 1 worker, 2 cells of the study")
    parser.add_argument("--workers", default="1,4,8,16,32", help="worker counts to measure (default 1,4,8,16,32)")
    parser.add_argument("--cells-per-worker", type=int, default=2)
    parser.add_argument("--budget", type=float, default=520, help="seconds for everything (default 520)")
    parser.add_argument("--out", type=Path, default=OUT / "gpu_study.json")
    args = parser.parse_args()
    deadline = time.time() + args.budget
    import torch

    gpu = torch.cuda.is_available() and not args.quick
    counts = [1] if args.quick else [int(n) for n in args.workers.split(",")]
    rows = sweep(counts, args.cells_per_worker, gpu, args.quick, deadline - (0 if args.quick else 180))
    rated = [r for r in rows if r["cells_per_h"]]
    best = max(rated, key=lambda r: r["cells_per_h"])["workers"] if rated else counts[0]
    study = full_study(best, gpu, args.quick, deadline)
    columns = ["workers", "cells", "done", "wall_s", "cells_per_h", "cells_per_h_wall"]
    print(table(columns, [[r[c] for c in columns] for r in rows]))
    print(f"study {STUDY.name} at {best} worker(s): {study['done']}/{study['cells']} cells in {study['wall_s']} s "
          f"({'finished' if study['finished'] else 'NOT finished within the budget'}); devices {study['devices']}")
    path = write_json("gpu_study", {"machine": machine(), "gpu": gpu, "quick": args.quick, "sweep": rows,
                                    "best_workers": best, "study": study, "goal_s": 300}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
