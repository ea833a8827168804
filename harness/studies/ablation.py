"""Ablation studies: every arm x every seed, each cell one MLflow run, paired by seed.

`ablate run` validates a spec, creates (or reopens) its study, runs the missing cells with
local workers (harness.studies.engine), prints what ran and writes the arm summaries once every
cell is done. A search's confirmation step is an ablation run the same way.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from harness.core.config import build_config, stored_config
from harness.core.errors import UsageError
from harness.studies.arms import create_arm_runs, set_study_view, write_arm_summaries
from harness.studies.cells import (DIVERGED_ATTEMPTS, SETTLED, aligned, cell_status, enqueue_missing, first_owner,
                                   pretrain_cell, retire_deleted_runs, trials_by_cell)
from harness.studies.engine import (DataCache, RunPlan, create_parent_run, created_study, drive, find_study,
                                    name_objectives)
from harness.studies.launch import Placement, visible_gpus
from harness.studies.record import StudyRecord, read, write
from harness.studies.spec import (PRETRAIN, AblationSpec, cell_config, join_key, load_spec, split_key, stage_seed,
                                  uses_pretrain)

CELL_OBJECTIVE = "best_val_loss of one cell (arm x seed)"
"""The objective's name in Optuna (optuna-dashboard shows it): an ablation's trials are cells,
so its "best trial" is one seed of one arm; arms are compared by `ablate report`."""


class Ablation:
    """The engine's strategy for an ablation: the queue holds the cells not yet done."""

    objectives = ["best_val_loss"]

    def stopped(self, study: optuna.Study) -> bool:
        return False

    def top_up(self, study: optuna.Study) -> None:
        enqueue_missing(study, retry_failed=False)

    def stand_down(self, study: optuna.Study, trial: FrozenTrial) -> tuple[str, int, TrialState] | None:
        # Two workers queued the same dead cell at once: the later copy stands down.
        owner = first_owner(study, trial)
        return None if owner is None else ("duplicate_of", owner.number, TrialState.PRUNED)

    def plan(self, study: optuna.Study, trial: optuna.Trial) -> list[RunPlan]:
        meta = read(study)
        arm, seed = trial.user_attrs["arm"], trial.user_attrs["seed"]
        tags = {"harness.arm": arm, "harness.seed": seed}
        if arm == PRETRAIN:
            # Nested under the study's run; the report lists these runs apart from the arms.
            cfg = cell_config(build_config(meta.pretrain["config"]), seed)
            return [RunPlan(cfg, f"{PRETRAIN} seed={seed}", meta.parent_run_id, {**tags, "harness.kind": PRETRAIN})]
        cfg = cell_config(build_config(meta.arms[arm]["config"]), seed)
        pre = pretrain_cell(meta, join_key(arm, seed))
        if pre is not None:
            # Resolved to the run itself: its params name the checkpoint it fine-tuned from.
            run_id = pretrain_run(study, pre)
            cfg = build_config(cfg.to_dict(), {"transfer.init_from": f"runs:/{run_id}"})
            tags["harness.pretrain_run"] = run_id
        # A cell nests under its arm's run (study -> arm -> seeds), or under the study's run in a
        # study created before arms had runs.
        return [RunPlan(cfg, f"{arm} seed={seed}", meta.arm_runs.get(arm, meta.parent_run_id), tags)]


def pretrain_run(study: optuna.Study, key: str) -> str:
    """The MLflow run of pretraining cell `key` (its COMPLETE trial's), which must be done."""
    done = [t for t in trials_by_cell(study).get(key, []) if t.state == TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"pretraining cell {key} is not done")  # enqueue_missing waits for it
    return done[0].user_attrs["mlflow_run_id"]


# --- creating an ablation study ----------------------------------------------------------------

def check_spec_unchanged(meta: StudyRecord, spec: AblationSpec, merged: StudyRecord) -> None:
    """An arm label that now means a different config would silently mix two recipes; so would
    cells that fine-tune from another pretraining than the one their study had (`merged`: the
    record with what `spec` adds). Stored recipes are compared under today's schema
    (stored_config): a key added since the study ran, at its default, changes nothing."""
    for arm in spec.arms:
        before = meta.arms.get(arm.label)
        if before is None:
            continue
        stored = stored_config(before["config"], f"arm {arm.label!r} of study {spec.name!r}")
        if stored.hash() != arm.config.hash():
            was, now = stored.flat(), arm.config.flat()
            changed = [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now))
                       if was.get(k) != now.get(k)]
            raise UsageError(
                f"the spec of study {spec.name!r} changed since it ran: arm {arm.label!r} now differs "
                f"({'; '.join(changed[:3])}); give the study a new name (name: {spec.name}-v2) to "
                f"run the new recipe, or restore the spec to finish the old one")
    if meta.pretrain is not None and spec.pretrain is not None and _stage(meta, meta.seeds) != _stage(merged, meta.seeds):
        raise UsageError(
            f"the spec of study {spec.name!r} changed since it ran: its pretraining stage now differs (its recipe, "
            f"per_seed, or with per_seed false a smaller seed that would pretrain instead); give the "
            f"study a new name (name: {spec.name}-v2) to run the new recipe (finished pretraining runs of the same "
            f"recipe are reused), or restore the spec to finish the old one")


def _stage(meta: StudyRecord, seeds: list[int]) -> tuple[str, bool, list[int]]:
    """The pretraining stage of the record `meta` for the cells of `seeds`: its recipe's hash
    (under today's schema), per_seed, and the seeds of the pretraining runs those cells fine-tune from."""
    per_seed = meta.pretrain["per_seed"]
    recipe = stored_config(meta.pretrain["config"], f"the pretraining stage of study {meta.experiment!r}")
    return recipe.hash(), per_seed, sorted({stage_seed(s, meta.seeds, per_seed) for s in seeds})


def _record(spec: AblationSpec, parent: str, previous: StudyRecord | None) -> StudyRecord:
    """The study record: what it had (`previous`) joined with what `spec` adds."""
    arms = dict(previous.arms) if previous else {}
    arms.update({a.label: {"config": a.config.to_dict(), "hash": a.config.hash()} for a in spec.arms})
    seeds = sorted(set(previous.seeds if previous else []) | set(spec.seeds))
    pretrain = previous.pretrain if previous else None
    pretrain_cells = []
    if spec.pretrain is not None:
        stage = spec.pretrain
        pretrain = {"config": stage.config.to_dict(), "hash": stage.config.hash(), "per_seed": stage.per_seed}
        # From the record's seeds, by the rule cells.pretrain_cell reads them with.
        pretrain_cells = [join_key(PRETRAIN, stage_seed(seed, seeds, stage.per_seed)) for seed in seeds]
    return StudyRecord(
        type="ablation", experiment=spec.name, parent_run_id=parent, arms=arms, seeds=seeds,
        cells=sorted({*(previous.cells if previous else []), *(c.key for c in spec.cells), *pretrain_cells}),
        baseline=spec.baseline, arm_runs=dict(previous.arm_runs) if previous else {}, pretrain=pretrain)


def create_ablation(spec: AblationSpec, storage: optuna.storages.BaseStorage, storage_url: str,
                    client: MlflowClient) -> optuna.Study:
    """Create (or reopen) the study, its MLflow runs (study, arms), then queue the missing cells.

    Runs in the driver before any worker starts, so workers always find a complete study. A
    rerun writes only what is new (arms, cells): with nothing to run it writes nothing.
    """
    existing = find_study(storage, spec.name)
    if existing is None:
        with created_study(storage, spec.name, ["minimize"], client) as (study, made):
            spec_doc = {"name": spec.name, "design": spec.design, "baseline": spec.baseline, "seeds": spec.seeds,
                        "base": spec.base.to_dict(),
                        "arms": [{"label": a.label, "set": a.overrides} for a in spec.arms]}
            parent = create_parent_run(client, spec.name, "ablation", storage_url,
                                       spec.description or f"Ablation study {spec.name} ({spec.design})",
                                       {"harness.baseline_arm": spec.baseline}, spec_doc, made)
            meta = _record(spec, parent, None)
            meta.arm_runs = create_arm_runs(client, meta, made)
            write(study, meta)
            name_objectives(study, [CELL_OBJECTIVE])
            set_study_view(client, meta)
            reuse_pretraining(study, client)
            enqueue_missing(study, retry_failed=True)
        return study
    previous = read(existing)
    if previous.type != "ablation":
        raise UsageError(f"study {spec.name!r} exists and is a {previous.type}, not an ablation; rename the spec")
    meta = _record(spec, previous.parent_run_id, previous)
    check_spec_unchanged(previous, spec, meta)
    meta.arm_runs = create_arm_runs(client, meta, [])
    write(existing, meta)
    if existing.metric_names is None:  # a study created before the objective had a name
        name_objectives(existing, [CELL_OBJECTIVE])
    set_study_view(client, meta)
    retire_deleted_runs(existing, client)
    reuse_pretraining(existing, client)
    enqueue_missing(existing, retry_failed=True)
    if any(state not in SETTLED for state in cell_status(existing).values()):
        client.update_run(previous.parent_run_id, status="RUNNING")
    return existing


def reuse_pretraining(study: optuna.Study, client: MlflowClient) -> list[str]:
    """A pretraining cell not yet done adopts a finished pretraining run of exactly its recipe
    (same config under today's schema, seed included) from any study of the project, so nothing
    is pretrained twice: the cell gets a COMPLETE trial naming that run (user attribute `reused`).
    A run whose checkpoint artifact is gone (deleted by hand) is passed over: its dependents could
    not load it. Returns the run ids adopted."""
    from optuna.trial import create_trial

    from harness.tracking.store import has_checkpoint

    meta = read(study)
    if meta.pretrain is None:
        return []
    by_cell = trials_by_cell(study)
    recipe = stored_config(meta.pretrain["config"], f"the pretraining stage of study {meta.experiment!r}")
    todo = {}
    for key in meta.cells:
        arm, seed = split_key(key)
        if arm == PRETRAIN and not any(t.state == TrialState.COMPLETE for t in by_cell.get(key, [])):
            todo[cell_config(recipe, seed).hash()] = (key, seed)
    if not todo:
        return []
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, "tags.`harness.kind` = 'pretrain' and attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time ASC"])
    adopted = []
    for run in found:
        digest = _hash_today(client, run, todo)
        if digest is None or not has_checkpoint(client, run.info.run_id):
            continue
        key, seed = todo.pop(digest)
        metrics = run.data.metrics
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=metrics.get("best_val_loss", float("nan")),
                                     user_attrs={"arm": PRETRAIN, "seed": seed, "mlflow_run_id": run.info.run_id,
                                                 "reused": True, **{k: metrics[k] for k in ("best_val_loss", "final_gap")
                                                                    if k in metrics}}))
        adopted.append(run.info.run_id)
    return adopted


def _hash_today(client: MlflowClient, run: Any, wanted: dict[str, Any]) -> str | None:
    """The hash of `run`'s config under today's schema when it is one of `wanted`, else None.

    Its harness.config_hash tag is the hash under the schema it trained with: equal to a wanted
    hash, the recipes are equal. Otherwise a run trained before the schema grew may still be the
    same recipe: its logged config.yaml is read under today's schema (stored_config); a run whose
    config cannot be read or no longer validates is not reused.
    """
    from harness.tracking.store import logged_config

    if run.data.tags.get("harness.config_hash") in wanted:
        return run.data.tags["harness.config_hash"]
    tree = logged_config(client, run.info.run_id)
    if tree is None:
        return None
    try:
        digest = stored_config(tree, f"pretraining run {run.info.run_id}").hash()
    except UsageError:
        return None
    return digest if digest in wanted else None


# --- `ablate run` ---------------------------------------------------------------------------------

def check_cells(spec: AblationSpec) -> None:
    """Every cell's resolved config is checked before anything is written: its seed, its corpus
    (each distinct data setup loaded once), device, sample prompt, model and transfer checkpoint."""
    from harness.tracking.run import preflight

    data = DataCache()
    if spec.pretrain is not None:
        from harness.core.leakage import check_pretraining_text

        try:
            preflight(cell_config(spec.pretrain.config, spec.pretrain_seeds[0]), data.get(spec.pretrain.config))
        except UsageError as exc:
            raise UsageError(f"pretrain: {exc}") from None
        # Against every held-out text a fine-tuning arm is measured on (an arm may change the data).
        studied = {DataCache.key(a.config): a.config for a in spec.pretrain_arms}
        for cfg in studied.values():
            check_pretraining_text(spec.pretrain.config, cfg, data.get)  # its errors name the stage
    for arm in spec.arms:
        try:
            cells = [cell_config(arm.config, seed) for seed in spec.seeds]  # every seed in range
            cfg = cells[0]  # everything but the seed is the arm's
            if uses_pretrain(cfg):  # its checkpoint does not exist yet; the spec checked it fits
                cfg = build_config(cfg.to_dict(), {"transfer.init_from": None})
            preflight(cfg, data.get(cfg))
        except UsageError as exc:
            raise UsageError(f"arm {arm.label!r}: {exc}") from None


def describe(spec: AblationSpec) -> str:
    lines = [f"study {spec.name}: {spec.design}, {len(spec.arms)} arms x {len(spec.seeds)} seeds "
             f"= {len(spec.cells)} runs (baseline: {spec.baseline})"]
    width = max(len(a.label) for a in spec.arms)
    for arm in spec.arms:
        lines.append(f"  {arm.label:<{width}}  seeds {','.join(map(str, spec.seeds))}  {_changes(arm.overrides)}")
    for label in spec.skipped:
        lines.append(f"  (level {label} equals the base config: it is the baseline)")
    if spec.pretrain is not None:
        lines.append(f"  pretraining ({len(spec.pretrain_seeds)} run(s), seeds {','.join(map(str, spec.pretrain_seeds))}; "
                     f"{', '.join(a.label for a in spec.pretrain_arms)} fine-tune from it): "
                     f"{_changes(spec.pretrain.overrides)}")
    return "\n".join(lines)


def _changes(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "(the base config)"


def run_ablation(spec_path: str, placement: Placement, storage_url: str | None, dry_run: bool,
                 allow_large: bool) -> int:
    from harness.tracking.storage import default_storage, open_storage
    from harness.tracking.store import init_store

    spec = load_spec(spec_path, allow_large=allow_large or dry_run)  # a dry run says when --yes is needed
    placement.devices(visible_gpus())  # a --gpus this machine lacks stops before anything is written
    check_cells(spec)
    url = default_storage(storage_url)
    if dry_run:
        from harness.studies.plan import describe_plan

        print(describe(spec))
        print(describe_plan(spec, url, placement, yes=allow_large))
        return 0
    storage = open_storage(url)  # a storage that does not answer stops before the plan is printed
    client = init_store()
    print(describe(spec))
    study = create_ablation(spec, storage, url, client)
    return run_cells(spec, study, url, client, placement)


def run_cells(spec: AblationSpec, study: optuna.Study, url: str, client: MlflowClient, placement: Placement) -> int:
    """Run a created study's missing cells, print the cells, and once every cell is settled write
    the arm summaries and close the study's run. 0 when complete, 1 when cells did not finish."""
    from harness.core.paths import mlruns_dir
    from harness.tracking.mlflow_ui import DEFAULT_UI_URL, experiment_url

    status = cell_status(study)
    todo = sum(1 for s in status.values() if s not in SETTLED)
    if todo == 0:
        print("every cell is already done; nothing to run")
    else:
        drive(study, url, client, placement, todo, f"{todo} of {len(status)} cells", len(status),
              lambda: sum(1 for s in cell_status(study).values() if s in SETTLED),
              {a.config.train.threads for a in spec.arms})
    print(cells_table(study))
    status = cell_status(study)
    missing = [k for k, s in status.items() if s not in SETTLED]
    if missing:
        print(f"{len(missing)} of {len(status)} cells did not finish ({', '.join(missing[:5])}"
              f"{', ...' if len(missing) > 5 else ''}); run the same command again to retry them "
              f"(worker logs in {mlruns_dir() / 'logs' / spec.name})")
        return 1
    write_arm_summaries(study, client)
    parent = read(study).parent_run_id
    if client.get_run(parent).info.status != "FINISHED":  # a rerun with nothing to do writes nothing
        client.set_terminated(parent, status="FINISHED")
    diverged = [k for k, s in status.items() if s == "diverged"]
    if diverged:
        print(f"{len(diverged)} cell(s) diverged (non-finite loss, {DIVERGED_ATTEMPTS} tries each): "
              f"{', '.join(diverged[:5])}{', ...' if len(diverged) > 5 else ''}; a result of their recipe, "
              f"listed in each arm summary's harness.diverged tag")
    exp_id = client.get_experiment_by_name(spec.name).experiment_id
    print(f"study {spec.name} complete: ablate report {spec.name}\n"
          f"  in the MLflow UI (start it with ablate ui): {experiment_url(DEFAULT_UI_URL, exp_id)}")
    return 0


def cells_table(study: optuna.Study) -> str:
    """arm, seed, state, best val loss, final gap, MLflow run id: one line per cell."""
    rows = [("arm", "seed", "state", "best_val", "final_gap", "mlflow run")]
    by_cell = trials_by_cell(study)
    status = cell_status(study)
    for key in read(study).cells:
        arm, seed = split_key(key)
        done = [t for t in by_cell.get(key, []) if t.state == TrialState.COMPLETE]
        latest = done[0] if done else (by_cell.get(key) or [None])[-1]
        attrs = latest.user_attrs if latest else {}
        rows.append((arm, seed, status[key],
                     f"{attrs['best_val_loss']:.4f}" if "best_val_loss" in attrs else "-",
                     f"{attrs['final_gap']:.4f}" if "final_gap" in attrs else "-",
                     attrs.get("mlflow_run_id", "-")))
    return aligned(rows)
