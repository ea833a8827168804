"""How long `ablate report` takes over a large study (goal: under 20 s for 1,000 runs).

Builds an MLflow store (sqlite + local artifacts, as docs/tracking.md lays it out) holding an
ablation of ARMS x SEEDS runs (or, with --kind search, an Optuna search of ARMS x SEEDS trials,
one arm each) with EVALS evaluations per run, written with one log_batch per run and a
history.json per run; then times build_report on it, a few of its phases, and what reading the
histories through the metric-history API would cost instead of history.json.

    python benchmarks/report_scale.py                        # 1,000 runs x 30 evaluations
    python benchmarks/report_scale.py --store /tmp/s         # keep the store, reuse it next time
    python benchmarks/report_scale.py --kind search          # 1,000 trials: 1,000 arms
    python benchmarks/report_scale.py --quick                # smoke run (seconds)

Prints a table; writes benchmarks/out/report_scale.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import OUT, ROOT, write_json

sys.path.insert(0, str(ROOT / "tests"))

from mlflow import MlflowClient  # noqa: E402
from report_fixtures import Store, make_ablation, make_search  # noqa: E402

from harness.report import build_report  # noqa: E402
from harness.report import collect  # noqa: E402

NAME = "scale"
API_SAMPLE = 20
"""Runs whose histories are also fetched through the API, to extrapolate that path's cost."""


def arms_for(n_arms: int) -> dict[str, dict]:
    """Baseline plus dropout / weight-decay / clip / scheduler variants (realistic params)."""
    variants: dict[str, dict] = {"baseline": {}}
    i = 0
    while len(variants) < n_arms:
        i += 1
        variants[f"dropout={0.05 * i:.2f}"] = {"model.dropout": round(0.05 * i, 2)}
        variants[f"weight_decay={0.01 * i:.2f}"] = {"optim.weight_decay": round(0.01 * i, 2)}
        variants[f"clip_norm={0.5 * i}"] = {"optim.clip_norm": 0.5 * i, "schedule": {"name": "cosine"}}
    return dict(list(variants.items())[:n_arms])


def build_store(root: Path, kind: str, arms: int, seeds: int, evals: int) -> tuple[Store, float]:
    store = Store(root)
    if store.client.get_experiment_by_name(NAME) is not None:
        return store, float("nan")
    start = time.perf_counter()
    if kind == "search":
        make_search(store, NAME, n_trials=arms * seeds, n_evals=evals)
    else:
        make_ablation(store, NAME, seeds=range(seeds), arms=arms_for(arms), broken=True, n_evals=evals)
    return store, time.perf_counter() - start


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def cpu_timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    """Wall and CPU seconds: CPU time barely moves when other processes load the machine."""
    cpu = time.process_time()
    out, wall = timed(fn, *args, **kwargs)
    return out, wall, time.process_time() - cpu


def api_history_seconds(store: Store, study: collect.StudyData, n_runs: int, metrics: int) -> float:
    """Seconds per run to fetch every per-evaluation metric's history through MlflowClient."""
    client = MlflowClient(tracking_uri=store.tracking_uri)
    runs = study.runs[study.runs["kind"] == "run"]["run_id"].head(n_runs)
    start = time.perf_counter()
    for run_id in runs:
        for key in ("train_loss", "train_eval_loss", "val_loss", "gap", "gap_ratio", "lr", "grad_norm",
                    "grad_norm_max", "clip_frac", "tokens_per_s", "epoch")[:metrics]:
            client.get_metric_history(run_id, key)
    return (time.perf_counter() - start) / max(len(runs), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 arms x 4 seeds x 5 evaluations")
    parser.add_argument("--kind", choices=("ablation", "search"), default="ablation")
    parser.add_argument("--arms", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--evals", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="timed build_report calls")
    parser.add_argument("--store", type=Path, help="store folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON results (default: benchmarks/out/report_scale[_search].json)")
    args = parser.parse_args()
    if args.quick:
        args.arms, args.seeds, args.evals, args.repeat = 3, 4, 5, 1

    root = args.store or Path(tempfile.mkdtemp(prefix="ablate-report-scale-"))
    store, write_s = build_store(root, args.kind, args.arms, args.seeds, args.evals)
    out = args.out or OUT / f"report_scale{'_search' if args.kind == 'search' else ''}.json"

    study, search_s = timed(collect.load_study, NAME, store.tracking_uri)
    finished = study.runs[(study.runs["kind"] == "run") & (study.runs["status"] == "FINISHED")]
    histories, history_s = timed(collect.load_histories, finished, store.tracking_uri)
    api_per_run = api_history_seconds(store, study, API_SAMPLE, 11)

    reports = root / "reports"
    totals, cpu = [], []
    load_before = os.getloadavg()[0]
    for i in range(args.repeat):
        result, seconds, cpu_s = cpu_timed(build_report, NAME, out_dir=reports / f"r{i}",
                                           tracking_uri=store.tracking_uri)
        totals.append(seconds)
        cpu.append(cpu_s)
    load = max(load_before, os.getloadavg()[0])
    n = len(finished)
    rows = [
        ("runs analysed (finished)", f"{result.n_runs}"),
        ("runs excluded", f"{result.n_excluded}"),
        ("arms", f"{len(result.arms)}"),
        ("evaluations per run", f"{args.evals}"),
        ("history rows", f"{len(histories)}"),
        ("write the store (s)", f"{write_s:.1f}" if write_s == write_s else "reused"),
        ("search runs: MlflowClient.search_runs (s)", f"{search_s:.2f}"),
        ("read history.json, all runs (s)", f"{history_s:.2f}"),
        (f"metric-history API, extrapolated to {n} runs (s)", f"{api_per_run * n:.1f}"),
        ("build_report, best of %d (s)" % args.repeat, f"{min(totals):.2f}"),
        ("build_report, each call (s)", ", ".join(f"{t:.2f}" for t in totals)),
        ("build_report CPU time, each call (s)", ", ".join(f"{t:.2f}" for t in cpu)),
        ("machine load average (1 min)", f"{load:.1f} on {os.cpu_count()} cores"),
        ("figures written", f"{len(result.figures)}"),
        ("index.html size (KiB)", f"{result.index_html.stat().st_size / 1024:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    kind = "an ablation" if args.kind == "ablation" else "a search"
    print(f"report of {kind} over {n} runs x {args.evals} evaluations "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("\n".join(f"  | {line}" for line in result.summary_lines))

    path = write_json("report_scale", {
        "kind": args.kind, "quick": args.quick, "runs": result.n_runs, "excluded": result.n_excluded, "arms": len(result.arms),
        "evals": args.evals,
        "write_store_s": write_s if write_s == write_s else None, "search_runs_s": search_s,
        "read_histories_s": history_s, "api_histories_extrapolated_s": api_per_run * n,
        "build_report_s": totals, "build_report_best_s": min(totals), "build_report_cpu_s": cpu,
        "load_average_1min": load, "goal_s": 20.0,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
    }, out)
    print(f"wrote {path}")
    if args.store:
        print(f"store in {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
