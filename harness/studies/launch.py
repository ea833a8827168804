"""Starting local worker processes and following a study's progress until they end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from harness.core.errors import UsageError
from harness.core.paths import project_root


def default_workers(cells: int) -> int:
    """One single-threaded worker per core, capped by the work available.

    benchmarks/workers.py measured it at 1.15x the cells/hour of one worker using every core
    (2 cores, idle); ablate run --workers overrides it.
    """
    return max(1, min(os.cpu_count() or 1, cells))


MAX_WORKERS_PER_GPU = 16
"""The default number of workers sharing one GPU (capped by the cores per GPU, see
workers_per_gpu). Measured 2026-11-30 on one H200 (16-core host), the demo's cell, processes
sharing the GPU: 1 -> 468 cells/h, 8 -> 2,824, 16 -> 3,802, 32 -> 4,021. A cell is
launch-bound (14 ms/step for a 330-step cell), so one process leaves the GPU mostly idle; 16
get 95% of 32's throughput with half the processes (memory, host cores)."""


def workers_per_gpu(gpus: int, cores: int | None = None) -> int:
    """Workers per GPU by default: MAX_WORKERS_PER_GPU, but no more than the host's cores per
    GPU, since a launch-bound worker keeps a core busy (16 on the measured 16-core, 1-GPU host)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(MAX_WORKERS_PER_GPU, cores // max(1, gpus)))


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES values: that variable's entries
    when it is set (a Slurm allocation, the user's own choice), else 0..N-1; empty without CUDA."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in listed.split(",")] if listed else [str(i) for i in range(count)]
    return ids[:count]


@dataclass(frozen=True)
class Placement:
    """Where `ablate run` and `ablate search` start their workers: --workers, --workers-per-gpu,
    --gpus (as given: None for every visible GPU, 'none', or positions such as '0,2')."""
    workers: int | None = None
    per_gpu: int | None = None
    gpus: str | None = None

    def devices(self, visible: list[str]) -> list[str]:
        """The GPUs the workers go on, picked from `visible` (visible_gpus()); empty for CPU
        workers. UsageError, before anything is written, for a choice this machine cannot meet."""
        if self.workers is not None and self.per_gpu is not None:
            raise UsageError("--workers and --workers-per-gpu both given; allowed: one of them "
                             "(--workers N spreads N workers over the GPUs)")
        if self.gpus == "none":
            if self.per_gpu is not None:
                raise UsageError("--workers-per-gpu with --gpus none: the workers use no GPU; drop one of them")
            return []
        if not visible and (self.gpus is not None or self.per_gpu is not None):
            option = "--gpus" if self.gpus is not None else "--workers-per-gpu"
            raise UsageError(f"{option}: no CUDA device is visible on this machine; allowed: leave it out "
                             f"(one CPU worker per core), or --gpus none")
        if self.gpus is None:
            return list(visible)
        picked = self.gpus.split(",")
        allowed = f"allowed: none, or a comma-separated list of 0-{len(visible) - 1} (this machine's {len(visible)} GPU(s))"
        if not all(p.strip().isdigit() and int(p) < len(visible) for p in picked):
            raise UsageError(f"--gpus {self.gpus!r}: not a GPU of this machine; {allowed}")
        if len(set(map(int, picked))) != len(picked):
            raise UsageError(f"--gpus {self.gpus!r}: a GPU is listed twice; {allowed}")
        return [visible[int(p)] for p in picked]

    def assign(self, todo: int, gpus: list[str]) -> list[str | None]:
        """Each worker's CUDA_VISIBLE_DEVICES, one entry per worker to start for `todo` trials:
        round-robin over `gpus` (--workers-per-gpu each, by default workers_per_gpu, capped by
        the work); without GPUs one per core as before (None: the variable is left as it is, ''
        hides the GPUs for --gpus none)."""
        if not gpus:
            return [("" if self.gpus == "none" else None)] * (self.workers or default_workers(todo))
        n = self.workers or max(1, min((self.per_gpu or workers_per_gpu(len(gpus))) * len(gpus), todo))
        return [gpus[i % len(gpus)] for i in range(n)]


def on_gpus(devices: list[str | None]) -> str:
    """' on GPU(s) 0,1 (8 workers each)' for the start message; '' for CPU workers."""
    gpus = sorted({d for d in devices if d}, key=devices.index)
    if not gpus:
        return ""
    counts = {devices.count(g) for g in gpus}
    each = f"{counts.pop()} worker(s) each" if len(counts) == 1 else "workers round-robin"
    return f" on GPU(s) {','.join(gpus)} ({each})"


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def layout(workers: int, configured: set[int | None]) -> str:
    """'N worker(s) x T thread(s)' as the runs will have it: a config's train.threads (in
    `configured`, None where unset) wins over the per-worker default."""
    default = threads_per_worker(workers)
    threads = sorted({default if t is None else t for t in configured} or {default})
    shown = str(threads[0]) if len(threads) == 1 else f"{threads[0]}-{threads[-1]}"
    return f"{workers} worker(s) x {shown} thread(s)"


def spawn_workers(study: str, storage_url: str, workers: int, threads: int,
                  log_dir: Path, devices: list[str | None] | None = None) -> list[subprocess.Popen]:
    """Start `workers` processes of `ablate worker`; their output goes to log_dir/worker-N.log.
    Worker i is pinned to GPU devices[i] (its CUDA_VISIBLE_DEVICES) where that is not None.

    The storage URL goes in their environment (STORAGE_ENV), not their command line: `ps` shows
    every process's arguments, with a PostgreSQL password, to every user of the machine, while a
    process's environment is readable only by its owner.
    """
    from harness.tracking.storage import STORAGE_ENV

    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ABLATE_HOME": str(project_root()), "OMP_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1", STORAGE_ENV: storage_url}
    procs = []
    for i in range(workers):
        log = open(log_dir / f"worker-{i}.log", "ab")
        device = devices[i] if devices else None
        pinned = env if device is None else {**env, "CUDA_VISIBLE_DEVICES": device}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "worker", "--study", study, "--threads", str(threads)],
            stdout=log, stderr=subprocess.STDOUT, env=pinned, cwd=project_root()))
        log.close()
    return procs


def follow(procs: list[subprocess.Popen], total: int, done: Callable[[], int], label: str,
           poll_s: float = 2.0, on_interrupt: Callable[[], object] | None = None) -> list[int]:
    """A progress bar over `done()` until every worker exits; returns their exit codes.

    Ctrl-C, SIGTERM or SIGHUP stops the workers, then calls `on_interrupt` (the drivers reap the stopped workers'
    trials there, so `ablate status` shows them failed at once, not running until the next run).
    """
    bar = tqdm(total=total, desc=label, unit="run", dynamic_ncols=True, disable=not sys.stderr.isatty())
    # SIGTERM (a scheduler, a container stop, `kill PID`) and SIGHUP (the terminal closed) stop the
    # study like Ctrl-C: without this the driver died and left its workers training on.
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        # Poll every worker each round (no short-circuit): polling reaps an exited worker, and
        # an unreaped one stays a zombie that its peers would take for alive.
        while [p.poll() for p in procs].count(None):
            time.sleep(poll_s)
            bar.n = done()
            bar.refresh()
        bar.n = done()
        bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        if on_interrupt is not None:
            on_interrupt()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        bar.close()
    return [p.returncode for p in procs]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
