"""`ablate ui`: the MLflow UI on this project's store, checked through its REST API and in a
real browser."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from harness.cli import build_parser
from harness.core.config import build_config
from harness.tracking.run import run_tracked
from harness.tracking.store import init_store

from postgres import free_port


def test_ui_binds_loopback_by_default():
    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port) == ("127.0.0.1", 5000)
    from harness.ui import mlflow_ui_command
    cmd = mlflow_ui_command(args.host, args.port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_ui_optuna_without_the_dashboard_says_how_to_install(monkeypatch):
    import importlib.util

    from harness.core.errors import UsageError
    from harness.ui import dashboard_command

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna_dashboard" else real(name, *a))
    with pytest.raises(UsageError, match="pip install"):
        dashboard_command("127.0.0.1", 5001)


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
@pytest.mark.service
def test_ui_lists_the_study_and_its_runs(project, tiny):
    if not shutil.which("chromium"):
        pytest.skip("no chromium: apt-get install chromium")
    from browser import Browser

    client = init_store()
    run_ids = [run_tracked(build_config({}, {**tiny, "train.epochs": 1, "train.seed": s}), client, "ui-study",
                           run_name=f"ui-run-{s}").run_id for s in (0, 1)]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port)], cwd=project,
                              env={**os.environ, "ABLATE_HOME": str(project)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                exps = get_json(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError(server.stdout.read().decode() if server.poll() is not None else "no answer")
                time.sleep(1)
        exp = next(e for e in exps["experiments"] if e["name"] == "ui-study")
        found = get_json(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})
        assert sorted(r["info"]["run_id"] for r in found["runs"]) == sorted(run_ids)

        with Browser(timeout=60) as browser:
            browser.open(f"{base}/#/experiments/{exp['experiment_id']}/runs")
            deadline = time.time() + 60
            text = ""
            while time.time() < deadline and not all(f"ui-run-{s}" in text for s in (0, 1)):
                time.sleep(1)
                text = browser.evaluate("document.body.innerText")
            shot = browser.screenshot(project / "mlflow-ui.png")
            assert "ui-run-0" in text and "ui-run-1" in text, text[:2000]
            assert "ui-study" in text
            print(f"screenshot: {shot}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The UI's server processes (uvicorn, MLflow's job runners) go down with it.
    assert leftovers_after(project, 30) == []


def leftovers_after(project, wait_s: float) -> list[str]:
    """The processes of this test's store still alive after up to `wait_s` seconds."""
    deadline = time.time() + wait_s
    while time.time() < deadline and leftovers(project):
        time.sleep(1)
    return leftovers(project)


def leftovers(project) -> list[str]:
    """Processes whose command line names this test's store."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(project) in line and "pytest" not in line]
