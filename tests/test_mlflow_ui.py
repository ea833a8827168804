"""What a study looks like in MLflow: study -> arm -> seed runs, arm runs that fill the same columns,
a rerun with nothing to do that writes nothing, and deep links that open the MLflow 3 UI on the
study's runs (checked in headless Chromium against the real `ablate ui` server)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.tracking.mlflow_ui import VIEW_TAG, ablation_view, experiment_url, run_url
from harness.tracking.storage import default_storage, load_study

from postgres import free_port
from test_ablation import write_spec
from test_ui import get_json, leftovers_after

def test_links_open_the_model_training_view_and_the_study_view():
    assert experiment_url("http://h:1/", "7") == \
        "http://h:1/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=ablate"
    assert experiment_url("http://h:1", "7", view=False) == "http://h:1/#/experiments/7/runs?workflowType=machine_learning"
    assert run_url("http://h:1", "7", "abc") == "http://h:1/#/experiments/7/runs/abc?workflowType=machine_learning"
    view = ablation_view(["test_loss", "test_gap"], ["model.dropout"])
    assert view["selectedColumns"] == ["metrics.`test_loss`", "metrics.`test_gap`", "params.`model.dropout`"]
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "harness.arm"}]
    assert view["searchFilter"] == "tags.`harness.kind` = 'run'"


def test_a_search_opens_on_its_trials_best_first(project, tiny):
    from harness.studies.search import create_search
    from harness.studies.search_space import load_search_spec
    from harness.tracking.storage import open_storage
    from harness.tracking.store import init_store
    from test_search import write_search

    spec = load_search_spec(str(write_search(project, tiny)))
    client, url = init_store(), default_storage()
    create_search(spec, open_storage(url), url, client, 8, None)
    view = json.loads(client.get_experiment_by_name("tiny").tags[VIEW_TAG])
    assert view["orderByKey"] == "metrics.`best_val_loss`" and view["orderByAsc"] is True
    assert view["searchFilter"] == "tags.`harness.kind` = 'run'"  # trial runs, not the study's
    assert view["selectedColumns"][:3] == ["metrics.`best_val_loss`", "metrics.`test_loss`", "metrics.`test_gap`"]
    assert {f"params.`{p.path}`" for p in spec.space} <= set(view["selectedColumns"])


def snapshot(project: Path) -> tuple[str, bytes]:
    """The MLflow database's bytes digest and the Optuna journal's content."""
    db = hashlib.sha256((project / "mlruns" / "mlflow.db").read_bytes()).hexdigest()
    return db, (project / "mlruns" / "optuna.journal").read_bytes()


@pytest.mark.slow
def test_arms_nest_their_seeds_fill_the_runs_columns_and_a_rerun_writes_nothing(project, tiny, capsys):
    path = write_spec(project, tiny)
    assert main(["run", str(path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    study = load_study("tiny", default_storage())
    meta = study.user_attrs["harness"]
    # optuna-dashboard names the objective; each trial carries its cell.
    assert study.metric_names == ["best_val_loss of one cell (arm x seed)"]
    assert {(t.user_attrs["arm"], t.user_attrs["seed"]) for t in study.trials} == \
        {(a, s) for a in ("baseline", "dropout=0.2") for s in (0, 1)}
    client = MlflowClient(mlflow.get_tracking_uri())
    exp = client.get_experiment_by_name("tiny")
    assert experiment_url("http://127.0.0.1:5000", exp.experiment_id) in out  # the link it prints

    runs = client.search_runs([exp.experiment_id])
    seeds = [r for r in runs if r.data.tags["harness.kind"] == "run"]
    arms = {r.data.tags["harness.arm"]: r for r in runs if r.data.tags["harness.kind"] == "arm-summary"}
    assert set(arms) == {"baseline", "dropout=0.2"}
    for label, arm in arms.items():
        assert arm.info.run_id == meta["arm_runs"][label]
        assert arm.data.tags["mlflow.parentRunId"] == meta["parent_run_id"]
        own = [r for r in seeds if r.data.tags["harness.arm"] == label]
        assert {r.data.tags["mlflow.parentRunId"] for r in own} == {arm.info.run_id}
        # The mean under the runs' own metric names, so the same columns fill; no *_mean names.
        for name in ("test_loss", "test_gap", "best_val_loss", "gap_at_best", "final_gap"):
            assert arm.data.metrics[name] == pytest.approx(sum(r.data.metrics[name] for r in own) / len(own))
        assert arm.data.metrics["n_seeds"] == 2 and not [m for m in arm.data.metrics if m.endswith("_mean")]
        # The arm's recipe as params: every key of its seed runs but the seed.
        assert set(arm.data.params) == set(own[0].data.params) - {"train.seed"}
        assert arm.data.params["model.dropout"] == own[0].data.params["model.dropout"]
        assert "| test_loss |" in arm.data.tags["mlflow.note.content"]
    assert "model.dropout=0.2" in arms["dropout=0.2"].data.tags["mlflow.note.content"]
    assert "params.`model.dropout`" in exp.tags[VIEW_TAG]  # the differing param is a column of the view

    before = snapshot(project)
    assert main(["run", str(path)]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert snapshot(project) == before  # not a metric, tag, status or end time more

    # A grown spec's dry run: the cells already done, an estimate from them, nothing written.
    grown = write_spec(project, tiny, seeds=(0, 1, 2))
    assert main(["run", str(grown), "--dry-run", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 of 6 cells already done; 2 to run" in out
    assert "  baseline: seeds 0,1 done" in out and "  dropout=0.2: seeds 0,1 done" in out
    assert "from 4 finished cell(s) of this study" in out and "with 1 worker(s)" in out
    assert snapshot(project) == before


@pytest.mark.slow
@pytest.mark.service
def test_the_printed_link_opens_the_study_runs_grouped_by_arm_in_chromium(project, tiny, capsys):
    if not shutil.which("chromium"):
        pytest.skip("no chromium: apt-get install chromium")
    path = write_spec(project, tiny)
    assert main(["run", str(path), "--workers", "2"]) == 0
    capsys.readouterr()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--port", str(port)], cwd=project,
                              env={**os.environ, "ABLATE_HOME": str(project)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        printed = wait_for_ui(server, base)
        exp = MlflowClient(mlflow.get_tracking_uri()).get_experiment_by_name("tiny")
        link = experiment_url(base, exp.experiment_id)
        assert f"tiny: {link}" in printed, printed

        # Without ablate's parameters a fresh browser lands on the GenAI overview: the reason the
        # links exist (if MLflow ever changes this, this part says so).
        plain = project / "mlflow-plain-link.png"
        text = page_text(f"{base}/#/experiments/{exp.experiment_id}", plain, "Token Usage")
        assert "Token Usage" in text

        seeds = [f"{arm} seed={s}" for arm in ("baseline", "dropout=0.2") for s in (0, 1)]
        shot = project / "mlflow-study-link.png"
        text = page_text(link, shot, *seeds)
        print(f"screenshots: {shot}, {plain}")
        assert all(s in text for s in seeds), text[:3000]
        assert "Group: baseline" in text and "Group: dropout=0.2" in text  # rows of arm means
        for column in ("test_loss", "test_gap", "best_val_loss", "model.dropout"):
            assert column in text
        assert "Token Usage" not in text and "Latency" not in text
        # The model-training view, not the GenAI one showing a runs tab (its nav: Judges, Sessions).
        assert "Model registry" in text and "Judges" not in text and "Sessions" not in text
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert leftovers_after(project, 30) == []  # the UI's server processes went down with it


def wait_for_ui(server: subprocess.Popen, base: str) -> str:
    """The server's first lines (the links it prints) once its REST API answers."""
    lines = []
    while not any("tiny:" in line for line in lines):
        line = server.stdout.readline()
        if not line:
            raise AssertionError("ablate ui exited:\n" + "".join(lines))
        lines.append(line)
    deadline = time.time() + 240
    while True:
        try:
            get_json(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 1})
            return "".join(lines)
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise AssertionError("the MLflow UI did not answer:\n" + "".join(lines)) from None
            time.sleep(1)


def page_text(url: str, screenshot: Path, *expected: str, wait_s: float = 60) -> str:
    """The text of `url` in a fresh headless Chromium (no stored UI settings, as for a first visit)
    once every `expected` string shows (or `wait_s` passed); the viewport is saved to `screenshot`."""
    from browser import Browser

    with Browser(timeout=90) as browser:
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1600, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        browser.open(url)
        deadline = time.time() + wait_s
        text = ""
        while time.time() < deadline and not all(e in text for e in expected):
            time.sleep(1)
            text = browser.evaluate("document.body.innerText")
        time.sleep(1)  # let the grid settle for the screenshot
        browser.screenshot(screenshot, full_page=False)
        return browser.evaluate("document.body.innerText")
