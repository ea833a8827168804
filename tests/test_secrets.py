"""No storage password in a command line, an MLflow tag, a log or a message.

The PostgreSQL URL of a study carries a password. `ps` shows every process's arguments to every
user of the machine, MLflow tags are shown to everyone who can open the UI, and error messages
end up in terminals and CI logs; the password may reach none of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.studies.launch import spawn_workers
from harness.tracking.uris import redact

from postgres import free_port

SECRET = "s3cret-Pw"


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg2://user:{SECRET}@db.example:5432/optuna",
    f"postgresql://:{SECRET}@db.example/optuna",  # a password without a user
    f"postgresql+psycopg2://user@db.example/optuna?password={SECRET}&sslmode=require",
    f"postgresql+psycopg2://user@db.example/optuna?sslmode=require&PASSWORD={SECRET}",
    "postgresql+psycopg2://user:s3cret%40Pw@db.example/optuna",  # percent-encoded '@'
    f"http://user:{SECRET}@mlflow.example:5000",
])
def test_redact_hides_every_form_of_password(url: str) -> None:
    shown = redact(url)
    assert "s3cret" not in shown
    assert "db.example" in shown or "mlflow.example" in shown  # still says where


def test_redact_leaves_urls_without_a_password_alone() -> None:
    for url in ("journal:/srv/a@b/optuna.journal", "sqlite:///tmp/x.db",
                "postgresql+psycopg2://user@db.example:5432/optuna?sslmode=require"):
        assert redact(url) == url


def test_scrub_removes_the_password_from_a_driver_message() -> None:
    from harness.tracking.uris import scrub

    url = "postgresql+psycopg2://user:p%40ss@db.example/optuna"
    assert scrub("FATAL: password p@ss (p%40ss) rejected", url) == "FATAL: password *** (***) rejected"


def test_workers_get_the_storage_in_their_environment_not_their_command_line(project: Path) -> None:
    """Real worker processes on a storage URL with a password: their argv (what `ps` shows) has
    no password, yet the worker reached the storage it names (its log shows the URL, redacted)."""
    url = f"postgresql+psycopg2://user:{SECRET}@127.0.0.1:{free_port()}/optuna"
    procs = spawn_workers("some-study", url, 1, 1, project / "logs")
    try:
        argv = ""
        deadline = time.time() + 30
        while "worker" not in argv and time.time() < deadline:  # empty while the exec is under way
            argv = Path(f"/proc/{procs[0].pid}/cmdline").read_bytes().decode()
            time.sleep(0.01)
        assert "harness.cli\x00worker\x00--study\x00some-study" in argv  # what `ps` shows
        assert SECRET not in argv and "--storage" not in argv
        procs[0].wait(timeout=120)
    finally:
        for p in procs:
            p.kill()
    log = (project / "logs" / "worker-0.log").read_text()
    assert procs[0].returncode == 2
    assert "user:***@127.0.0.1" in log and "does not answer" in log
    assert SECRET not in log


def test_a_dead_storage_with_a_password_never_shows_it(project: Path, tiny: dict,
                                                       capsys: pytest.CaptureFixture) -> None:
    port = free_port()
    for url in (f"postgresql+psycopg2://user:{SECRET}@127.0.0.1:{port}/optuna",
                f"postgresql+psycopg2://user@127.0.0.1:{port}/optuna?password={SECRET}",
                f"postgresql://:{SECRET}@127.0.0.1:{port}/optuna"):
        assert main(["status", "x", "--storage", url]) == 2
        out, err = capsys.readouterr()
        assert SECRET not in out + err and "127.0.0.1" in err


@pytest.mark.service
def test_study_tags_and_output_carry_no_password(project: Path, tiny: dict, postgres_server,
                                                 capsys: pytest.CaptureFixture) -> None:
    """A study created on a real PostgreSQL server through URLs with a password (the test server
    trusts local connections, so any password is accepted): the harness.storage tag, every other
    tag and param of the study's runs, and everything printed hold no password."""
    from harness.studies.search import create_search
    from harness.studies.search_space import parse_search_spec
    from harness.studies.spec import parse_spec
    from harness.tracking.storage import open_storage
    from harness.studies.ablation import create_ablation
    from harness.tracking.store import init_store

    base_url = postgres_server("secrets")
    user_at, rest = base_url.split("://", 1)[1].split("@", 1)
    with_password = f"postgresql+psycopg2://{user_at}:{SECRET}@{rest}"
    in_query = f"postgresql+psycopg2://{user_at}@{rest}?password={SECRET}"
    base = {"data": {"corpus": tiny["data.corpus"]}}
    client = init_store()
    abl = parse_spec({"name": "secret-abl", "base": base, "factors": {"model.dropout": [0.2]}, "seeds": [0]})
    create_ablation(abl, open_storage(with_password), with_password, client)
    srch = parse_search_spec({"name": "secret-search", "base": base, "trials": 2,
                              "space": {"model.dropout": {"float": [0.0, 0.5]}}})
    create_search(srch, open_storage(in_query), in_query, client, 2, None)
    assert main(["status", "secret-abl", "--storage", with_password]) == 0
    assert main(["status", "secret-search", "--storage", in_query]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    for name in ("secret-abl", "secret-search"):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        assert runs and all(r.data.tags.get("harness.storage") for r in runs if
                            r.data.tags.get("harness.kind") == "study")
        for run in runs:
            text = yaml.safe_dump([run.data.tags, run.data.params])
            assert SECRET not in text


def test_ablate_run_argv_has_no_password(project: Path, tiny: dict) -> None:
    """Through the CLI: `ablate run --storage URL` is the user's own argv (their choice); what it
    starts, and what it prints for a dead server, carries no password. ABLATE_STORAGE keeps it
    off the user's command line too."""
    url = f"postgresql+psycopg2://user:{SECRET}@127.0.0.1:{free_port()}/optuna"
    spec = project / "spec.yaml"
    base: dict = {}
    for key, value in tiny.items():
        section, leaf = key.split(".")
        base.setdefault(section, {})[leaf] = value
    spec.write_text(yaml.safe_dump({"name": "s", "base": base, "factors": {"model.dropout": [0.2]}}))
    env = {**os.environ, "ABLATE_HOME": str(project), "ABLATE_STORAGE": url}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(spec)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "user:***@127.0.0.1" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (project / "mlruns").exists()
