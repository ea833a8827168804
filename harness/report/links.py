"""Addresses of runs and arms in the MLflow UI (built by harness.tracking.mlflow_ui, so
they open MLflow 3's model-training view, never its GenAI overview)."""

from __future__ import annotations

from harness.tracking.mlflow_ui import filtered_runs_url, run_url

__all__ = ["arm_url", "run_url"]


def arm_url(ui_url: str, experiment_id: str, run_ids: list[str], summary_run_id: str | None) -> str:
    """An arm's page: its arm-summary run when there is one (the means over seeds, the seed
    runs nested below), its only run, else the experiment's run list filtered to the arm's runs
    (by run id, which works however the arm was labelled)."""
    if summary_run_id:
        return run_url(ui_url, experiment_id, summary_run_id)
    if len(run_ids) == 1:
        return run_url(ui_url, experiment_id, run_ids[0])
    ids = ", ".join(f"'{r}'" for r in sorted(run_ids))
    return filtered_runs_url(ui_url, experiment_id, f"attributes.run_id IN ({ids})")
