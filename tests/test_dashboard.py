"""`ablate ui --optuna`: optuna-dashboard behind Host and Origin checks (DNS rebinding), found as a
module of this Python rather than a script on PATH.

The server is the real one (harness.dashboard in a subprocess, on a real journal); requests are
forged with the headers a rebinding attack or a foreign page would send.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from harness.tracking.storage import open_storage

from postgres import free_port


def request(port: int, method: str, path: str, host: str, origin: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host}
    if origin:
        headers["Origin"] = origin
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


@pytest.fixture
def dashboard(project: Path):
    """A dashboard on a journal with studies 'keep' and 'gone'; yields (port, journal url)."""
    url = f"journal:{project / 'mlruns' / 'optuna.journal'}"
    storage = open_storage(url)
    for name in ("keep", "gone"):
        optuna.create_study(study_name=name, storage=storage)
    port = free_port()
    # PATH without this environment's bin/: the dashboard must not need its script on PATH.
    env = {**os.environ, "ABLATE_STORAGE": url, "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen([sys.executable, "-m", "harness.dashboard", "--port", str(port)], cwd=project,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while True:
        try:
            if request(port, "GET", "/api/studies", f"127.0.0.1:{port}")[0] == 200:
                break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise AssertionError(server.stdout.read().decode())
        time.sleep(0.5)
    try:
        yield port, url
    finally:
        server.terminate()
        server.wait(timeout=30)


def study_names(url: str) -> set[str]:
    return {s.study_name for s in optuna.get_all_study_summaries(open_storage(url))}


def study_id(port: int, name: str) -> int:
    status, body = request(port, "GET", "/api/studies", f"127.0.0.1:{port}")
    assert status == 200
    return next(s["study_id"] for s in json.loads(body)["study_summaries"] if s["study_name"] == name)


@pytest.mark.service
def test_forged_host_or_origin_is_refused_and_the_study_survives(dashboard) -> None:
    port, url = dashboard
    keep = study_id(port, "keep")
    # DNS rebinding: the page's own name now points at 127.0.0.1, so the browser sends its Host.
    assert request(port, "GET", "/api/studies", "evil.example")[0] == 403
    assert request(port, "DELETE", f"/api/studies/{keep}", "evil.example")[0] == 403
    assert request(port, "DELETE", f"/api/studies/{keep}", f"evil.example:{port}")[0] == 403
    # A foreign page posting to the real address: the Host is right, the Origin is not.
    assert request(port, "DELETE", f"/api/studies/{keep}", f"127.0.0.1:{port}",
                   origin="http://evil.example")[0] == 403
    assert "keep" in study_names(url)


@pytest.mark.service
def test_loopback_requests_still_work(dashboard) -> None:
    port, url = dashboard
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert request(port, "GET", "/api/studies", host)[0] == 200
    gone = study_id(port, "gone")
    status, _ = request(port, "DELETE", f"/api/studies/{gone}", f"localhost:{port}",
                        origin=f"http://localhost:{port}")
    assert status == 204
    assert study_names(url) == {"keep"}


def test_dashboard_command_needs_no_script_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.ui import dashboard_command

    monkeypatch.setenv("PATH", "/nonexistent")
    cmd = dashboard_command("127.0.0.1", 5001)
    assert cmd[:3] == [sys.executable, "-m", "harness.dashboard"]
    assert not any("journal" in part or "postgresql" in part for part in cmd)  # storage not in argv


def test_allowed_hosts_are_loopback_and_the_bound_address() -> None:
    from harness.dashboard import allowed_hosts

    hosts = allowed_hosts("10.1.2.3", 5001)
    assert {"localhost", "127.0.0.1", "[::1]", "10.1.2.3", "10.1.2.3:5001", "localhost:5001"} <= set(hosts)
    assert not any("*" in h for h in hosts)
    assert "10.1.2.3" not in allowed_hosts("127.0.0.1", 5001)
