"""`ablate search`: validate the spec, run the study to its total with local workers, then the
counts, the best trial (or Pareto front), the tables and figures logged under search/ on the
study's run (drawn by harness.report.search), and the confirmation: the ablation study
`<name>-confirm`, the baseline and the top trials on fresh paired seeds, run by the same engine
as any ablation. The spec format: docs/search-spec.md."""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from harness.core.errors import UsageError
from harness.studies.ablation import create_ablation, run_cells
from harness.studies.engine import DataCache, drive, reap_dead
from harness.studies.launch import Placement, visible_gpus
from harness.studies.record import read
from harness.studies.search import (counts_toward_total, create_search, finished_count, is_baseline, past_deadline,
                                    reserve, tag_baseline)
from harness.studies.search_space import SearchSpec, load_search_spec, space_configs
from harness.studies.spec import AblationSpec, Arm, cell_config, format_value


def run_search(spec_path: str, trials: int | None, placement: Placement, storage_url: str | None,
               timeout: float | None, importance: str) -> int:
    """Validate, create or reopen the study, run it to its total with local workers, then
    summarise, log the figures and run the confirmation. Returns the exit status: 0 when the
    study reached its total (or stopped at --timeout) with a COMPLETE trial, 1 otherwise."""
    from harness.tracking.storage import default_storage, open_storage
    from harness.tracking.store import init_store

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the summary below says what happened
    spec = load_search_spec(spec_path)
    target = _target(spec, trials)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout={timeout:g}: allowed: a positive, finite number of seconds")
    placement.devices(visible_gpus())  # a --gpus this machine lacks stops before anything is written
    _preflight(spec)
    url = default_storage(storage_url)
    storage = open_storage(url)  # a storage that does not answer stops before the plan is printed
    client = init_store()
    print(describe(spec, target))
    study = create_search(spec, storage, url, client, target, None if timeout is None else time.time() + timeout)
    reap_dead(study, client)
    reserve(study)
    tag_baseline(study, client)
    todo = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING)
    if todo == 0:
        print(f"the study already has its {target} trials; nothing to run")
    else:
        # On Ctrl-C the stopped workers' trials fail at once; a rerun replaces them.
        drive(study, url, client, placement, todo, f"{todo} trial(s) to reach {target}", target,
              lambda: finished_count(study), {spec.base.train.threads})
    return finish_search(study, spec, client, importance, placement, url, timed_out=past_deadline(study))


def _preflight(spec: SearchSpec) -> None:
    """The baseline (every seed in range) and every point space_configs validates: corpus,
    device, prompt and model are checked before the study exists, once per distinct setup."""
    from harness.tracking.run import preflight

    data, checked = DataCache(), set()
    for where, cfg in {"baseline: ": spec.baseline, **space_configs(spec.base, spec.space)}.items():
        try:
            seeded = [cell_config(cfg, seed) for seed in spec.seeds]
            tree = seeded[0].to_dict()
            key = json.dumps([tree[s] for s in ("data", "model", "transfer", "sample")] + [tree["train"]["device"]],
                             sort_keys=True)
            if key not in checked:
                checked.add(key)
                preflight(seeded[0], data.get(seeded[0]))
        except UsageError as exc:
            raise UsageError(f"{where}{exc}") from None


def _target(spec: SearchSpec, trials: int | None) -> int:
    target = trials or spec.trials
    if target is None:
        raise UsageError("trials: give the total in the spec (trials: 40) or with --trials N")
    grid = spec.grid_size()
    if grid is not None and target > grid:
        raise UsageError(f"--trials={target}: the grid has only {grid} points; allowed: 1..{grid}")
    return target


def describe(spec: SearchSpec, target: int) -> str:
    seeds = ",".join(map(str, spec.seeds))
    lines = [f"search {spec.name}: {target} trials, objective {' & '.join(spec.objective.names)} "
             f"(minimised), sampler {spec.sampler.describe()}, pruner {spec.pruner.describe()}, "
             f"seed{'s' if len(spec.seeds) > 1 else ''} {seeds} per trial"]
    for p in spec.space:
        rng = (", ".join(format_value(v) for v in p.values) if p.kind == "categorical"
               else f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "") + (f" step {p.step:g}" if p.step else ""))
        cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when) if p.when else ""
        lines.append(f"  {p.path:<22} {p.kind:<11} {rng}{cond}")
    return "\n".join(lines)


def finish_search(study: optuna.Study, spec: SearchSpec, client: MlflowClient, importance: str,
                  placement: Placement, url: str, timed_out: bool) -> int:
    from harness.report.search import log_search_results, trials_table

    trials = study.get_trials(deepcopy=False)
    target = read(study).target
    done = finished_count(study)
    print(counts_line(trials))
    tag_baseline(study, client)
    best = best_trials(study)
    print(best_lines(best, spec))
    notes = log_search_results(client, read(study).parent_run_id,
                               trials_table(trials, spec.objective.names, is_baseline, counts_toward_total), study,
                               spec.objective.names, spec.objective.at, best, importance)
    for note in notes:
        print(f"note: {note}")
    complete = any(t.state == TrialState.COMPLETE for t in trials)
    if done < target:
        why = "the --timeout passed" if timed_out else "workers stopped early"
        print(f"{done} of {target} trials finished ({why}); run the same command again to continue")
        return 0 if timed_out and complete else 1
    parent = read(study).parent_run_id
    if client.get_run(parent).info.status != "FINISHED":  # a rerun with nothing to do keeps its end time
        client.set_terminated(parent, status="FINISHED")
    print(f"search {spec.name} complete: ablate report {spec.name}   |   ablate ui --optuna")
    if spec.confirm is not None and complete:
        return run_confirm(spec, study, client, placement, url)
    return 0 if complete else 1


def counts_line(trials: list[FrozenTrial]) -> str:
    states = Counter(t.state.name for t in trials if counts_toward_total(t))
    replaced = sum(1 for t in trials if not counts_toward_total(t))
    epochs = sum(t.user_attrs.get("epochs", 0.0) for t in trials)
    line = (f"trials: COMPLETE {states['COMPLETE']}, PRUNED {states['PRUNED']}, FAIL {states['FAIL']}"
            f" (raised); epochs trained {epochs:g}")
    if states["RUNNING"] or states["WAITING"]:
        line += f"; still RUNNING {states['RUNNING']}, WAITING {states['WAITING']}"
    if replaced:
        line += f"; {replaced} not counted (interrupted, worker died, or surplus) and replaced"
    return line


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front sorted by the first objective."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: (t.values[0], t.number))


def best_lines(best: list[FrozenTrial], spec: SearchSpec) -> str:
    if not best:
        return "no trial completed: no best trial"
    head = "best trial" if len(best) == 1 else f"Pareto front ({len(best)} trials, by {spec.objective.names[0]})"
    lines = [head + ":"]
    for t in best:
        values = ", ".join(f"{n} {v:.4f}" for n, v in zip(spec.objective.names, t.values))
        params = ", ".join(f"{k}={format_value(v)}" for k, v in t.params.items())
        tag = " (baseline)" if is_baseline(t) else ""
        lines.append(f"  trial-{t.number}{tag}: {values}  run {t.user_attrs.get('mlflow_run_id', '-')}")
        lines.append(f"    {params}")
    return "\n".join(lines)


# --- confirmation ---------------------------------------------------------------------------------------------

def confirm_spec(spec: SearchSpec, best: list[FrozenTrial]) -> AblationSpec:
    """Baseline + the top trials (distinct recipes, not the baseline's) on the confirmation seeds."""
    arms = [Arm("baseline", {}, spec.baseline)]
    seen = {spec.baseline.hash()}
    for trial in best:
        if len(arms) > spec.confirm.top:
            break
        values = spec.decode(trial.params)
        cfg = spec.config_for(values)
        if cfg.hash() not in seen:
            seen.add(cfg.hash())
            arms.append(Arm(f"trial-{trial.number}", values, cfg))
    return AblationSpec(f"{spec.name}-confirm", "confirm", spec.base, arms, list(spec.confirm.seeds), "baseline",
                        f"Confirmation of search {spec.name}: its top {spec.confirm.top} trials against the "
                        f"baseline on fresh paired seeds")


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first (the Pareto front first for two objectives)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in best_trials(study)}
    return sorted(done, key=lambda t: (t.number not in front, t.values[0], t.number))


def run_confirm(spec: SearchSpec, study: optuna.Study, client: MlflowClient, placement: Placement,
                url: str) -> int:
    """Run the confirmation as the ablation study `<name>-confirm`; only missing cells run."""
    from harness.tracking.storage import open_storage

    aspec = confirm_spec(spec, ranked(study))
    if len(aspec.arms) == 1:
        print("confirmation skipped: the best trials are the baseline's recipe")
        return 0
    confirm = create_ablation(aspec, open_storage(url), url, client)
    # Its report compares on the search's objective unless told otherwise (ablate report --metric).
    client.set_tag(read(confirm).parent_run_id, "harness.objective_metric", spec.objective.names[0])
    print(f"confirmation {aspec.name}: {len(aspec.arms)} arms x {len(aspec.seeds)} fresh seeds "
          f"({', '.join(map(str, aspec.seeds))})")
    code = run_cells(aspec, confirm, url, client, placement)
    if code == 0:
        print(confirm_lines(confirm, spec, client))
    return code


def confirm_lines(confirm: optuna.Study, spec: SearchSpec, client: MlflowClient) -> str:
    """Per arm, objective and held-out loss: mean [95% CI] over the fresh seeds, and the paired
    difference to the baseline on the same seeds; then the arm with the lowest mean test_loss.

    The top trials were chosen on validation loss, so the objective on fresh seeds still reads the
    text that chose them; test_loss at the same evaluations is text no decision saw.
    """
    from harness.report.formatting import interval
    from harness.report.stats import mean_interval

    names = list(dict.fromkeys([*spec.objective.names, "test_loss"]))
    values: dict[str, dict[int, list[float]]] = {}
    for trial in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        metrics = client.get_run(trial.user_attrs["mlflow_run_id"]).data.metrics
        arm = values.setdefault(trial.user_attrs["arm"], {})
        arm[trial.user_attrs["seed"]] = [metrics[n] for n in names]
    base = values["baseline"]
    lines = [f"confirmation ({len(base)} fresh seeds; negative differences favour the arm):"]
    for arm, by_seed in values.items():
        parts = []
        for i, name in enumerate(names):
            m = mean_interval([v[i] for v in by_seed.values()])
            part = f"{name} {m['mean']:.4f} {interval(m['ci_low'], m['ci_high'], lambda x: f'{x:.4f}')}"
            if arm != "baseline":
                d = mean_interval([by_seed[s][i] - base[s][i] for s in by_seed if s in base])
                part += f", vs baseline {d['mean']:+.4f} {interval(d['ci_low'], d['ci_high'], lambda x: f'{x:+.4f}')}"
            parts.append(part)
        lines.append(f"  {arm:<10} " + "; ".join(parts))
    held_out = names.index("test_loss")
    winner = min(values, key=lambda a: sum(v[held_out] for v in values[a].values()) / len(values[a]))
    lines.append(f"lowest mean test_loss (held out, chose nothing) on fresh seeds: {winner}   "
                 f"(verdicts: ablate report {confirm.study_name})")
    return "\n".join(lines)
