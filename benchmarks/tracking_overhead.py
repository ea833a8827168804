"""What MLflow tracking costs a training run, as a percentage of its training wall time.

The same short run (same config, seed and pre-loaded dataset) is trained untracked
(harness.core.train.train) and tracked (harness.tracking.run.run_tracked into a temporary SQLite store:
ABLATE_HOME and MLFLOW_TRACKING_URI point into a temp folder), alternating off/on. Reported:

- in-loop tracking time: the seconds spent inside the tracker's calls made from the training
  loop (one log_batch per evaluation, handed to the run's logging thread), measured directly
  by wrapping them;
- the CPU time of the background thread that writes those metrics to the store: it runs beside
  training (on another core, but holding the GIL part of the time), an upper bound of what it
  can take from the training thread;
- per-run tracking time: everything else the tracked run does outside training (create the
  run, log params and config, wait for the metrics, summary, history.json, learning-curve
  figure, samples, close the run), also measured directly;
- the difference of medians of the wall times (tracked - untracked), for comparison: it
  carries the machine's noise, so it can come out negative.

    python benchmarks/tracking_overhead.py            # 3 pairs of ~20 s runs
    python benchmarks/tracking_overhead.py --quick    # smoke run

Prints a table; writes benchmarks/out/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

from _common import OUT, machine, median, paired_ratio, table, write_json

IN_LOOP = ("log_eval",)
PER_RUN = ("start", "log_config", "log_summary", "log_figure", "log_text", "finish")


def instrument(cls: type, names: tuple[str, ...], spent: dict[str, float]) -> None:
    """Wrap cls.<name> to add its wall seconds to spent[name] (only the outermost call counts)."""
    depth = [0]
    for name in names:
        raw = cls.__dict__[name]
        fn = raw.__func__ if isinstance(raw, classmethod) else raw

        @functools.wraps(fn)
        def timed(*args, _fn=fn, _name=name, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start

        setattr(cls, name, classmethod(timed) if isinstance(raw, classmethod) else timed)


def instrument_store(spent: dict[str, float]) -> None:
    """Time the store's log_batch calls made off the main thread (the queued evaluation metrics):
    they hold the GIL part of the time, which is what they can cost the training thread."""
    import threading

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    raw = SqlAlchemyStore.log_batch

    @functools.wraps(raw)
    def timed(self, *args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return raw(self, *args, **kwargs)
        finally:
            if threading.current_thread() is not threading.main_thread():
                spent["background"] = spent.get("background", 0.0) + time.perf_counter() - start
                spent["background_cpu"] = spent.get("background_cpu", 0.0) + time.thread_time() - cpu

    SqlAlchemyStore.log_batch = timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one pair of tiny runs")
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT / "tracking_overhead.json")
    args = parser.parse_args()

    store = Path(tempfile.mkdtemp(prefix="ablate-overhead-"))
    os.environ["ABLATE_HOME"] = str(store)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"

    from harness.core.config import build_config
    from harness.tracking.run import preflight, run_tracked
    from harness.tracking.store import RunTracker, init_store
    from harness.core.train import prepare_data, train

    # The default recipe (the demo's model size), evaluating often so tracking has work to do.
    overrides = {"train.threads": args.threads, "train.epochs": 3, "train.eval_every": 5,
                 "train.eval_windows": 128, "data.train_chars": 50_000}
    if args.quick:
        overrides.update({"train.epochs": 1, "data.train_chars": 20_000, "train.eval_every": 5,
                          "train.eval_windows": 64, "model.n_layer": 1, "sample.chars": 20})
    pairs = 1 if args.quick else args.pairs
    cfg = build_config({}, overrides)
    data = prepare_data(cfg)
    prepared = preflight(cfg, data)  # checked once, outside the timed pairs
    spent: dict[str, float] = {}
    instrument_store(spent)
    client = init_store()
    instrument(RunTracker, IN_LOOP + PER_RUN, spent)

    run_tracked(cfg, client, "overhead-warmup", prepared=prepared)  # imports, experiment, DB warm
    rows = []
    for i in range(pairs):
        for tracked in (False, True) if i % 2 == 0 else (True, False):
            spent.clear()
            start = time.perf_counter()
            if tracked:
                result = run_tracked(cfg, client, "overhead", prepared=prepared).result
            else:
                result = train(cfg, dataset=data, init_state=prepared.init_state)
            wall = time.perf_counter() - start
            rows.append({"pair": i, "tracked": tracked, "wall_s": wall, "train_s": result.summary.wall_s,
                         "evaluations": len(result.history),
                         "in_loop_s": sum(spent.get(n, 0.0) for n in IN_LOOP),
                         "per_run_s": sum(spent.get(n, 0.0) for n in PER_RUN),
                         "background_s": spent.get("background", 0.0),
                         "background_cpu_s": spent.get("background_cpu", 0.0),
                         "calls_s": dict(spent)})

    on = [r for r in sorted(rows, key=lambda r: r["pair"]) if r["tracked"]]
    off = [r for r in sorted(rows, key=lambda r: r["pair"]) if not r["tracked"]]
    train_off = median([r["train_s"] for r in off])
    in_loop = median([r["in_loop_s"] / r["train_s"] for r in on]) * 100
    per_run = median([r["per_run_s"] / r["train_s"] for r in on]) * 100
    background = median([r["background_cpu_s"] / r["train_s"] for r in on]) * 100
    loop_diff = (paired_ratio([r["train_s"] for r in on], [r["train_s"] for r in off]) - 1) * 100
    wall_diff = (paired_ratio([r["wall_s"] for r in on], [r["wall_s"] for r in off]) - 1) * 100
    evals = on[0]["evaluations"]
    per_eval_ms = median([r["in_loop_s"] / r["evaluations"] for r in on]) * 1e3

    info = machine(args.threads)
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, threads {args.threads}; "
          f"load average {info['load_avg'][0]:.1f}")
    print(f"run: {cfg.model.n_layer} layers x {cfg.model.n_embd}, {evals} evaluations, "
          f"training {train_off:.1f} s untracked (median of {pairs})\n")
    print(table(["measure", "value"], [
        ["in-loop tracking (log_eval), % of training", in_loop],
        ["in-loop tracking per evaluation (ms)", per_eval_ms],
        ["background logging thread CPU, % of training", background],
        ["per-run tracking (setup + close), % of training", per_run],
        ["in-loop + per-run, % of training", in_loop + per_run],
        ["training wall, tracked vs not (paired, %)", loop_diff],
        ["whole run wall, tracked vs not (paired, %)", wall_diff],
    ]))
    calls = {k: median([r["calls_s"].get(k, 0.0) for r in on]) for k in IN_LOOP + PER_RUN}
    print("\nper-run calls (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in calls.items()))
    path = write_json("tracking_overhead", {
        "machine": info, "threads": args.threads, "quick": args.quick,
        "config": cfg.flat(),
        "evaluations": evals, "train_s_untracked": train_off,
        "in_loop_pct": in_loop, "in_loop_per_eval_ms": per_eval_ms, "per_run_pct": per_run,
        "total_pct": in_loop + per_run, "background_cpu_pct": background, "train_wall_diff_pct": loop_diff, "run_wall_diff_pct": wall_diff,
        "per_call_s": calls, "goal_pct": 2.0, "runs": rows,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
