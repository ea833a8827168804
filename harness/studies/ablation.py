"""`ablate run`: validate a spec, create its study, run the missing cells with local workers,
print what ran, and write the arm summaries once every cell is done."""

from __future__ import annotations

import json

from optuna.trial import TrialState

from harness.core.errors import UsageError
from harness.studies.launch import default_workers, follow, layout, spawn_workers, threads_per_worker
from harness.tracking.mlflow_ui import DEFAULT_UI_URL, experiment_url
from harness.core.paths import mlruns_dir
from harness.tracking.run import preflight
from harness.studies.spec import AblationSpec, cell_config, load_spec
from harness.tracking.storage import default_storage, open_storage
from harness.studies.study import (DIVERGED_ATTEMPTS, SETTLED, cell_status, create_ablation, info,
                           reap_dead, trials_by_cell, write_arm_summaries)
from harness.tracking.store import init_store
from harness.studies.worker import DataCache


def check_cells(spec: AblationSpec) -> None:
    """Every cell's resolved config is checked before anything is written: its seed, its corpus
    (each distinct data setup loaded once), device, sample prompt, model and transfer checkpoint."""
    data = DataCache()
    for arm in spec.arms:
        try:
            cells = [cell_config(arm.config, seed) for seed in spec.seeds]
            preflight(cells[0], data.get(cells[0]))  # everything but the seed is the arm's
        except UsageError as exc:
            raise UsageError(f"arm {arm.label!r}: {exc}") from None


def describe(spec: AblationSpec) -> str:
    lines = [f"study {spec.name}: {spec.design}, {len(spec.arms)} arms x {len(spec.seeds)} seeds "
             f"= {len(spec.cells)} runs (baseline: {spec.baseline})"]
    width = max(len(a.label) for a in spec.arms)
    for arm in spec.arms:
        change = ", ".join(f"{k}={json.dumps(v)}" for k, v in arm.overrides.items()) or "(the base config)"
        lines.append(f"  {arm.label:<{width}}  seeds {','.join(map(str, spec.seeds))}  {change}")
    for label in spec.skipped:
        lines.append(f"  (level {label} equals the base config: it is the baseline)")
    return "\n".join(lines)


def run_ablation(spec_path: str, workers: int | None, storage_url: str | None, dry_run: bool,
                 allow_large: bool) -> int:
    spec = load_spec(spec_path, allow_large=allow_large or dry_run)  # a dry run says when --yes is needed
    check_cells(spec)
    if dry_run:
        from harness.studies.plan import describe_plan

        print(describe(spec))
        print(describe_plan(spec, storage_url or default_storage(), workers, yes=allow_large))
        return 0
    url = storage_url or default_storage()
    storage = open_storage(url)  # a storage that does not answer stops before the plan is printed
    client = init_store()
    print(describe(spec))
    study = create_ablation(spec, storage, url, client)
    status = cell_status(study)
    todo = sum(1 for s in status.values() if s not in SETTLED)
    if todo == 0:
        print("every cell is already done; nothing to run")
    else:
        n = workers or default_workers(todo)
        print(f"running {todo} of {len(status)} cells with "
              f"{layout(n, {a.config.train.threads for a in spec.arms})}; "
              f"logs in {mlruns_dir() / 'logs' / spec.name}")
        procs = spawn_workers(spec.name, url, n, threads_per_worker(n), mlruns_dir() / "logs" / spec.name)
        done = lambda: sum(1 for s in cell_status(study).values() if s in SETTLED)  # noqa: E731
        codes = follow(procs, len(status), done, spec.name, on_interrupt=lambda: reap_dead(study, client))
        if any(codes):
            print(f"warning: worker exit codes {codes}; see the logs")
    print(cells_table(study))
    status = cell_status(study)
    missing = [k for k, s in status.items() if s not in SETTLED]
    if missing:
        print(f"{len(missing)} of {len(status)} cells did not finish ({', '.join(missing[:5])}"
              f"{', ...' if len(missing) > 5 else ''}); run the same command again to retry them")
        return 1
    write_arm_summaries(study, client)
    parent = info(study)["parent_run_id"]
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


def cells_table(study) -> str:
    """arm, seed, state, best val loss, final gap, MLflow run id: one line per cell."""
    rows = [("arm", "seed", "state", "best_val", "final_gap", "mlflow run")]
    by_cell = trials_by_cell(study)
    status = cell_status(study)
    for key in info(study)["cells"]:
        arm, seed = key.rsplit("/seed=", 1)
        done = [t for t in by_cell.get(key, []) if t.state == TrialState.COMPLETE]
        latest = done[0] if done else (by_cell.get(key) or [None])[-1]
        attrs = latest.user_attrs if latest else {}
        rows.append((arm, seed, status[key],
                     f"{attrs['best_val_loss']:.4f}" if "best_val_loss" in attrs else "-",
                     f"{attrs['final_gap']:.4f}" if "final_gap" in attrs else "-",
                     attrs.get("mlflow_run_id", "-")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
