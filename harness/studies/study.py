"""Studies on an Optuna storage: creating them, queueing cells, reaping dead workers' trials,
and the end-of-study arm summaries.

An ablation study is an Optuna study whose trials are enqueued cells (arm x seed, as trial user
attributes); workers pull WAITING trials. Optuna gives the storage (journal file or PostgreSQL),
atomic hand-out of queued trials and the trial states; this module adds what an ablation needs
on top: one COMPLETE trial per cell, retried when its worker died, never run twice to completion.

The study's user attribute `harness` holds everything a worker on another machine needs: the
study type, each arm's config, the seeds, the MLflow experiment and the parent run id.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.core.config import Config, build_config, flatten
from harness.core.errors import UsageError
from harness.studies.liveness import is_dead
from harness.studies.spec import AblationSpec

if TYPE_CHECKING:  # MLflow (and scipy) load where used: `ablate status` reads Optuna alone
    from mlflow.tracking import MlflowClient

ATTR = "harness"
RETIRED = "harness.retired_trials"
ARM_SUMMARY_METRICS = ("test_loss", "test_gap", "best_val_loss", "gap_at_best", "final_gap")
"""Averaged over seeds into each arm-summary run: the verdicts' two axes, then the validation view."""
REPORTED = ("test_loss", "test_gap", "best_val_loss", "gap_at_best", "final_gap", "max_gap", "overfit_onset",
            "wall_s")
"""Summary metrics copied onto a finished cell's trial (what `ablate status` and searches read)."""
CELL_OBJECTIVE = "best_val_loss of one cell (arm x seed)"
"""The objective's name in Optuna (optuna-dashboard shows it): an ablation's trials are cells,
so its "best trial" is one seed of one arm; arms are compared by `ablate report`."""


def info(study: optuna.Study) -> dict[str, Any]:
    try:
        return study.user_attrs[ATTR]
    except KeyError:
        raise UsageError(f"study {study.study_name!r} was not created by ablate") from None


def cell_key(trial: FrozenTrial) -> str | None:
    arm, seed = trial.user_attrs.get("arm"), trial.user_attrs.get("seed")
    return None if arm is None else f"{arm}/seed={seed}"


def trials_by_cell(study: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """The trials of each cell, leaving out those retired because their MLflow run was deleted."""
    retired = set(study.user_attrs.get(RETIRED, []))
    out: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trial in study.get_trials(deepcopy=False):
        key = cell_key(trial)
        if key is not None and trial.number not in retired:
            out[key].append(trial)
    return out


def retire_deleted_runs(study: optuna.Study, client: MlflowClient) -> list[int]:
    """A COMPLETE trial whose MLflow run the user deleted no longer counts: its cell runs again.

    Finished trials cannot be changed in Optuna, so the study keeps the list of retired ones.
    """
    retired = set(study.user_attrs.get(RETIRED, []))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if trial.number in retired or not run_id:
            continue
        try:
            gone = client.get_run(run_id).info.lifecycle_stage == "deleted"
        except Exception:  # purged from the store entirely
            gone = True
        if gone:
            retired.add(trial.number)
    if retired != set(study.user_attrs.get(RETIRED, [])):
        study.set_user_attr(RETIRED, sorted(retired))
    return sorted(retired)


def arm_configs(study: optuna.Study) -> dict[str, Config]:
    return {label: build_config(arm["config"]) for label, arm in info(study)["arms"].items()}


# --- creating an ablation study ----------------------------------------------------------------

def check_spec_unchanged(study: optuna.Study, spec: AblationSpec) -> None:
    """An arm label that now means a different config would silently mix two recipes."""
    old = info(study).get("arms", {})
    for arm in spec.arms:
        before = old.get(arm.label)
        if before is not None and before["hash"] != arm.config.hash():
            was, now = flatten(before["config"]), arm.config.flat()
            changed = [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now))
                       if was.get(k) != now.get(k)]
            raise UsageError(
                f"the spec of study {spec.name!r} changed since it ran: arm {arm.label!r} now differs "
                f"({'; '.join(changed[:3])}); give the study a new name (name: {spec.name}-v2) to "
                f"run the new recipe, or restore the spec to finish the old one")


def create_ablation(spec: AblationSpec, storage: optuna.storages.BaseStorage, storage_url: str,
                    client: MlflowClient) -> optuna.Study:
    """Create (or reopen) the study and its MLflow parent run, then queue the missing cells.

    Runs in the driver before any worker starts, so workers always find a complete study.
    """
    existing = _find_study(storage, spec.name)
    if existing is None:
        with created_study(storage, spec.name, ["minimize"], client) as (study, made):
            _create_parent(client, spec, storage_url, made)
            meta = _ablation_meta(spec, made[0], {"arms": {}})
            meta["arm_runs"] = _create_arm_runs(client, meta, {}, made)
            study.set_user_attr(ATTR, meta)
            _name_objective(study)
            _set_study_view(client, meta)
            enqueue_missing(study, retry_failed=True)
        return study
    if info(existing).get("type") != "ablation":
        raise UsageError(f"study {spec.name!r} exists and is a {info(existing).get('type')}, "
                         f"not an ablation; rename the spec")
    check_spec_unchanged(existing, spec)
    # A rerun writes only what is new (arms, cells): with nothing to run it writes nothing.
    previous = info(existing)
    meta = _ablation_meta(spec, previous["parent_run_id"], previous)
    meta["arm_runs"] = _create_arm_runs(client, meta, previous.get("arm_runs", {}), [])
    if json.loads(json.dumps(meta)) != previous:
        existing.set_user_attr(ATTR, meta)
    if existing.metric_names is None:  # a study created before the objective had a name
        _name_objective(existing)
    _set_study_view(client, meta)
    retire_deleted_runs(existing, client)
    enqueue_missing(existing, retry_failed=True)
    if any(state not in SETTLED for state in cell_status(existing).values()):
        client.update_run(previous["parent_run_id"], status="RUNNING")
    return existing


def _name_objective(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([CELL_OBJECTIVE])


def _ablation_meta(spec: AblationSpec, parent: str, previous: dict[str, Any]) -> dict[str, Any]:
    """The study's `harness` attribute: what it had (`previous`) joined with what `spec` adds."""
    arms = dict(previous["arms"])
    arms.update({a.label: {"config": a.config.to_dict(), "hash": a.config.hash()} for a in spec.arms})
    return {
        "type": "ablation",
        "experiment": spec.name,
        "parent_run_id": parent,
        "arms": arms,
        "seeds": sorted(set(previous.get("seeds", [])) | set(spec.seeds)),
        "cells": sorted({*previous.get("cells", []), *(c.key for c in spec.cells)}),
        "baseline": spec.baseline,
    }


@contextmanager
def created_study(storage: optuna.storages.BaseStorage, name: str, directions: list[str],
                  client: MlflowClient) -> Iterator[tuple[optuna.Study, list[str]]]:
    """Create study `name` all or nothing: yields it with a list for the MLflow runs made for it.

    When the block fails (a store error, Ctrl-C), the study is deleted and the runs listed are
    deleted too, so no empty study is left to block the name ("not created by ablate") and no
    parent run is left RUNNING; the same command can simply run again.
    """
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    made: list[str] = []
    try:
        yield study, made
    except BaseException:
        with suppress(Exception):  # the first error is the one to report
            optuna.delete_study(study_name=name, storage=storage)
            for run_id in made:
                client.delete_run(run_id)
        raise


def _find_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _create_parent(client: MlflowClient, spec: AblationSpec, storage_url: str, made: list[str]) -> str:
    """The study's parent run, listed in `made` as soon as it exists (see created_study)."""
    import yaml

    from harness.tracking.store import experiment_id, redact

    run = client.create_run(experiment_id(client, spec.name), run_name=f"study {spec.name}", tags={
        "harness.kind": "study", "harness.studies.study": spec.name, "harness.study_type": "ablation",
        "harness.baseline_arm": spec.baseline, "harness.tracking.storage": redact(storage_url),
        "mlflow.note.content": spec.description or f"Ablation study {spec.name} ({spec.design})",
    })
    spec_doc = {"name": spec.name, "design": spec.design, "baseline": spec.baseline, "seeds": spec.seeds,
                "base": spec.base.to_dict(),
                "arms": [{"label": a.label, "set": a.overrides} for a in spec.arms]}
    made.append(run.info.run_id)
    client.log_text(run.info.run_id, yaml.safe_dump(spec_doc, sort_keys=False), "spec.yaml")
    return run.info.run_id


def _create_arm_runs(client: MlflowClient, meta: dict[str, Any], known: dict[str, str],
                     made: list[str]) -> dict[str, str]:
    """Each arm's run (harness.kind=arm-summary): a child of the study run and the parent of the
    arm's seed runs, so MLflow nests study -> arm -> seeds. Returns label -> run id.

    Arms in `known` keep their run; an arm of an older study whose summary run exists (found by
    its tags) adopts it; the others get a new run, listed in `made` (see created_study). The run
    holds the arm's recipe as params (every key but train.seed, so the same params columns fill
    as for its seed runs) and says in its note what the arm changes; write_arm_summaries adds
    the means over seeds when the study completes.
    """
    from harness.tracking.store import RunTracker, experiment_id

    runs = dict(known)
    missing = [label for label in meta["arms"] if label not in runs]
    if not missing:
        return runs
    exp_id = experiment_id(client, meta["experiment"])
    adopted = {r.data.tags.get("harness.arm"): r.info.run_id for r in client.search_runs(
        [exp_id], "tags.`harness.kind` = 'arm-summary'")}
    for label in missing:
        if label in adopted:
            runs[label] = adopted[label]
            continue
        run = client.create_run(exp_id, run_name=f"arm {label}", tags={
            "harness.kind": "arm-summary", "harness.studies.study": meta["experiment"], "harness.arm": label,
            "mlflow.parentRunId": meta["parent_run_id"],
            "mlflow.note.content": f"Arm `{label}` of study `{meta['experiment']}`: {arm_changes(meta, label)}. "
                                   f"Its seed runs are nested below it; the means over seeds are written here "
                                   f"when the study completes."})
        made.append(run.info.run_id)
        params = {k: v for k, v in flatten(meta["arms"][label]["config"]).items() if k != "train.seed"}
        RunTracker(client, run.info.run_id).log_params(params)
        runs[label] = run.info.run_id
    return runs


def arm_changes(meta: dict[str, Any], label: str) -> str:
    """What arm `label` changes against the study's baseline, as 'key=value, ...'."""
    if label == meta["baseline"]:
        return "the baseline"
    base = flatten(meta["arms"][meta["baseline"]]["config"])
    own = flatten(meta["arms"][label]["config"])
    changed = [f"{k}={own.get(k)}" for k in sorted(set(base) | set(own))
               if k != "train.seed" and base.get(k) != own.get(k)]
    return ", ".join(changed) or "the baseline's recipe"


def differing_params(meta: dict[str, Any]) -> list[str]:
    """The config keys whose value differs between the study's arms (the seed left out)."""
    flats = [flatten(arm["config"]) for arm in meta["arms"].values()]
    keys = sorted({k for flat in flats for k in flat} - {"train.seed"})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def _set_study_view(client: MlflowClient, meta: dict[str, Any]) -> None:
    """The study's runs table in the MLflow UI (harness.tracking.mlflow_ui): grouped by arm, the verdict
    metrics and the params that differ between arms as columns."""
    from harness.tracking.mlflow_ui import ablation_view, set_view
    from harness.tracking.store import experiment_id

    set_view(client, experiment_id(client, meta["experiment"]),
             ablation_view(ARM_SUMMARY_METRICS, differing_params(meta)))


# --- the queue --------------------------------------------------------------------------------

def enqueue_missing(study: optuna.Study, retry_failed: bool) -> list[str]:
    """Queue every cell that has no COMPLETE, WAITING or RUNNING trial.

    A cell whose trial failed is queued again only with `retry_failed` (a new `ablate run`),
    except when its worker died (reaped) or its training diverged: that trial is retried at once,
    by any worker, a diverged one until it diverged DIVERGED_ATTEMPTS times (then it is settled).
    """
    cells = info(study)["cells"]
    by_cell = trials_by_cell(study)
    queued = []
    for key in cells:
        trials = by_cell.get(key, [])
        if any(t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) for t in trials):
            continue
        failed = [t for t in trials if t.state == TrialState.FAIL]
        if sum(map(diverged, failed)) >= DIVERGED_ATTEMPTS:
            continue  # settled: the recipe diverges on this seed, which is a result
        if failed and not retry_failed and not all("harness.reaped" in t.system_attrs or diverged(t)
                                                   for t in failed):
            continue
        arm, seed = key.rsplit("/seed=", 1)
        study.enqueue_trial({}, user_attrs={"arm": arm, "seed": int(seed), "attempt": len(trials) + 1})
        queued.append(key)
    return queued


def reap_dead(study: optuna.Study, client: MlflowClient | None) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and close their MLflow runs as KILLED.

    A run is found by the id on its trial or, for a worker killed between creating the run and
    recording its id, by its tags (harness.studies.study and optuna.trial_number).
    """
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = is_dead(trial)
        if why is None:
            continue
        storage = study._storage
        try:
            storage.set_trial_system_attr(trial._trial_id, "harness.reaped", why)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker reaped it, or it just finished
        reaped.append(trial.number)
        if client is None:
            continue
        named = trial.user_attrs.get("mlflow_run_id")
        if named:
            close_killed(client, named, f"worker died: {why}")
        exp = client.get_experiment_by_name(info(study)["experiment"])
        running = [] if exp is None else client.search_runs(
            [exp.experiment_id], f"tags.`harness.studies.study` = '{study.study_name}' and "
                                 f"tags.`optuna.trial_number` = '{trial.number}' and attributes.status = 'RUNNING'")
        for run in running:
            if run.info.run_id != named:
                close_killed(client, run.info.run_id, f"worker died before the trial recorded this run: {why}")
    return reaped


STALE = "trial was reaped as stale while it ran"
"""The reason on the runs of a trial that finished after it was reaped (a missed heartbeat)."""


def close_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    """End an MLflow run as KILLED with harness.reason saying why."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag("harness.reason", reason)])
    client.set_terminated(run_id, status="KILLED")


def tell_or_close_stale(study: optuna.Study, trial: optuna.Trial, state: TrialState,
                        values: float | list[float] | None, client: MlflowClient, run_ids: list[str]) -> bool:
    """Tell the storage that `trial` ended in `state`; False when a peer had reaped it meanwhile.

    A trial reaped while it ran (its heartbeat was missed) is FAIL already and cannot change:
    Optuna refuses to tell it (ValueError at its check, UpdateFinishedTrialError when the reap
    lands between the check and the write). Its runs are then closed KILLED as STALE, so they
    never read as results of the cell, which runs again.
    """
    try:
        told = study.tell(trial, values, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        told = None
    if told is not None and told.state == state:
        return True
    for run_id in run_ids:
        close_killed(client, run_id, STALE)
    return False


def first_owner(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """Another trial of the same cell that has this cell already (complete, or started first)."""
    key = cell_key(trial)
    for other in trials_by_cell(study).get(key, []):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return other
        if other.state == TrialState.RUNNING and other.number < trial.number:
            return other
    return None


# --- progress and summaries ---------------------------------------------------------------------

DIVERGED_ATTEMPTS = 2
"""Tries after which a cell whose training diverged (non-finite loss) is settled as `diverged`: on
a CPU the same recipe and seed diverge again, so retrying forever would keep a study from ever
completing; one retry covers a divergence that was not deterministic (a GPU's)."""
SETTLED = ("done", "diverged")
"""Cell states that need no more training: a study whose cells are all settled is complete."""
CELL_STATES = ("done", "diverged", "running", "failed", "waiting", "missing")


def diverged(trial: FrozenTrial) -> bool:
    """Whether the trial failed because its training diverged (harness.studies.worker.fail_trial)."""
    return trial.state == TrialState.FAIL and "diverged" in trial.user_attrs


def cell_status(study: optuna.Study) -> dict[str, str]:
    """Each cell's state: done, diverged (settled), running, failed, waiting (or missing: not queued)."""
    out = {}
    by_cell = trials_by_cell(study)
    for key in info(study)["cells"]:
        trials = by_cell.get(key, [])
        states = {t.state for t in trials}
        out[key] = ("done" if TrialState.COMPLETE in states else
                    "running" if TrialState.RUNNING in states else
                    "waiting" if TrialState.WAITING in states else
                    "diverged" if sum(map(diverged, trials)) >= DIVERGED_ATTEMPTS else
                    "failed" if TrialState.FAIL in states else "missing")
    return out


def status_by_arm(study: optuna.Study) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for key, state in cell_status(study).items():
        arm = key.rsplit("/seed=", 1)[0]
        row = counts.setdefault(arm, dict.fromkeys(CELL_STATES, 0))
        row[state] += 1
    return counts


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean, std, n and the t-based 95% confidence interval of the mean."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": float(n), "ci_low": mean - half, "ci_high": mean + half}


def write_arm_summaries(study: optuna.Study, client: MlflowClient) -> dict[str, dict[str, float]]:
    """Each arm's run (harness.kind=arm-summary) gets the mean over its finished seeds of every
    ARM_SUMMARY_METRICS under the runs' own names (so the runs table's columns fill for arms as
    for seeds), `n_seeds`, and a note with the std and 95% CI. Returns arm -> those metrics.

    Writes only what changed: re-running a completed study with nothing new writes nothing. An
    arm without a run (a study created before arms had runs) gets one under the study run.
    """
    from mlflow.entities import Metric, RunTag

    meta = info(study)
    runs = _create_arm_runs(client, meta, meta.get("arm_runs", {}), [])
    by_arm: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trials in trials_by_cell(study).values():
        for trial in trials:
            if trial.state == TrialState.COMPLETE:
                by_arm[trial.user_attrs["arm"]].append(trial)
    diverged_seeds: dict[str, list[str]] = defaultdict(list)
    for key, state in cell_status(study).items():
        if state == "diverged":
            arm, seed = key.rsplit("/seed=", 1)
            diverged_seeds[arm].append(seed)
    summaries = {}
    now = int(time.time() * 1000)
    for arm in sorted(set(by_arm) | set(diverged_seeds)):
        trials = sorted(by_arm.get(arm, []), key=lambda t: t.user_attrs["seed"])
        spread = {name: mean_ci([t.user_attrs[name] for t in trials if name in t.user_attrs])
                  for name in ARM_SUMMARY_METRICS if any(name in t.user_attrs for t in trials)}
        metrics = {name: s["mean"] for name, s in spread.items()} | {"n_seeds": float(len(trials))}
        tags = {"harness.seeds": ",".join(str(t.user_attrs["seed"]) for t in trials),
                # the seeds whose training diverged (non-finite loss): a result, not a gap
                "harness.diverged": ",".join(sorted(diverged_seeds[arm], key=int)),
                "mlflow.note.content": _summary_note(meta, arm, spread, len(trials), diverged_seeds[arm])}
        run = client.get_run(runs[arm])
        new_metrics = [Metric(k, v, now, 0) for k, v in metrics.items() if run.data.metrics.get(k) != v]
        new_tags = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        if new_metrics or new_tags:
            client.log_batch(run.info.run_id, metrics=new_metrics, tags=new_tags)
        if run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, status="FINISHED")
        summaries[arm] = metrics
    return summaries


def _summary_note(meta: dict[str, Any], arm: str, spread: dict[str, dict[str, float]], n: int,
                  diverged: list[str]) -> str:
    """The arm run's description (Markdown, shown on its page): what the arm changes, then mean,
    std and 95% CI over its seeds of each summarised metric."""
    lines = [f"Arm `{arm}` of study `{meta['experiment']}`: {arm_changes(meta, arm)}.",
             f"Mean over {n} finished seed(s)" + (f"; diverged: seed(s) {', '.join(diverged)}" if diverged else "")
             + ". The report (`ablate report`) compares arms paired by seed.", "",
             "| metric | mean | std | 95% CI |", "|---|---|---|---|"]
    for name, s in spread.items():
        ci = "-" if math.isnan(s["ci_low"]) else f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]"
        lines.append(f"| {name} | {s['mean']:.4f} | {s['std']:.4f} | {ci} |")
    return "\n".join(lines)
