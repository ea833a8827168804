"""`ablate search studies/NAME.yaml`: an Optuna search over a regularization space.

The spec (parsed and validated by `harness.studies.search_space`; any error is one line, exit 2, and
nothing is created)::

    name: regularization
    description: optional text, shown in MLflow
    base: {model: {n_layer: 2}, train: {epochs: 10}}     # the recipe every trial starts from
    objective: val_loss          # or [val_loss, gap] (Pareto front), or the explicit mapping
                                 #   {metrics: [val_loss, gap], at: best | final}
    sampler: tpe                 # tpe (multivariate, group=True) | random | grid | nsga2, or
                                 #   {name: tpe, seed: 0, n_startup_trials: 8}
    pruner: median               # median | hyperband | none, or {name: median, n_warmup_steps: 2}
    trials: 40                   # the total the study reaches (--trials overrides)
    seeds_per_trial: 1           # k paired seeds per trial: base train.seed + 0..k-1
    baseline: {optim.weight_decay: 1.0e-5}   # dotted overrides of base; enqueued as trial 0
    confirm: {top: 3, seeds: 5}  # re-run the best 3 on 5 fresh seeds (1000..1004) vs the baseline
    space:                       # dotted config paths, searched in this order
      model.dropout: {float: [0.0, 0.5]}                        # also log: true, or step: 0.1
      optim.weight_decay: {float: [1.0e-5, 0.1], log: true}
      train.batch_size: {int: [16, 64], step: 16}
      optim.clip_norm: {categorical: [null, 0.5, 1.0]}
      schedule.name: {categorical: [constant, step]}
      schedule.step_size: {int: [2, 5], when: {schedule.name: step}}   # only in that branch
      # or whole mappings as choices (instead of schedule.name and its keys):
      # schedule: {categorical: [{name: constant}, {label: cos, value: {name: cosine}}]}

Objective. `at: best` (the default) takes each metric at the evaluation with the lowest
val_loss (the run summary's best_val_loss and gap_at_best); `at: final` at the last evaluation
(final_val_loss, final_gap). Both objectives are minimised. With seeds_per_trial k, a trial's
value is the mean over its k seeds.

Space. Categorical choices that are not JSON primitives (mappings, lists) go to Optuna as a
label (`format_value`, or the `label:` given) and are decoded back. `when:` names parameters
listed above; the parameter is suggested only when all its conditions hold (define-by-run), so
Optuna never records a value that did not shape the recipe. `schedule.name` switches the
scheduler and keeps only the base schedule's keys the new one accepts. The baseline must be a
point of the space (base + values of searched parameters): Optuna would otherwise store an
out-of-range value that TPE learns from but can never sample.

Pruning. Each evaluation of a trial's first seed reports the objective's val_loss as Optuna's
intermediate value at step = evaluation index (0, 1, ...): the best val_loss so far with
`at: best` (a trial must not be pruned for overfitting after it already set a good best), the
current val_loss with `at: final`. With several seeds per trial only the first seed's curve is
reported and pruned: every trial's first seed is the same seed, so the pruner compares paired
curves, and the later seeds run whole. The last evaluation is reported but never pruned (the
budget is spent; pruning would only discard the result). A pruned trial's MLflow run ends KILLED with
`harness.reason` naming the pruner, the epoch and the value. Optuna prunes single-objective
studies only, so two objectives need `pruner: none` (their default).

The total (`--trials N`) is exact, with any number of workers on any number of machines, and a
rerun continues to it. Counted toward the total: COMPLETE, PRUNED, RUNNING and WAITING trials,
and FAIL trials that raised (a recipe that diverges is a result of the search; replacing it
could loop forever when every recipe fails). Not counted, and replaced: trials interrupted
(Ctrl-C), reaped after their worker died, or surplus. The reservation: the driver, and every
worker before it takes a trial, adds the missing count as bare WAITING trials (the baseline
first while no counted trial is the baseline); workers only ever pop queued trials, never
`Study.ask()` a fresh one. Two workers topping up at once can queue one trial too many, so a
worker that pops a trial checks, under the storage, how many counted trials have a smaller
number: with the total already ahead of it, the trial is told FAIL (user attribute `skipped`)
without training. Counted trials only ever leave the count (FAIL), never join it late, and new
trials always get larger numbers, so no trial that trains can be beyond the total.

After the search: the COMPLETE / PRUNED / FAIL counts, the best trial (the Pareto front for two
objectives), parameter importance (PED-ANOVA, Optuna 5's default evaluator, or fANOVA with
`--importance fanova`; fANOVA leaves out conditional parameters) and figures are printed or
logged under `search/` on the study's parent MLflow run: trials.csv, best_trials.json,
importance.csv/json/png, history.png, intermediate.png (single objective), pareto.png (two).
Then, when the total was reached and the spec asks, the confirmation: an ablation study
`<name>-confirm` (baseline + the top trials, on fresh paired seeds), run by the ablation engine.

Exit status: 0 when the study reached its total (or stopped at --timeout) with at least one
COMPLETE trial; 1 otherwise; 2 for bad input.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections import Counter
from contextlib import suppress
from typing import Callable

import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState, create_trial

from harness.studies.ablation import cells_table
from harness.core.config import Config
from harness.core.errors import UsageError
from harness.studies.launch import default_workers, follow, layout, spawn_workers, threads_per_worker
from harness.studies.liveness import Heartbeat
from harness.core.metrics import Evaluation
from harness.tracking.mlflow_ui import set_view, trials_view
from harness.core.paths import mlruns_dir
from harness.tracking.run import RunOutcome, preflight, run_tracked
from harness.studies.search_space import SearchSpec, load_search_spec, parse_search_spec, space_configs
from harness.studies.spec import AblationSpec, Arm, cell_config, format_value
from harness.tracking.storage import default_storage, open_storage
from harness.studies.study import (ATTR, REPORTED, SETTLED, cell_status, create_ablation, created_study, info, mean_ci,
                           reap_dead, tell_or_close_stale, write_arm_summaries)
from harness.tracking.store import experiment_id, init_store, redact
from harness.studies.worker import POLL_S, DataCache, fail_trial, others_running



# --- the total: which trials count, reserving, popping ----------------------------------------------

def counts_toward_total(trial: FrozenTrial) -> bool:
    """See the module docstring: everything but FAIL trials that did not raise."""
    return trial.state != TrialState.FAIL or "error" in trial.user_attrs


def is_baseline(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("baseline"))


def reserve(study: optuna.Study) -> int:
    """Enqueue what the study lacks to reach its total; returns how many trials were queued."""
    meta = info(study)
    counted = [t for t in study.get_trials(deepcopy=False) if counts_toward_total(t)]
    missing = meta["target"] - len(counted)
    if missing <= 0:
        return 0
    has_baseline = any(is_baseline(t) for t in counted)
    if not has_baseline:
        study.enqueue_trial(meta["baseline_labels"], user_attrs={"baseline": True})
    for _ in range(missing - (not has_baseline)):
        # A bare WAITING trial, not enqueue_trial({}): that marks the trial "fixed_params", and
        # GridSampler leaves such trials without a grid point.
        study.add_trial(create_trial(state=TrialState.WAITING))
    return missing


def surplus_reason(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """Why a just-popped trial must not train (a race queued it twice or beyond the total)."""
    target = info(study)["target"]
    ahead = [t for t in study.get_trials(deepcopy=False)
             if t.number < trial.number and counts_toward_total(t)]
    if len(ahead) >= target:
        return f"surplus: {len(ahead)} earlier trials already make the total of {target}"
    if is_baseline(trial) and any(is_baseline(t) for t in ahead):
        return "surplus: the baseline was queued twice"
    return None


def pop_slot(study: optuna.Study, spec: SearchSpec) -> tuple[optuna.Trial, Heartbeat] | None:
    """Take and claim the next queued trial (never create one: the queue is the total), or None."""
    while True:
        study._thread_local.cached_all_trials = None  # as Study.ask(): sample on a fresh history
        trial_id = study._pop_waiting_trial_id()
        if trial_id is None:
            return None
        # Claim it at once: a RUNNING trial that names no worker is reaped only after the grace period.
        beat = Heartbeat(study, trial_id)
        frozen = study._storage.get_trial(trial_id)
        why = surplus_reason(study, frozen)
        if why is None:
            # A fresh sampler per trial, seeded by its number: see SearchSpec.make_sampler.
            study.sampler = spec.make_sampler(frozen.number)
            return optuna.Trial(study, trial_id), beat
        beat.stop()
        study._storage.set_trial_user_attr(trial_id, "skipped", why)
        study._storage.set_trial_state_values(trial_id, TrialState.FAIL)


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state.is_finished() and counts_toward_total(t))


def past_deadline(study: optuna.Study) -> bool:
    deadline = info(study).get("deadline")
    return deadline is not None and time.time() > deadline


def spec_of(study: optuna.Study) -> SearchSpec:
    return parse_search_spec(info(study)["spec"])


# --- a worker -----------------------------------------------------------------------------------------

def run_search_worker(study: optuna.Study, client: MlflowClient) -> int:
    """Serve a search study until it reaches its total (or its deadline); returns trials trained.

    Called by `harness.studies.worker.run_worker` for studies of type "search". Like an ablation worker
    it stays while others run, to take over the trial of a worker that died.
    """
    spec = spec_of(study)
    study = optuna.load_study(study_name=study.study_name, storage=study._storage,
                              sampler=spec.make_sampler(), pruner=spec.make_pruner())
    data = DataCache()
    trained = 0
    while True:
        reap_dead(study, client)
        if past_deadline(study):
            return trained
        reserve(study)
        slot = pop_slot(study, spec)
        if slot is None:
            if not others_running(study):
                return trained
            time.sleep(POLL_S)
            continue
        run_trial(study, *slot, spec, client, data)
        trained += 1


def run_trial(study: optuna.Study, trial: optuna.Trial, beat: Heartbeat, spec: SearchSpec,
              client: MlflowClient, data: DataCache) -> None:
    """Suggest, train every seed as its own MLflow run, and tell Optuna how the trial ended.

    A trial that raises (a diverging recipe, an invalid combination) is FAIL in Optuna with the
    error as user attribute `error`, its MLflow run FAILED (run_tracked closes it); the worker
    goes on with the next trial. Ctrl-C fails the trial (it is replaced on the next run).
    """
    runs: list[str] = []
    try:
        values = spec.suggest(trial)
        cfg = spec.config_for(values, where=f"trial {trial.number}: ")
        outcomes = []
        for i, seed in enumerate(spec.seeds):
            hook = pruning_hook(trial, spec, cfg) if i == 0 and not spec.objective.multi else None
            outcomes.append(_train_seed(study, trial, cell_config(cfg, seed), client, data, hook, runs))
            if outcomes[-1].status == "KILLED":
                break
    except KeyboardInterrupt:
        fail_trial(study, trial, beat)
        raise
    except Exception as exc:
        fail_trial(study, trial, beat, exc)
        return
    beat.stop()
    # Reaped while it ran: its attributes are frozen, and _tell closes its runs as stale.
    with suppress(optuna.exceptions.UpdateFinishedTrialError):
        _record(trial, outcomes)
    _tell(study, trial, spec, outcomes, runs, client)


def _train_seed(study: optuna.Study, trial: optuna.Trial, cfg: Config, client: MlflowClient,
                data: DataCache, hook: Callable[[Evaluation], str | None] | None,
                runs: list[str]) -> RunOutcome:
    meta = info(study)

    def started(run_id: str) -> None:
        runs.append(run_id)
        # The reaper closes the run named here when this worker dies: the one in progress.
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("mlflow_run_ids", list(runs))

    return run_tracked(cfg, client, meta["experiment"], run_name=f"trial-{trial.number} seed={cfg.train.seed}",
                       parent_run_id=meta["parent_run_id"], should_stop=hook, on_start=started,
                       tags={"harness.studies.study": study.study_name, "harness.arm": f"trial-{trial.number}",
                             "optuna.trial_number": trial.number},
                       dataset=data.get(cfg))


def pruning_hook(trial: optuna.Trial, spec: SearchSpec, cfg: Config) -> Callable[[Evaluation], str | None]:
    """run_tracked's should_stop: report each evaluation, return the reason when pruned.

    The last evaluation is reported but never pruned: the run has spent its budget by then, and
    pruning it would only throw its result away.
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
        what = "best val_loss so far" if spec.objective.at == "best" else "val_loss"
        rule = ("worse than the median of earlier trials at this evaluation" if spec.pruner.name == "median"
                else "below the cut of its Hyperband rung")
        return (f"pruned by the {spec.pruner.name} pruner at epoch {ev.epoch:g} (evaluation {step + 1}): "
                f"{what} {value:.4f} {rule}")

    return should_stop


def _record(trial: optuna.Trial, outcomes: list[RunOutcome]) -> None:
    """Seed means of the run summaries, and the epochs trained (what pruning saves)."""
    summaries = [o.result.summary for o in outcomes]
    for name in (*REPORTED, "final_val_loss"):
        values = [getattr(s, name) for s in summaries if getattr(s, name) is not None]
        if values:
            trial.set_user_attr(name, float(sum(values) / len(values)))
    trial.set_user_attr("epochs", float(sum(o.result.history[-1].epoch for o in outcomes if o.result.history)))


def _tell(study: optuna.Study, trial: optuna.Trial, spec: SearchSpec, outcomes: list[RunOutcome],
          runs: list[str], client: MlflowClient) -> None:
    if outcomes[-1].status == "KILLED":
        tell_or_close_stale(study, trial, TrialState.PRUNED, None, client, runs)
    else:
        tell_or_close_stale(study, trial, TrialState.COMPLETE,
                            [sum(getattr(o.result.summary, name) for o in outcomes) / len(outcomes)
                             for name in spec.objective.names], client, runs)


# --- the driver -------------------------------------------------------------------------------------------

def run_search(spec_path: str, trials: int | None, workers: int | None, storage_url: str | None,
               timeout: float | None, importance: str) -> int:
    """Validate, create or reopen the study, run it to its total with local workers, then
    summarise, log the figures and run the confirmation. Returns the exit status."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the summary below says what happened
    spec = load_search_spec(spec_path)
    target = _target(spec, trials)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout={timeout:g}: allowed: a positive, finite number of seconds")
    data, checked = DataCache(), set()
    # The baseline (every seed in range) and every point space_configs validates: corpus, device,
    # prompt and model are checked before the study exists, once per distinct setup of them.
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
    url = storage_url or default_storage()
    storage = open_storage(url)  # a storage that does not answer stops before the plan is printed
    client = init_store()
    print(describe(spec, target))
    study = create_search(spec, storage, url, client, target,
                          None if timeout is None else time.time() + timeout)
    reap_dead(study, client)
    reserve(study)
    _tag_baseline(study, client)
    todo = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING)
    if todo == 0:
        print(f"the study already has its {target} trials; nothing to run")
    else:
        _run_workers(study, url, workers, todo, target, client)
    return finish_search(study, spec, client, importance, workers, url, timed_out=past_deadline(study))


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


def create_search(spec: SearchSpec, storage: optuna.storages.BaseStorage, storage_url: str,
                  client: MlflowClient, target: int, deadline: float | None) -> optuna.Study:
    """Create (or reopen) the study and its MLflow parent run; the driver does this before any
    worker starts. A reopened study must have the same fingerprint (base, space, objective, ...)."""
    fingerprint = json.loads(json.dumps(spec.fingerprint()))  # as the storage gives it back

    def meta(parent: str) -> dict:
        return {"type": "search", "experiment": spec.name, "parent_run_id": parent, "spec": spec.raw,
                "fingerprint": fingerprint, "baseline_labels": spec.baseline_labels,
                "target": target, "deadline": deadline}

    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        study = None
    if study is not None:
        old = info(study)
        if old.get("type") != "search":
            raise UsageError(f"study {spec.name!r} exists and is a {old.get('type')}, not a search; rename the spec")
        changed = [k for k, v in fingerprint.items() if old["fingerprint"].get(k) != v]
        if changed:
            raise UsageError(f"the spec of study {spec.name!r} changed since it ran ({', '.join(changed)} "
                             f"differ); give the study a new name (name: {spec.name}-v2) to search the new "
                             f"space, or restore the spec to continue the old one")
        client.update_run(old["parent_run_id"], status="RUNNING")
        study.set_user_attr(ATTR, meta(old["parent_run_id"]))
        _set_trials_view(client, spec)
        return study
    with created_study(storage, spec.name, ["minimize"] * len(spec.objective.names), client) as (study, made):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.objective.names)
        _create_parent(client, spec, storage_url, made)
        study.set_user_attr(ATTR, meta(made[0]))
        _set_trials_view(client, spec)
    return study


def _set_trials_view(client: MlflowClient, spec: SearchSpec) -> None:
    """The search's runs table in the MLflow UI (harness.tracking.mlflow_ui): trials best first."""
    set_view(client, experiment_id(client, spec.name),
             trials_view(spec.objective.names, [p.path for p in spec.space]))


def _create_parent(client: MlflowClient, spec: SearchSpec, storage_url: str, made: list[str]) -> str:
    """The study's parent run, listed in `made` as soon as it exists (see created_study)."""
    note = spec.description or f"Optuna search {spec.name}"
    run = client.create_run(experiment_id(client, spec.name), run_name=f"study {spec.name}", tags={
        "harness.kind": "study", "harness.studies.study": spec.name, "harness.study_type": "search",
        "harness.tracking.storage": redact(storage_url), "harness.objective": spec.objective.tag,
        "harness.objective_metric": spec.objective.names[0],
        "mlflow.note.content": f"{note} (objective: {', '.join(spec.objective.names)}, minimised)"})
    made.append(run.info.run_id)
    client.log_text(run.info.run_id, yaml.safe_dump(spec.raw, sort_keys=False), "spec.yaml")
    return run.info.run_id


def _tag_baseline(study: optuna.Study, client: MlflowClient) -> None:
    """harness.baseline_arm names the baseline trial's arm, so reports pair against it."""
    counted = [t for t in study.get_trials(deepcopy=False) if is_baseline(t) and counts_toward_total(t)]
    if counted:
        client.set_tag(info(study)["parent_run_id"], "harness.baseline_arm", f"trial-{counted[0].number}")


def _run_workers(study: optuna.Study, url: str, workers: int | None, todo: int, target: int,
                 client: MlflowClient) -> None:
    n = workers or default_workers(todo)
    logs = mlruns_dir() / "logs" / study.study_name
    print(f"running {todo} trial(s) to reach {target} with "
          f"{layout(n, {spec_of(study).base.train.threads})}; logs in {logs}")
    procs = spawn_workers(study.study_name, url, n, threads_per_worker(n), logs)
    # On Ctrl-C the stopped workers' trials fail at once; a rerun replaces them.
    codes = follow(procs, target, lambda: finished_count(study), study.study_name, poll_s=min(2.0, POLL_S),
                   on_interrupt=lambda: reap_dead(study, client))
    if any(codes):
        print(f"warning: worker exit codes {codes}; see the logs")


# --- after the search -------------------------------------------------------------------------------------

def finish_search(study: optuna.Study, spec: SearchSpec, client: MlflowClient, importance: str,
                  workers: int | None, url: str, timed_out: bool) -> int:
    trials = study.get_trials(deepcopy=False)
    target = info(study)["target"]
    done = finished_count(study)
    print(counts_line(trials))
    _tag_baseline(study, client)
    best = best_trials(study)
    print(best_lines(best, spec))
    # Imported here: importance (scikit-learn) and seaborn cost workers seconds they never use.
    from harness.report.search_figures import log_results

    notes = log_results(study, spec, client, best, importance)
    for note in notes:
        print(f"note: {note}")
    complete = any(t.state == TrialState.COMPLETE for t in trials)
    if done < target:
        why = "the --timeout passed" if timed_out else "workers stopped early"
        print(f"{done} of {target} trials finished ({why}); run the same command again to continue")
        return 0 if timed_out and complete else 1
    client.set_terminated(info(study)["parent_run_id"], status="FINISHED")
    print(f"search {spec.name} complete: ablate report {spec.name}   |   ablate ui --optuna")
    if spec.confirm is not None and complete:
        return run_confirm(spec, study, client, workers, url)
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


def run_confirm(spec: SearchSpec, study: optuna.Study, client: MlflowClient, workers: int | None,
                url: str) -> int:
    """Run the confirmation as the ablation study `<name>-confirm`; only missing cells run."""
    aspec = confirm_spec(spec, ranked(study))
    if len(aspec.arms) == 1:
        print("confirmation skipped: the best trials are the baseline's recipe")
        return 0
    confirm = create_ablation(aspec, open_storage(url), url, client)
    # Its report compares on the search's objective unless told otherwise (ablate report --metric).
    client.set_tag(info(confirm)["parent_run_id"], "harness.objective_metric", spec.objective.names[0])
    status = cell_status(confirm)
    todo = sum(1 for s in status.values() if s not in SETTLED)
    print(f"confirmation {aspec.name}: {len(aspec.arms)} arms x {len(aspec.seeds)} fresh seeds "
          f"({', '.join(map(str, aspec.seeds))})")
    if todo:
        n = workers or default_workers(todo)
        procs = spawn_workers(aspec.name, url, n, threads_per_worker(n), mlruns_dir() / "logs" / aspec.name)
        follow(procs, len(status), lambda: sum(s in SETTLED for s in cell_status(confirm).values()), aspec.name,
               on_interrupt=lambda: reap_dead(confirm, client))
    print(cells_table(confirm))
    missing = [k for k, s in cell_status(confirm).items() if s not in SETTLED]
    if missing:
        print(f"{len(missing)} confirmation runs did not finish; run the same command again to retry them")
        return 1
    write_arm_summaries(confirm, client)
    client.set_terminated(info(confirm)["parent_run_id"], status="FINISHED")
    print(confirm_lines(confirm, spec, client))
    return 0


def confirm_lines(confirm: optuna.Study, spec: SearchSpec, client: MlflowClient) -> str:
    """Per arm, objective and held-out loss: mean [95% CI] over the fresh seeds, and the paired
    difference to the baseline on the same seeds; then the arm with the lowest mean test_loss.

    The top trials were chosen on validation loss, so the objective on fresh seeds still reads the
    text that chose them; test_loss at the same evaluations is text no decision saw.
    """
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
            m = mean_ci([v[i] for v in by_seed.values()])
            part = f"{name} {m['mean']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"
            if arm != "baseline":
                d = mean_ci([by_seed[s][i] - base[s][i] for s in by_seed if s in base])
                part += f", vs baseline {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            parts.append(part)
        lines.append(f"  {arm:<10} " + "; ".join(parts))
    held_out = names.index("test_loss")
    winner = min(values, key=lambda a: sum(v[held_out] for v in values[a].values()) / len(values[a]))
    lines.append(f"lowest mean test_loss (held out, chose nothing) on fresh seeds: {winner}   "
                 f"(verdicts: ablate report {confirm.study_name})")
    return "\n".join(lines)
