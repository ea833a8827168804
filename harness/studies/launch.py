"""Starting local worker processes and following a study's progress until they end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from harness.core.paths import project_root


def default_workers(cells: int) -> int:
    """One single-threaded worker per core, capped by the work available.

    benchmarks/workers.py measured it at 1.15x the cells/hour of one worker using every core
    (2 cores, idle); ablate run --workers overrides it.
    """
    return max(1, min(os.cpu_count() or 1, cells))


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
                  log_dir: Path) -> list[subprocess.Popen]:
    """Start `workers` processes of `ablate worker`; their output goes to log_dir/worker-N.log.

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
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "worker", "--study", study, "--threads", str(threads)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=project_root()))
        log.close()
    return procs


def follow(procs: list[subprocess.Popen], total: int, done: Callable[[], int], label: str,
           poll_s: float = 2.0, on_interrupt: Callable[[], object] | None = None) -> list[int]:
    """A progress bar over `done()` until every worker exits; returns their exit codes.

    Ctrl-C stops the workers, then calls `on_interrupt` (the drivers reap the stopped workers'
    trials there, so `ablate status` shows them failed at once, not running until the next run).
    """
    bar = tqdm(total=total, desc=label, unit="run", dynamic_ncols=True, disable=not sys.stderr.isatty())
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
        bar.close()
    return [p.returncode for p in procs]
