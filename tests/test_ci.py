"""CI (.ci/run) stops the PostgreSQL server it started, also when the suite fails."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from postgres import server_bin

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.service
def test_ci_stops_its_postgresql_when_the_suite_fails(tmp_path):
    if server_bin() is None:
        pytest.skip("no PostgreSQL server: apt-get install postgresql")
    # .ci/run in a copy whose system installs are no-ops and whose `make test` fails; its venv is
    # this interpreter's.
    (tmp_path / ".ci").mkdir()
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    shutil.copy(REPO / "tests" / "postgres.py", tmp_path / "tests" / "postgres.py")
    # The Slurm cluster is not what this test checks (it stops itself when .ci/run exits).
    (tmp_path / "tests" / "slurm.py").write_text("print('/nonexistent/slurm.conf')\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, body in (("apt-get", "exit 0"), ("make", '[ "$1" = test ] && exit 3; exit 0')):
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 3, done.stderr  # the suite's failure is CI's
    url = next(line for line in done.stdout.splitlines() if line.startswith("PostgreSQL for tests: "))
    port = url.rsplit(":", 1)[1].split("/")[0]
    alive = subprocess.run(["pgrep", "-f", f"postgres.*-p {port}"], capture_output=True)
    assert alive.returncode == 1, f"a PostgreSQL server still runs on port {port}"
