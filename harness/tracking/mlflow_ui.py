"""Where the MLflow UI opens on ablate's experiments: deep links, and each study's runs-table view.

MLflow 3's UI (checked on 3.17) opens an experiment on its GenAI overview (traces, latency,
token usage) in a fresh browser: its GenAI / Model training switch lives in the browser's local
storage, defaults to GenAI, and wins over the experiment's `mlflow.experimentKind` tag. Two
things in the address steer it instead, for any browser:

- `workflowType=machine_learning` selects the model-training view (the runs table);
- `viewStateShareKey=KEY` applies the *shared view* stored in the experiment tag
  `mlflow.sharedViewState.KEY` (JSON): its search filter, sort, columns and grouping.

So every study carries a view (VIEW_TAG) that opens on its training runs grouped by arm (each
group row shows the arm's mean over its seeds, the seed runs below it) with the verdict metrics
and the params that differ between arms as columns, and every address ablate prints or writes
into a report names both. The UI does not share which nested rows are expanded (it drops
`runsExpanded` from shared views), which is why the view groups by arm instead of relying on
the study -> arm -> seed nesting, and filters on `harness.kind = 'run'` (the arm-summary runs
would otherwise join their arm's group). Sorting by run name keeps the UI from nesting (it nests
only when sorted by creation time), so no collapsed parent row hides the seeds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

UI_HOST, UI_PORT = "127.0.0.1", 5000
DEFAULT_UI_URL = f"http://{UI_HOST}:{UI_PORT}"
"""Where `ablate ui` serves the MLflow UI unless told otherwise (loopback: this machine only)."""
VIEW_KEY = "ablate"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
MODEL_TRAINING = "workflowType=machine_learning"
"""The query parameter that opens MLflow 3's model-training view whatever the browser stored."""
RUNS_ONLY = "tags.`harness.kind` = 'run'"
RUN_NAME_COLUMN = "attributes.`Run Name`"


def experiment_url(ui_url: str, experiment_id: str, view: bool = True) -> str:
    """The experiment's runs table; with `view`, laid out by the study's shared view (VIEW_TAG).

    Only name the view for an experiment that has it: the UI answers an unknown share key with
    an error and a redirect to the experiment's default (GenAI) page.
    """
    shared = f"&viewStateShareKey={VIEW_KEY}" if view else ""
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(experiment_id)}/runs?{MODEL_TRAINING}{shared}"


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """One run's page (overview, metrics, params, artifacts) in the model-training view."""
    return (f"{ui_url.rstrip('/')}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}"
            f"?{MODEL_TRAINING}")


def filtered_runs_url(ui_url: str, experiment_id: str, search_filter: str) -> str:
    """The experiment's runs table showing only the runs that match `search_filter` (MLflow's
    search syntax)."""
    return (f"{experiment_url(ui_url, experiment_id, view=False)}"
            f"&searchFilter={quote(search_filter, safe='')}")


def ablation_view(metrics: Iterable[str], params: Iterable[str]) -> dict:
    """The shared view of an ablation study: its training runs grouped by arm (group rows show the
    arm's mean), sorted by name (arm, then seed), with `metrics` then `params` as columns."""
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
    # The grid applies widths only to the columns named in columnOrder (its column ids).
    order = [RUN_NAME_COLUMN, *columns, "runDateAndNestInfo", "duration"]
    return {
        "searchFilter": RUNS_ONLY,
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": order,
        "columnWidths": {RUN_NAME_COLUMN: 230, **dict.fromkeys(columns, 120)},
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": "harness.arm"}]},
        "groupsExpanded": {},
    }


def trials_view(metrics: list[str], params: Iterable[str]) -> dict:
    """The shared view of a search: its trial runs, best first by the first of `metrics` (the
    objective), with `metrics` then the held-out metrics then `params` (the searched keys) as
    columns. Not sorted by creation time, so no collapsed study row hides the trials."""
    shown = list(dict.fromkeys([*metrics, "test_loss", "test_gap"]))
    columns = [f"metrics.`{m}`" for m in shown] + [f"params.`{p}`" for p in params]
    return {
        "searchFilter": RUNS_ONLY,
        "orderByKey": f"metrics.`{metrics[0]}`",
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *columns, "runDateAndNestInfo", "duration"],
        "columnWidths": {RUN_NAME_COLUMN: 230, **dict.fromkeys(columns, 120)},
    }


def set_view(client: MlflowClient, experiment_id: str, view: dict) -> bool:
    """Store `view` as the experiment's shared view; writes only when it changed. Returns whether
    it wrote (a rerun of a study with nothing new writes nothing)."""
    value = json.dumps(view, sort_keys=True)
    if client.get_experiment(experiment_id).tags.get(VIEW_TAG) == value:
        return False
    client.set_experiment_tag(experiment_id, VIEW_TAG, value)
    return True


def has_view(client: MlflowClient, experiment_id: str) -> bool:
    return VIEW_TAG in client.get_experiment(experiment_id).tags
