"""An ablation's arm runs in MLflow: one run per arm (harness.kind=arm-summary), a child of the
study's run and the parent of the arm's seed runs, so the UI nests study -> arm -> seeds; and,
when the study completes, the means over seeds written onto them."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from harness.core.config import flatten
from harness.core.metrics import ARM_SUMMARY_METRICS
from harness.studies.cells import cell_status, trials_by_cell
from harness.studies.record import StudyRecord, read
from harness.studies.spec import split_key


def create_arm_runs(client: MlflowClient, meta: StudyRecord, made: list[str]) -> dict[str, str]:
    """Each arm's run; returns label -> run id (meta.arm_runs joined with the new ones).

    Arms in meta.arm_runs keep their run; an arm of an older study whose summary run exists
    (found by its tags) adopts it; the others get a new run, listed in `made` (see
    harness.studies.engine.created_study). The run holds the arm's recipe as params (every key
    but train.seed, so the same params columns fill as for its seed runs) and says in its note
    what the arm changes; write_arm_summaries adds the means over seeds when the study completes.
    """
    from harness.tracking.store import RunTracker, experiment_id

    runs = dict(meta.arm_runs)
    missing = [label for label in meta.arms if label not in runs]
    if not missing:
        return runs
    exp_id = experiment_id(client, meta.experiment)
    adopted = {r.data.tags.get("harness.arm"): r.info.run_id for r in client.search_runs(
        [exp_id], "tags.`harness.kind` = 'arm-summary'")}
    for label in missing:
        if label in adopted:
            runs[label] = adopted[label]
            continue
        run = client.create_run(exp_id, run_name=f"arm {label}", tags={
            "harness.kind": "arm-summary", "harness.study": meta.experiment, "harness.arm": label,
            "mlflow.parentRunId": meta.parent_run_id,
            "mlflow.note.content": f"Arm `{label}` of study `{meta.experiment}`: {arm_changes(meta, label)}. "
                                   f"Its seed runs are nested below it; the means over seeds are written here "
                                   f"when the study completes."})
        made.append(run.info.run_id)
        params = {k: v for k, v in flatten(meta.arms[label]["config"]).items() if k != "train.seed"}
        RunTracker(client, run.info.run_id).log_params(params)
        runs[label] = run.info.run_id
    return runs


def arm_changes(meta: StudyRecord, label: str) -> str:
    """What arm `label` changes against the study's baseline, as 'key=value, ...'."""
    if label == meta.baseline:
        return "the baseline"
    base = flatten(meta.arms[meta.baseline]["config"])
    own = flatten(meta.arms[label]["config"])
    changed = [f"{k}={own.get(k)}" for k in sorted(set(base) | set(own))
               if k != "train.seed" and base.get(k) != own.get(k)]
    return ", ".join(changed) or "the baseline's recipe"


def differing_params(meta: StudyRecord) -> list[str]:
    """The config keys whose value differs between the study's arms (the seed left out)."""
    flats = [flatten(arm["config"]) for arm in meta.arms.values()]
    keys = sorted({k for flat in flats for k in flat} - {"train.seed"})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def set_study_view(client: MlflowClient, meta: StudyRecord) -> None:
    """The study's runs table in the MLflow UI (harness.tracking.mlflow_ui): grouped by arm, the
    verdict metrics and the params that differ between arms as columns."""
    from harness.tracking.mlflow_ui import ablation_view, set_view
    from harness.tracking.store import experiment_id

    set_view(client, experiment_id(client, meta.experiment), ablation_view(ARM_SUMMARY_METRICS, differing_params(meta)))


def write_arm_summaries(study: optuna.Study, client: MlflowClient) -> dict[str, dict[str, float]]:
    """Each arm's run gets the mean over its finished seeds of every ARM_SUMMARY_METRICS under
    the runs' own names (so the runs table's columns fill for arms as for seeds), `n_seeds`, and
    a note with the std and 95% CI. Returns arm -> those metrics.

    Writes only what changed: re-running a completed study with nothing new writes nothing. An
    arm without a run (a study created before arms had runs) gets one under the study run.
    """
    from mlflow.entities import Metric, RunTag

    from harness.report.stats import mean_interval  # scipy: the driver's import, never a worker's

    meta = read(study)
    runs = create_arm_runs(client, meta, [])
    by_arm: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trials in trials_by_cell(study).values():
        for trial in trials:
            if trial.state == TrialState.COMPLETE and trial.user_attrs["arm"] in meta.arms:
                by_arm[trial.user_attrs["arm"]].append(trial)
    diverged_seeds: dict[str, list[str]] = defaultdict(list)
    for key, state in cell_status(study).items():
        if state == "diverged":
            arm, seed = split_key(key)
            diverged_seeds[arm].append(str(seed))
    summaries = {}
    now = int(time.time() * 1000)
    for arm in sorted((set(by_arm) | set(diverged_seeds)) & set(meta.arms)):
        trials = sorted(by_arm.get(arm, []), key=lambda t: t.user_attrs["seed"])
        stats = {name: mean_interval([t.user_attrs[name] for t in trials if name in t.user_attrs])
                 for name in ARM_SUMMARY_METRICS if any(name in t.user_attrs for t in trials)}
        metrics = {name: s["mean"] for name, s in stats.items()} | {"n_seeds": float(len(trials))}
        tags = {"harness.seeds": ",".join(str(t.user_attrs["seed"]) for t in trials),
                # the seeds whose training diverged (non-finite loss): a result, not a gap
                "harness.diverged": ",".join(sorted(diverged_seeds[arm], key=int)),
                "mlflow.note.content": _summary_note(meta, arm, stats, len(trials), diverged_seeds[arm])}
        run = client.get_run(runs[arm])
        new_metrics = [Metric(k, v, now, 0) for k, v in metrics.items() if run.data.metrics.get(k) != v]
        new_tags = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        if new_metrics or new_tags:
            client.log_batch(run.info.run_id, metrics=new_metrics, tags=new_tags)
        if run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, status="FINISHED")
        summaries[arm] = metrics
    return summaries


def _summary_note(meta: StudyRecord, arm: str, stats: dict[str, dict[str, float]], n: int,
                  diverged: list[str]) -> str:
    """The arm run's description (Markdown, shown on its page): what the arm changes, then mean,
    std and 95% CI over its seeds of each summarised metric."""
    from harness.report.formatting import interval

    lines = [f"Arm `{arm}` of study `{meta.experiment}`: {arm_changes(meta, arm)}.",
             f"Mean over {n} finished seed(s)" + (f"; diverged: seed(s) {', '.join(diverged)}" if diverged else "")
             + ". The report (`ablate report`) compares arms paired by seed.", "",
             "| metric | mean | std | 95% CI |", "|---|---|---|---|"]
    for name, s in stats.items():
        ci = interval(s["ci_low"], s["ci_high"], lambda x: f"{x:.4f}") or "-"
        lines.append(f"| {name} | {s['mean']:.4f} | {s['std']:.4f} | {ci} |")
    return "\n".join(lines)
