"""Smoke tests of benchmarks/: each runs with --quick and writes the JSON its README promises.

Nothing here times anything: speed is measured by the benchmarks themselves (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
from statistics import median
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINYSHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def run_benchmark(name: str, out: Path, *extra: str, timeout: int = 300) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick",
                           "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout
    return json.loads(out.read_text())


def test_throughput_quick(tmp_path: Path) -> None:
    data = run_benchmark("throughput", tmp_path / "throughput.json", "--extra", "foreach-adamw")
    assert data["device"] == "cpu" and data["threads"] == 1
    assert data["peak_gflops"]["fp32"] > 0 and data["peak_gflops"]["bf16"] > 0
    rows = data["results"]
    assert {(r["model"], r["dropout"]) for r in rows} == {
        (model, dropout) for model in ("harness", "reference", "harness+foreach-adamw") for dropout in (0.0, 0.2)}
    for r in rows:
        assert r["shape"] == "baby-4x128" and (r["n_layer"], r["n_embd"], r["block_size"]) == (4, 128, 64)
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and 0 < r["mfu"] < 1
        assert r["vs_reference"] > 0 and r["vs_own_dropout0"] > 0 and r["flops_per_token"] > 0
    ref0 = next(r for r in rows if r["model"] == "reference" and r["dropout"] == 0.0)
    assert ref0["vs_reference"] == pytest.approx(1.0)
    assert data["machine"]["torch"] and data["machine"]["cores"] >= 1


@pytest.mark.slow
def test_tracking_overhead_quick(tmp_path: Path) -> None:
    data = run_benchmark("tracking_overhead", tmp_path / "overhead.json")
    assert data["evaluations"] >= 2 and data["train_s_untracked"] > 0
    assert data["goal_pct"] == 2.0
    assert {r["tracked"] for r in data["runs"]} == {True, False}
    # The summary is the stated statistic of the measured runs (medians; paired by round).
    on = sorted((r for r in data["runs"] if r["tracked"]), key=lambda r: r["pair"])
    off = sorted((r for r in data["runs"] if not r["tracked"]), key=lambda r: r["pair"])
    share = {k: median(r[f"{k}_s"] / r["train_s"] for r in on) * 100 for k in ("in_loop", "per_run")}
    assert data["in_loop_pct"] == pytest.approx(share["in_loop"]) and data["in_loop_pct"] > 0
    assert data["per_run_pct"] == pytest.approx(share["per_run"]) and data["per_run_pct"] > 0
    assert data["total_pct"] == pytest.approx(share["in_loop"] + share["per_run"])
    for key, field in (("train_wall_diff_pct", "train_s"), ("run_wall_diff_pct", "wall_s")):
        assert data[key] == pytest.approx((median(a[field] / b[field] for a, b in zip(on, off)) - 1) * 100)
    assert data["train_s_untracked"] == pytest.approx(median(r["train_s"] for r in off))
    tracked = on[0]
    assert tracked["calls_s"]["log_eval"] > 0 and tracked["calls_s"]["finish"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not TINYSHAKESPEARE.exists(), reason="no Tiny Shakespeare copy in ../shared/data")
def test_time_to_quality_quick(tmp_path: Path) -> None:
    data = run_benchmark("time_to_quality", tmp_path / "ttq.json")
    assert data["steps"] == 60 and data["target"] == 1.88
    for loop in ("harness", "reference"):
        s = data[loop]
        assert s["wall_s"] > 0 and s["cpu_s"] > 0 and s["final_val_loss"] < 4.0
        assert 0 < s["final_full_val_loss"] < 4.0
        assert s["evals"][-1]["step"] == 60 and s["evaluations"] == len(s["evals"])
    assert data["reference"]["evals"][0]["step"] == 0  # nanoGPT evaluates before training
    # The ratios and the verdict follow from the two loops' own measurements.
    h, ref = data["harness"], data["reference"]
    assert data["wall_ratio"] == pytest.approx(h["wall_s"] / ref["wall_s"])
    reach = [s["time_to_target_plus_tol_s"] or s["wall_s"] for s in (h, ref)]
    assert data["reach_tolerance_ratio"] == pytest.approx(reach[0] / reach[1])
    assert data["goal_met"] == (data["wall_ratio"] <= 0.8 and h["final_full_val_loss"] <= data["target"] + data["tolerance"])
    assert data["harness_config"]["train.eval_every"] == 20


@pytest.mark.slow
def test_workers_quick(tmp_path: Path) -> None:
    data = run_benchmark("workers", tmp_path / "workers.json")
    assert data["cells"] == 2 and data["repeats"] == 1
    layouts = data["layouts"]
    assert set(layouts) == {"1 worker x 2 threads", "2 workers x 1 thread"}
    assert all(len(row["walls_s"]) == 1 and row["walls_s"][0] > 0 for row in layouts.values())
    # Throughput is the cells over the measured wall time, and the ratio compares those walls.
    for row in layouts.values():
        assert row["cells_per_hour"] == pytest.approx(data["cells"] * 3600 / median(row["walls_s"]))
    assert data["ratio_2x1_over_1x2"] == pytest.approx(
        median(layouts["1 worker x 2 threads"]["walls_s"]) / median(layouts["2 workers x 1 thread"]["walls_s"]))


def test_report_scale_quick(tmp_path: Path) -> None:
    data = run_benchmark("report_scale", tmp_path / "scale.json")
    assert data["runs"] == 12 and data["arms"] == 3 and data["evals"] == 5
    assert data["build_report_best_s"] > 0 and data["read_histories_s"] >= 0


@pytest.mark.slow
def test_gpu_study_cpu_smoke(tmp_path: Path) -> None:
    """benchmarks/gpu_study.sh's Python part on CPU (the GPU run is a device check): it runs
    ablate run with the worker flags, reads the trials' times and the study's devices."""
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_study.sh"), "--cpu-smoke"], cwd=ROOT,
                          env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_study_smoke.json").read_text())
    assert data["quick"] and not data["gpu"] and data["goal_s"] == 300
    (row,) = data["sweep"]
    assert (row["workers"], row["cells"], row["done"]) == (1, 2, 2) and row["cells_per_h"] > row["cells_per_h_wall"] > 0
    study = data["study"]
    assert study["finished"] and study["done"] == study["cells"] == 2 and study["devices"] == ["cpu"]
