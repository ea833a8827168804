"""`ablate ui`: the MLflow UI (and optionally optuna-dashboard) on this project's stores."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from harness.core.errors import UsageError
from harness.tracking.mlflow_ui import VIEW_TAG, experiment_url
from harness.tracking.store import init_store, tracking_uri
from harness.tracking.uris import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MAX_LINKS = 20
"""Experiments `ablate ui` prints a link for (the most recently updated)."""
DEFAULT_EXPERIMENT = "0"


def mlflow_ui_command(host: str, port: int) -> list[str]:
    """The stock command; the README shows the same with the default store spelled out.

    One server worker: a local UI has one reader, and each extra worker is a process that
    imports all of MLflow (seconds of CPU on a laptop).
    """
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]


def dashboard_command(host: str, port: int) -> list[str]:
    """optuna-dashboard, served by harness.dashboard (Host and Origin checked) with this Python.

    Found as a module of this interpreter, not as an `optuna-dashboard` script on PATH: an
    un-activated `.venv/bin/ablate` has the package but not its script on PATH. The storage goes
    in the environment (STORAGE_ENV), never in the command line.
    """
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise UsageError("--optuna needs optuna-dashboard: pip install 'ablate[dashboard]' "
                         "(or pip install optuna-dashboard)")
    return [sys.executable, "-m", "harness.dashboard", "--host", host, "--port", str(port)]


def experiment_links(client: MlflowClient, ui_url: str) -> str:
    """One line per experiment with the address that opens its runs table (a study's grouped by
    arm): the UI's own experiment links open MLflow 3's GenAI overview in a fresh browser."""
    lines = ["open a study's runs here (the UI's experiment list leads to its GenAI overview):"]
    for exp in client.search_experiments(order_by=["last_update_time DESC"], max_results=MAX_LINKS):
        if exp.experiment_id == DEFAULT_EXPERIMENT and not client.search_runs([exp.experiment_id], max_results=1):
            continue  # MLflow's own empty "Default"
        lines.append(f"  {exp.name}: {experiment_url(ui_url, exp.experiment_id, view=VIEW_TAG in exp.tags)}")
    return "\n".join(lines) if len(lines) > 1 else "no experiments yet"


def serve(host: str, port: int, optuna: bool = False, storage: str | None = None) -> int:
    """Run the UI(s) in the foreground until Ctrl-C."""
    from harness.tracking.storage import STORAGE_ENV, default_storage, open_storage

    env = dict(os.environ)
    commands = []
    if optuna:
        url = default_storage(storage)
        # A bad storage is one line here, not a traceback in the server's log; a journal named
        # with --storage must exist (only the project's own is created, for a fresh project).
        open_storage(url, create=storage is None)
        env[STORAGE_ENV] = url
        commands.append(dashboard_command(host, port + 1))
    client = init_store()  # a fresh project gets its database before the server opens it
    commands.insert(0, mlflow_ui_command(host, port))
    print(f"MLflow UI: http://{host}:{port}  (store {redact(tracking_uri())})", flush=True)
    print(experiment_links(client, f"http://{host}:{port}"), flush=True)
    if optuna:
        print(f"optuna-dashboard: http://{host}:{port + 1}", flush=True)
    # Each server in its own process group: the MLflow UI runs uvicorn children that must go
    # down with it, and SIGTERM (from a service manager or a test) stops us like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    procs = [subprocess.Popen(cmd, start_new_session=True, env=env) for cmd in commands]
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait()
