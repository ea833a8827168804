"""Addresses of runs and arms in the MLflow UI."""

from __future__ import annotations

from urllib.parse import quote


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}"


def arm_url(ui_url: str, experiment_id: str, run_ids: list[str], summary_run_id: str | None) -> str:
    """An arm's page: its arm-summary run when there is one, its only run, else the
    experiment's run list filtered to the arm's runs (by run id, which works however the
    arm was labelled)."""
    if summary_run_id:
        return run_url(ui_url, experiment_id, summary_run_id)
    if len(run_ids) == 1:
        return run_url(ui_url, experiment_id, run_ids[0])
    ids = ", ".join(f"'{r}'" for r in sorted(run_ids))
    query = quote(f"attributes.run_id IN ({ids})", safe="")
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(experiment_id)}?searchFilter={query}"
