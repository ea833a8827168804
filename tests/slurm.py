"""A throwaway single-node Slurm cluster for tests: Debian's slurm-wlm and munge on 127.0.0.1.

Everything lives in one private folder (configuration, munge key and socket, state, logs), so
nothing of the machine's own /etc/slurm or /run/munge is touched: a munge daemon on its own
socket, slurmctld and slurmd as root, no cgroups (proctrack/linuxproc, task/none). Clients find
the cluster through SLURM_CONF.

`.ci/run` starts one (`python tests/slurm.py start $$`) and exports the slurm.conf it prints as
ABLATE_TEST_SLURM_CONF; the cluster
stops by itself when the process named exits (the CI script) (a watcher, so the CI script needs no
trap of its own). Without it the `slurm_cluster` fixture starts its own when the binaries are
installed and it runs as root, and the tests that need it skip otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CONF_ENV = "ABLATE_TEST_SLURM_CONF"
"""Set by .ci/run to the running cluster's slurm.conf; the fixture then uses that cluster."""

SLURM_CONF = """\
ClusterName=ablate-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def available() -> str | None:
    """Why no cluster can start here, or None when one can."""
    missing = [d for d in DAEMONS if not Path(d).exists()]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a private slurmd must run as root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """munged + slurmctld + slurmd in a private folder, the node idle when the constructor returns."""

    def __init__(self, cpus: int = 2) -> None:
        why = available()
        if why is not None:
            raise RuntimeError(why)
        self.dir = Path(tempfile.mkdtemp(prefix="ablate-slurm-", dir="/tmp"))
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir()
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.conf.write_text(SLURM_CONF.format(host=self.host, dir=self.dir, ctld_port=free_port(),
                                               slurmd_port=free_port(), cpus=cpus))
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        subprocess.run(["/usr/sbin/munged", "--force", f"--socket={self.dir}/munge.socket",
                        f"--key-file={key}", f"--pid-file={self.dir}/munged.pid",
                        f"--log-file={self.dir}/munged.log", f"--seed-file={self.dir}/munged.seed"],
                       check=True, capture_output=True, timeout=30)
        env = self.env()
        subprocess.run(["/usr/sbin/slurmctld", "-f", str(self.conf)], check=True, env=env, capture_output=True,
                       timeout=30)
        subprocess.run(["/usr/sbin/slurmd", "-f", str(self.conf), "-N", self.host], check=True, env=env,
                       capture_output=True, timeout=30)
        self.wait_idle()

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True, text=True)
            state = out.stdout.strip()
            if out.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node is not idle after {timeout:.0f} s (state {state!r}); "
                           f"see {self.dir}/slurmctld.log and slurmd.log")

    def stop(self) -> None:
        """Stop the daemons (slurmd first, so no job step is left behind) and remove the folder."""
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.dir / f"{name}.pid"
            try:
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            deadline = time.time() + 15
            while time.time() < deadline and alive(pid):
                time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def stop_when_gone(cluster: Cluster, pid: int) -> None:
    """In a detached child: wait until process `pid` exits, then stop the cluster."""
    if os.fork():
        return
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while alive(pid):
        time.sleep(1)
    cluster.stop()
    os._exit(0)


if __name__ == "__main__":
    # `python tests/slurm.py start PID` (CI): start a cluster that stops when process PID (the CI
    # script) exits, and print its slurm.conf (for CONF_ENV; Slurm's clients take it as SLURM_CONF).
    if len(sys.argv) != 3 or sys.argv[1] != "start" or not sys.argv[2].isdigit():
        sys.exit("usage: python tests/slurm.py start PID  (the cluster stops when process PID exits)")
    cluster = Cluster()
    stop_when_gone(cluster, int(sys.argv[2]))
    print(cluster.conf)
