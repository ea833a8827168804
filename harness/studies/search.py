"""`ablate search studies/NAME.yaml`: an Optuna search over a regularization space.

The spec format, the objective, pruning and the exact trial total are documented in
docs/search-spec.md; the spec is parsed and validated by harness.studies.search_space. This
module is the engine's strategy for a search (which trials count toward the total, how the queue
is topped up, what a trial trains) and the study's creation; harness.studies.search_results is
the driver of `ablate search`: it runs the study, summarises it and runs its confirmation.

The total, in short: counted are COMPLETE, PRUNED, RUNNING and WAITING trials, and FAIL trials
that raised (a recipe that diverges is a result); interrupted, reaped and surplus trials are
replaced. The driver, and every worker before it takes a trial, queues the missing count as bare
WAITING trials (the baseline first while no counted trial is the baseline); a popped trial
with the total already ahead of it stands down (FAIL, user attribute `skipped`) untrained.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Callable

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState, create_trial

from harness.core.config import Config
from harness.core.errors import UsageError
from harness.core.metrics import PRUNED_VALUE, Evaluation
from harness.studies import _optuna
from harness.studies.engine import (RunPlan, create_parent_run, created_study, find_study,
                                    name_objectives)
from harness.studies.record import StudyRecord, read, write
from harness.studies.search_space import SearchSpec, parse_search_spec
from harness.studies.spec import cell_config


# --- the total: which trials count, reserving ---------------------------------------------------

def counts_toward_total(trial: FrozenTrial) -> bool:
    """Everything but FAIL trials that did not raise (interrupted, reaped, surplus)."""
    return trial.state != TrialState.FAIL or "error" in trial.user_attrs


def is_baseline(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("baseline"))


def reserve(study: optuna.Study) -> int:
    """Enqueue what the study lacks to reach its total; returns how many trials were queued."""
    meta = read(study)
    counted = [t for t in study.get_trials(deepcopy=False) if counts_toward_total(t)]
    missing = meta.target - len(counted)
    if missing <= 0:
        return 0
    has_baseline = any(is_baseline(t) for t in counted)
    if not has_baseline:
        study.enqueue_trial(meta.baseline_labels, user_attrs={"baseline": True})
    for _ in range(missing - (not has_baseline)):
        # A bare WAITING trial, not enqueue_trial({}): that marks the trial "fixed_params", and
        # GridSampler leaves such trials without a grid point.
        study.add_trial(create_trial(state=TrialState.WAITING))
    return missing


def surplus_reason(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """Why a just-popped trial must not train (a race queued it twice or beyond the total).

    Two workers topping up at once can queue one trial too many; counted trials only ever leave
    the count (FAIL), never join it late, and new trials get larger numbers, so no trial that
    trains can be beyond the total when every trial checks the counted ones ahead of it."""
    target = read(study).target
    ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts_toward_total(t)]
    if len(ahead) >= target:
        return f"surplus: {len(ahead)} earlier trials already make the total of {target}"
    if is_baseline(trial) and any(is_baseline(t) for t in ahead):
        return "surplus: the baseline was queued twice"
    return None


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts_toward_total(t))


def past_deadline(study: optuna.Study) -> bool:
    deadline = read(study).deadline
    return deadline is not None and time.time() > deadline


# --- the strategy ---------------------------------------------------------------------------------

class Search:
    """The engine's strategy for a search: the queue is topped up to the total, and a trial
    suggests a recipe and trains it on each of the spec's seeds (pruning the first)."""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self.objectives = spec.objective.names

    @staticmethod
    def open(study: optuna.Study) -> tuple[optuna.Study, Search]:
        """The study as a worker serves it: with the spec's sampler and pruner."""
        spec = parse_search_spec(read(study).spec)
        study = optuna.load_study(study_name=study.study_name, storage=_optuna.storage(study),
                                  sampler=spec.make_sampler(), pruner=spec.make_pruner())
        return study, Search(spec)

    def stopped(self, study: optuna.Study) -> bool:
        return past_deadline(study)

    def top_up(self, study: optuna.Study) -> None:
        reserve(study)

    def stand_down(self, study: optuna.Study, trial: FrozenTrial) -> tuple[str, str, TrialState] | None:
        why = surplus_reason(study, trial)
        return None if why is None else ("skipped", why, TrialState.FAIL)

    def plan(self, study: optuna.Study, trial: optuna.Trial) -> list[RunPlan]:
        # A fresh sampler per trial, seeded by its number: see SearchSpec.make_sampler.
        study.sampler = self.spec.make_sampler(trial.number)
        cfg = self.spec.config_for(self.spec.suggest(trial), where=f"trial {trial.number}: ")
        parent = read(study).parent_run_id
        # Only the first seed's curve is reported and pruned: every trial's first seed is the same
        # seed, so the pruner compares paired curves. Optuna prunes single-objective studies only.
        hook = None if self.spec.objective.multi else pruning_hook(trial, self.spec, cfg)
        return [RunPlan(cell_config(cfg, seed), f"trial-{trial.number} seed={seed}", parent,
                        {"harness.arm": f"trial-{trial.number}"}, hook if i == 0 else None)
                for i, seed in enumerate(self.spec.seeds)]


def pruning_hook(trial: optuna.Trial, spec: SearchSpec, cfg: Config) -> Callable[[Evaluation], str | None]:
    """run_tracked's should_stop: report each evaluation, return the reason when pruned.

    The value at step = evaluation index is the best val_loss so far with `at: best` (a trial
    must not be pruned for overfitting after it already set a good best), the current val_loss
    with `at: final`. The last evaluation is reported but never pruned: the run has spent its
    budget by then, and pruning it would only throw its result away.
    """
    best = math.inf
    steps = itertools.count()

    def should_stop(ev: Evaluation) -> str | None:
        nonlocal best
        best = min(best, ev.val_loss)
        step = next(steps)
        value = best if spec.objective.at == "best" else ev.val_loss
        trial.report(value, step)
        last = ev.epoch >= cfg.train.epochs or (cfg.train.max_steps is not None and ev.step >= cfg.train.max_steps)
        if last or not trial.should_prune():
            return None
        trial.set_user_attr("pruned_at_epoch", ev.epoch)
        what = PRUNED_VALUE[spec.objective.at]
        rule = ("worse than the median of earlier trials at this evaluation" if spec.pruner.name == "median"
                else "below the cut of its Hyperband rung")
        return (f"pruned by the {spec.pruner.name} pruner at epoch {ev.epoch:g} (evaluation {step + 1}): "
                f"{what} {value:.4f} {rule}")

    return should_stop


# --- creating the study -------------------------------------------------------------------------------

def create_search(spec: SearchSpec, storage: optuna.storages.BaseStorage, storage_url: str,
                  client: MlflowClient, target: int, deadline: float | None) -> optuna.Study:
    """Create (or reopen) the study and its MLflow parent run; the driver does this before any
    worker starts. A reopened study must have the same fingerprint (base, space, objective, ...)."""
    fingerprint = json.loads(json.dumps(spec.fingerprint()))  # as the storage gives it back

    def record(parent: str) -> StudyRecord:
        return StudyRecord(type="search", experiment=spec.name, parent_run_id=parent, spec=spec.raw,
                           fingerprint=fingerprint, baseline_labels=spec.baseline_labels, target=target,
                           deadline=deadline)

    study = find_study(storage, spec.name)
    if study is not None:
        old = read(study)
        if old.type != "search":
            raise UsageError(f"study {spec.name!r} exists and is a {old.type}, not a search; rename the spec")
        changed = spec.changed_since(old.fingerprint or {})
        if changed:
            raise UsageError(f"the spec of study {spec.name!r} changed since it ran ({', '.join(changed)} "
                             f"differ); give the study a new name (name: {spec.name}-v2) to search the new "
                             f"space, or restore the spec to continue the old one")
        if finished_count(study) < target:  # with nothing left to train, the run stays FINISHED
            client.update_run(old.parent_run_id, status="RUNNING")
        write(study, record(old.parent_run_id))
        _set_trials_view(client, spec)
        return study
    with created_study(storage, spec.name, ["minimize"] * len(spec.objective.names), client) as (study, made):
        name_objectives(study, spec.objective.names)
        note = spec.description or f"Optuna search {spec.name}"
        parent = create_parent_run(
            client, spec.name, "search", storage_url, f"{note} (objective: {', '.join(spec.objective.names)}, minimised)",
            {"harness.objective": spec.objective.tag, "harness.objective_metric": spec.objective.names[0]},
            spec.raw, made)
        write(study, record(parent))
        _set_trials_view(client, spec)
    return study


def _set_trials_view(client: MlflowClient, spec: SearchSpec) -> None:
    """The search's runs table in the MLflow UI (harness.tracking.mlflow_ui): trials best first."""
    from harness.tracking.mlflow_ui import set_view, trials_view
    from harness.tracking.store import experiment_id

    set_view(client, experiment_id(client, spec.name), trials_view(spec.objective.names, [p.path for p in spec.space]))


def tag_baseline(study: optuna.Study, client: MlflowClient) -> None:
    """harness.baseline_arm names the baseline trial's arm, so reports pair against it."""
    counted = [t for t in study.get_trials(deepcopy=False) if is_baseline(t) and counts_toward_total(t)]
    if counted:
        client.set_tag(read(study).parent_run_id, "harness.baseline_arm", f"trial-{counted[0].number}")
