"""Is the worker that holds a RUNNING trial still alive?

The journal storage has no heartbeat of its own, and a worker killed with SIGKILL leaves its
trial RUNNING forever. Each worker therefore records on its trial who it is (host, pid, process
start time) and beats a heartbeat (a timestamp) every few seconds. A trial is dead when its
worker ran on this host and that process is gone (known at once), or when its heartbeat is older
than the grace period (any host: the PostgreSQL case).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import optuna
import psutil

from harness.studies import _optuna

HEARTBEAT_S = float(os.environ.get("ABLATE_HEARTBEAT_S", "10"))
GRACE_S = float(os.environ.get("ABLATE_GRACE_S", "60"))
ATTR = "harness.worker"


def process_start(pid: int) -> str | None:
    """The process's creation time (tells a reused pid from the original), or None when the
    process is gone or a zombie (dead, not yet reaped). psutil reads it on every platform
    (Linux's /proc, macOS's and the BSDs' sysctl, Windows' API)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{proc.create_time():.3f}"
    except psutil.Error:  # gone, or not ours to inspect (another user's pid reused: not our worker)
        return None


@dataclass(frozen=True)
class WorkerId:
    host: str
    pid: int
    start: str | None

    @classmethod
    def me(cls) -> "WorkerId":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid))

    def as_attr(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "start": self.start}


def is_dead(trial: optuna.trial.FrozenTrial, now: float | None = None) -> str | None:
    """Why the RUNNING `trial` is dead, or None while its worker may still be working on it."""
    now = time.time() if now is None else now
    who = trial.system_attrs.get(ATTR)
    beat = trial.system_attrs.get("harness.heartbeat")
    if who and who["host"] == socket.gethostname():
        start = process_start(who["pid"])
        if start is None or (who["start"] is not None and start != who["start"]):
            return f"worker pid {who['pid']} on {who['host']} is gone"
        return None
    last = beat if beat is not None else (trial.datetime_start.timestamp() if trial.datetime_start else now)
    if now - last > GRACE_S:
        where = f" on {who['host']}" if who else ""
        return f"no heartbeat{where} for {now - last:.0f} s (grace {GRACE_S:.0f} s)"
    return None


class Heartbeat:
    """Claims a trial for this process and beats its heartbeat until stopped."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.storage = _optuna.storage(study)
        self.trial_id = trial_id
        self._stop = threading.Event()
        self.storage.set_trial_system_attr(trial_id, ATTR, WorkerId.me().as_attr())
        self._beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, "harness.heartbeat", time.time())

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception:  # finished (reaped) trial or a storage hiccup: stop beating
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
