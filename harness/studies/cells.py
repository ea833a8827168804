"""An ablation's cells (arm x seed) on the study's trials: which trials belong to which cell,
each cell's state, and the queue of cells still to train.

Optuna gives the queue and the trial states; a cell is done when one of its trials is COMPLETE,
is never run twice to completion, and is retried when its worker died. Optuna alone (no torch,
no MLflow): `ablate status` reads this in about a second.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from harness.studies.liveness import ATTR
from harness.studies.record import StudyRecord, read
from harness.studies.spec import PRETRAIN, join_key, split_key, stage_seed

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RETIRED = "harness.retired_trials"
DIVERGED_ATTEMPTS = 2
"""Tries after which a cell whose training diverged (non-finite loss) is settled as `diverged`: on
a CPU the same recipe and seed diverge again, so retrying forever would keep a study from ever
completing; one retry covers a divergence that was not deterministic (a GPU's)."""
SETTLED = ("done", "diverged")
"""Cell states that need no more training: a study whose cells are all settled is complete."""
CELL_STATES = ("done", "diverged", "running", "failed", "waiting", "missing")


def cell_key(trial: FrozenTrial) -> str | None:
    arm, seed = trial.user_attrs.get("arm"), trial.user_attrs.get("seed")
    return None if arm is None else join_key(arm, seed)


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


def diverged(trial: FrozenTrial) -> bool:
    """Whether the trial failed because its training diverged (harness.studies.engine.fail_trial)."""
    return trial.state == TrialState.FAIL and "diverged" in trial.user_attrs


def pretrain_cell(meta: StudyRecord, key: str) -> str | None:
    """The pretraining cell whose run cell `key` fine-tunes from, or None (not a dependent)."""
    arm, seed = split_key(key)
    config = meta.arms.get(arm, {}).get("config", {})
    if meta.pretrain is None or config.get("transfer", {}).get("init_from") != PRETRAIN:
        return None
    return join_key(PRETRAIN, stage_seed(seed, meta.seeds, meta.pretrain["per_seed"]))


def enqueue_missing(study: optuna.Study, retry_failed: bool) -> list[str]:
    """Queue every cell that has no COMPLETE, WAITING or RUNNING trial.

    A cell whose trial failed is queued again only with `retry_failed` (a new `ablate run`),
    except when its worker died (reaped), its training diverged, or its pretraining had failed:
    that trial is retried at once, by any worker, a diverged one until it diverged
    DIVERGED_ATTEMPTS times (then it is settled). A cell that fine-tunes from a pretraining run
    is queued only once that run is done, so no worker ever pops a cell that must wait; when the
    pretraining failed for this run of the study, the cell fails too, naming it (`blocked_by`).
    """
    meta = read(study)
    queued = []
    by_cell = trials_by_cell(study)
    # Pretraining cells first: whether a dependent may be queued reads their state.
    for key in sorted(meta.cells, key=lambda k: split_key(k)[0] != PRETRAIN):
        trials = by_cell.get(key, [])
        if any(t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) for t in trials):
            continue
        failed = [t for t in trials if t.state == TrialState.FAIL]
        if sum(map(diverged, failed)) >= DIVERGED_ATTEMPTS:
            continue  # settled: the recipe diverges on this seed, which is a result
        if failed and not retry_failed and not all(_retry_at_once(t) for t in failed):
            continue
        pre = pretrain_cell(meta, key)
        if pre is not None and not _pretrained(study, meta, key, pre, by_cell.get(pre, []), trials):
            continue
        arm, seed = split_key(key)
        study.enqueue_trial({}, user_attrs={"arm": arm, "seed": seed, "attempt": len(trials) + 1})
        queued.append(key)
        if arm == PRETRAIN:  # its dependents read the trial just queued; no other cell reads this one's
            by_cell = trials_by_cell(study)
    return queued


def _retry_at_once(trial: FrozenTrial) -> bool:
    """A failure that is no result of the cell's recipe: its worker died, or its pretraining failed."""
    return "harness.reaped" in trial.system_attrs or diverged(trial) or "blocked_by" in trial.user_attrs


def _pretrained(study: optuna.Study, meta: StudyRecord, key: str, pre: str, pre_trials: list[FrozenTrial],
                trials: list[FrozenTrial]) -> bool:
    """Whether the pretraining cell `pre` of cell `key` is done. When it failed and will not be
    retried by this run's workers, `key` gets a FAIL trial saying so (once per failed try)."""
    if any(t.state == TrialState.COMPLETE for t in pre_trials):
        return True
    if not pre_trials or any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in pre_trials):
        return False
    last = max(pre_trials, key=lambda t: t.number)
    if last.state != TrialState.FAIL or (_retry_at_once(last) and sum(map(diverged, pre_trials)) < DIVERGED_ATTEMPTS):
        return False  # about to be retried (pretraining cells are topped up first)
    if any(t.user_attrs.get("blocked_by") == last.number for t in trials):
        return False
    arm, seed = split_key(key)
    reason = last.user_attrs.get("error") or last.system_attrs.get("harness.reaped") or "failed"
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "arm": arm, "seed": seed, "attempt": len(trials) + 1, "blocked_by": last.number,
        "error": f"its pretraining run ({pre}, trial {last.number}) failed: {reason}; fix it and run the "
                 f"study again: the pretraining runs first, then this cell"}))
    return False


def first_owner(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """Another trial of the same cell that has this cell already (complete, or started first)."""
    for other in trials_by_cell(study).get(cell_key(trial), []):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return other
        if other.state == TrialState.RUNNING and other.number < trial.number:
            return other
    return None


def cell_status(study: optuna.Study) -> dict[str, str]:
    """Each cell's state: done, diverged (settled), running, failed, waiting (queued, or not yet
    queued because the pretraining run it fine-tunes from is queued or training) or missing."""
    out = {}
    meta = read(study)
    by_cell = trials_by_cell(study)
    # Pretraining cells first: a dependent with no trial of its own waits while they do.
    for key in sorted(meta.cells, key=lambda k: split_key(k)[0] != PRETRAIN):
        trials = by_cell.get(key, [])
        states = {t.state for t in trials}
        pre = pretrain_cell(meta, key)
        out[key] = ("done" if TrialState.COMPLETE in states else
                    "running" if TrialState.RUNNING in states else
                    "waiting" if TrialState.WAITING in states else
                    "diverged" if sum(map(diverged, trials)) >= DIVERGED_ATTEMPTS else
                    "failed" if TrialState.FAIL in states else
                    "waiting" if pre is not None and out.get(pre) in ("waiting", "running") else "missing")
    return {key: out[key] for key in meta.cells}


def cell_places(study: optuna.Study) -> dict[str, tuple[str, str]]:
    """Each cell's (host, device) where its deciding trial ran: the COMPLETE one, else the
    running one, else the latest that started; ('-', '-') for a cell no worker took yet. The
    host is the worker's (harness.studies.liveness), the device its run's harness.device."""
    out = {}
    by_cell = trials_by_cell(study)
    order = (TrialState.COMPLETE, TrialState.RUNNING)
    for key in read(study).cells:
        taken = [t for t in by_cell.get(key, []) if ATTR in t.system_attrs]
        if not taken:
            out[key] = ("-", "-")
            continue
        trial = min(taken, key=lambda t: (order.index(t.state) if t.state in order else len(order), -t.number))
        out[key] = (trial.system_attrs[ATTR]["host"], trial.user_attrs.get("device", "-"))
    return out


def aligned(rows: list[tuple]) -> str:
    """Rows as left-aligned columns (the first row the header): the cells tables of `ablate run`
    and `ablate status --cells`."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def status_by_arm(study: optuna.Study) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for key, state in cell_status(study).items():
        row = counts.setdefault(split_key(key)[0], dict.fromkeys(CELL_STATES, 0))
        row[state] += 1
    return counts
