"""A throwaway PostgreSQL server for tests: Debian's binaries, a private cluster on 127.0.0.1.

`.ci/run` starts one and exports ABLATE_TEST_POSTGRES_URL; without it the fixture starts its own
when the server binaries are installed, and the tests that need it skip otherwise.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # The server refuses to run as root; CI and this project's machines run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Cluster:
    def __init__(self) -> None:
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="ablate-pg-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        data = self.dir / "data"
        self._run(["initdb", "-D", str(data), "--auth=trust", "-U", "ablate", "--no-sync"])
        self._run(["pg_ctl", "-D", str(data), "-l", str(self.dir / "server.log"), "-w", "-o",
                   f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off", "start"])
        self.data = data

    def _run(self, cmd: list[str]) -> None:
        cmd = [str(self.bindir / cmd[0]), *cmd[1:]]
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True, timeout=120)

    def create_database(self, name: str) -> str:
        self._run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "ablate", name])
        return f"postgresql+psycopg2://ablate@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        stop_cluster(self.dir)


def stop_cluster(folder: Path) -> None:
    """Stop the server of the cluster in `folder` (a Cluster's dir) and remove its files."""
    bindir = server_bin()
    if bindir is not None and (folder / "data" / "postmaster.pid").exists():
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"]),
                       check=True, capture_output=True, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    # `python tests/postgres.py` starts a server for CI and prints its admin URL and its folder;
    # `python tests/postgres.py stop FOLDER` stops it (.ci/run does, however the suite ends).
    if sys.argv[1:2] == ["stop"]:
        stop_cluster(Path(sys.argv[2]))
    else:
        cluster = Cluster()
        print(f"postgresql+psycopg2://ablate@127.0.0.1:{cluster.port}/postgres {cluster.dir}")
