"""Optuna searches: spec validation, the conditional space, the exact total with several workers,
pruning and failures in Optuna and MLflow, interrupt and rerun, two objectives, confirmation."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.cli import main
from harness.core.errors import UsageError
from harness.studies.search import counts_toward_total
from harness.studies.search_space import parse_search_spec
from harness.tracking.storage import default_storage, load_study
from harness.tracking.store import local_artifact_dir

from test_ablation import sigterm_reached, stopped_mid_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "optim.lr": {"categorical": [0.003, 1.0e-6, 1.0e30]},  # normal, pruned (learns nothing), diverges
    "model.dropout": {"float": [0.0, 0.3]},
    "schedule.name": {"categorical": ["constant", "step", "cosine"]},
    "schedule.step_size": {"int": [1, 2], "when": {"schedule.name": "step"}},
    "schedule.eta_min": {"float": [1.0e-5, 1.0e-4], "log": True, "when": {"schedule.name": "cosine"}},
}
RANDOM_SEED = 44
"""With the random sampler seeded 44, trials 1-2 train at lr 0.003, 3-4 at 1e-6 and 5 at 1e30
(each trial's sampler is seeded seed + trial number, so this holds with any worker timing)."""


def nested(tiny: dict) -> dict:
    base: dict = {}
    for key, value in tiny.items():
        section, leaf = key.split(".")
        base.setdefault(section, {})[leaf] = value
    return base


def write_search(project: Path, tiny: dict, name: str = "tiny", **extra) -> Path:
    base = nested(tiny)
    base["optim"] = {"clip_norm": None}  # lets lr 1e30 diverge (a trial that raises)
    spec = {"name": name, "base": base, "trials": 8,
            "sampler": {"name": "random", "seed": RANDOM_SEED},
            "pruner": {"name": "median", "n_startup_trials": 1}, "space": SPACE, **extra}
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def store() -> MlflowClient:
    return MlflowClient(mlflow.get_tracking_uri())


def runs_of(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'run'", max_results=1000)


def parent_of(study: optuna.Study) -> str:
    return study.user_attrs["harness"]["parent_run_id"]


def artifact(client: MlflowClient, run_id: str, path: str) -> Path:
    return local_artifact_dir(client, run_id) / path


def check_trials_against_mlflow(study: optuna.Study, client: MlflowClient) -> None:
    """Every trial's runs carry its arm and number; COMPLETE -> FINISHED, PRUNED -> KILLED with
    the pruning reason, a FAIL that raised -> FAILED with the error."""
    runs = {r.info.run_id: r for r in runs_of(client, study.study_name)}
    for t in study.get_trials():
        for run_id in t.user_attrs.get("mlflow_run_ids", []):
            run = runs.pop(run_id)
            assert run.data.tags["harness.arm"] == f"trial-{t.number}"
            assert run.data.tags["optuna.trial_number"] == str(t.number)
            if t.state == TrialState.COMPLETE:
                assert run.info.status == "FINISHED"
            elif t.state == TrialState.PRUNED:
                assert run.info.status == "KILLED"
                reason = run.data.tags["harness.reason"]
                assert reason.startswith("pruned by the median pruner at epoch ") and "evaluation" in reason
            elif "error" in t.user_attrs:
                assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["harness.error"]
            else:  # interrupted: its worker was stopped
                assert run.info.status == "KILLED"
    # A worker stopped between creating its run and naming it on the trial leaves a run the
    # trial does not list: it must be closed KILLED, and its trial replaced.
    for run in runs.values():
        trial = study.trials[int(run.data.tags["optuna.trial_number"])]
        assert run.info.status == "KILLED" and "worker died" in run.data.tags["harness.reason"]
        assert not counts_toward_total(trial)


# --- specs ----------------------------------------------------------------------------------------------

def spec_with(**changes) -> dict:
    raw = {"name": "s", "trials": 4, "space": {"model.dropout": {"float": [0.0, 0.3]},
                                               "schedule.name": {"categorical": ["constant", "step"]}}}
    for key, value in changes.items():
        if key == "space":
            raw["space"] = {**raw["space"], **value}
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize("changes, message", [
    ({"space": {"model.dropout": {"float": [0.3, 0.1]}}}, "space model.dropout: low=0.3 is greater than high=0.1"),
    ({"space": {"optim.weight_decay": {"float": [0.0, 0.1], "log": True}}},
     "space optim.weight_decay: log: true needs low > 0, got low=0.0"),
    ({"space": {"model.dropuot": {"float": [0.0, 0.1]}}},
     "space 'model.dropuot': not a config key (did you mean 'model.dropout'?)"),
    ({"space": {"schedule.step_size": {"int": [1, 3], "when": {"schedule.nam": "step"}}}},
     "space schedule.step_size: when names 'schedule.nam', which is not a parameter listed above"),
    ({"space": {"schedule.step_size": {"int": [1, 3], "when": {"schedule.name": "cosine"}}}},
     "when schedule.name='cosine': not a value of schedule.name; allowed: 'constant', 'step'"),
    ({"space": {"schedule.step_size": {"int": [1, 3]}}},
     "space schedule.step_size=1: unknown key 'schedule.step_size' for schedule 'constant'"),
    ({"space": {"model.dropout": {"float": [0.0, 1.5]}}},
     "space model.dropout=1.5: model.dropout=1.5: Input should be less than 1"),
    ({"sampler": "bayes"}, "sampler='bayes': unknown sampler; allowed: tpe, random, grid, nsga2"),
    ({"pruner": "percentile"}, "pruner='percentile': unknown pruner; allowed: median, hyperband, none"),
    ({"pruner": {"name": "median", "warmup": 2}}, "pruner 'median': unknown option 'warmup'"),
    ({"objective": ["val_loss", "gap"], "pruner": "median"}, "Optuna prunes single-objective studies only"),
    ({"objective": "gap"}, "objective='gap': allowed: val_loss, or [val_loss, gap]"),
    ({"objective": {"metrics": "val_loss", "at": "last"}}, "objective.at='last': allowed: best"),
    ({"baseline": {"model.dropout": 0.5}}, "baseline: model.dropout=0.5 is outside the space [0, 0.3]"),
    ({"baseline": {"train.epochs": 7}}, "baseline: it sets train.epochs, which the space does not search"),
    ({"space": {"train.seed": {"int": [0, 3]}}}, "space train.seed: seeds are not searched"),
    ({"confirm": {"top": 2, "seeds": [0, 1]}}, "confirm.seeds: seed 0 already trained every search trial"),
    ({"sampler": "grid", "space": {"schedule.step_size": {"int": [1, 3], "when": {"schedule.name": "step"}}}},
     "sampler='grid': a grid cannot take conditional"),
    ({"sampler": "grid"}, "space model.dropout: the grid sampler needs `step` on float parameters"),
    ({"trials": 0}, "trials=0: must be a positive integer"),
    ({"space": {"optim.clip_norm": {"categorical": [None, 1.0, None]}}}, "choice None is listed twice"),
])
def test_bad_search_specs_are_one_clear_error(changes, message):
    with pytest.raises(UsageError) as err:
        parse_search_spec(spec_with(**changes))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("space", [
    {"model.dropout": {"float": [0.4, 0.1]}},
    {"optim.weight_decay": {"float": [0.0, 0.1], "log": True}},
    {"model.dropuot": {"float": [0.0, 0.1]}},
    {"schedule.step_size": {"int": [1, 3], "when": {"schedule.nam": "step"}}},
])
def test_bad_spec_on_the_command_line_exits_2_and_creates_nothing(project, tiny, capsys, space):
    path = write_search(project, tiny)
    raw = yaml.safe_load(path.read_text())
    raw["space"] = {**raw["space"], **space}
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate: error: space ") and err.count("\n") == 1
    assert not (project / "mlruns" / "optuna.journal").exists()
    assert not (project / "mlruns" / "mlflow.db").exists()


@pytest.mark.parametrize("sampler", ["bayes", {"name": "tpe", "seeed": 1}])
def test_unknown_sampler_or_pruner_on_the_command_line(project, tiny, capsys, sampler):
    path = write_search(project, tiny, sampler=sampler)
    assert main(["search", str(path)]) == 2
    assert main(["search", str(write_search(project, tiny, name="p", pruner="sometimes"))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ablate: error: sampler") and err[1].startswith("ablate: error: pruner=")
    assert not (project / "mlruns").exists()


def test_the_shipped_specs_parse():
    root = Path(__file__).resolve().parents[1] / "studies"
    reg = parse_search_spec(yaml.safe_load((root / "regularization.yaml").read_text()))
    par = parse_search_spec(yaml.safe_load((root / "pareto.yaml").read_text()))
    assert reg.objective.names == ["best_val_loss"] and reg.pruner.name == "median"
    assert par.objective.names == ["best_val_loss", "gap_at_best"] and par.pruner.name == "none"
    assert [p.path for p in reg.space] == [p.path for p in par.space]
    assert reg.config_for(reg.decode(reg.baseline_labels)).hash() == reg.baseline.hash()
    assert reg.baseline_labels["schedule.name"] == "constant" and "schedule.step_size" not in reg.baseline_labels


def test_conditional_parameters_are_suggested_only_in_their_branch(tiny):
    raw = spec_with(space={"schedule.name": {"categorical": ["constant", "step", "cosine"]},
                           "schedule.step_size": {"int": [1, 4], "when": {"schedule.name": "step"}},
                           "schedule.gamma": {"float": [0.2, 0.8], "when": {"schedule.name": "step"}},
                           "schedule.eta_min": {"float": [1e-5, 1e-3], "log": True,
                                                "when": {"schedule.name": "cosine"}}},
                    sampler={"name": "tpe", "seed": 0, "n_startup_trials": 5})
    spec = parse_search_spec(raw)
    study = optuna.create_study(sampler=spec.make_sampler())
    for _ in range(30):
        trial = study.ask()
        cfg = spec.config_for(spec.suggest(trial))
        study.tell(trial, cfg.model.dropout + (0.1 if cfg.schedule.name == "step" else 0.0))
    branch_params = {"constant": set(), "step": {"schedule.step_size", "schedule.gamma"},
                     "cosine": {"schedule.eta_min"}}
    seen = set()
    for t in study.trials:
        name = t.params["schedule.name"]
        seen.add(name)
        assert set(t.params) - {"model.dropout", "schedule.name"} == branch_params[name]
        cfg = spec.config_for(spec.decode(t.params))
        assert cfg.schedule.name == name
        if name == "step":
            assert cfg.schedule.step_size == t.params["schedule.step_size"]
    assert seen == {"constant", "step", "cosine"}


def test_mapping_choices_are_encoded_as_labels_and_decoded():
    choices = [{"name": "constant"}, {"name": "step", "step_size": 3},
               {"label": "cos", "value": {"name": "cosine", "eta_min": 1e-4}}]
    raw = spec_with(space={"schedule": {"categorical": choices}})
    raw["space"].pop("schedule.name")
    spec = parse_search_spec(raw)
    (param,) = [p for p in spec.space if p.path == "schedule"]
    assert param.labels == ("constant", "step(step_size=3)", "cos")
    assert spec.config_for({"schedule": param.decode("cos")}).schedule.eta_min == 1e-4
    assert spec.baseline_labels["schedule"] == "constant"


def test_importance_and_figures_handle_few_and_enough_trials():
    from harness.report.search import importance_table, trials_table
    from harness.report.search_figures import history, importance, intermediate
    from harness.studies.search import is_baseline

    step_size = {"int": [1, 4], "when": {"schedule.name": "step"}}
    spec = parse_search_spec(spec_with(space={"schedule.step_size": step_size}))
    study = optuna.create_study(sampler=spec.make_sampler())
    table, notes = importance_table(study, spec.objective.names, "ped-anova")
    assert table.empty and "needs at least 4 completed trials; this study has 0" in notes[0]
    for i in range(12):
        trial = study.ask()
        cfg = spec.config_for(spec.suggest(trial))
        trial.report(1.0 + i, 0)
        study.tell(trial, 2 * cfg.model.dropout + (0.05 if cfg.schedule.name == "step" else 0.0))
    for evaluator in ("ped-anova", "fanova"):
        table, notes = importance_table(study, spec.objective.names, evaluator)
        assert table.groupby("objective")["importance"].sum().round(6).tolist() == [1.0]
        assert table.iloc[0]["param"] == "model.dropout"
        if evaluator == "fanova":
            assert "schedule.step_size" not in set(table["param"]) and "leaves out" in notes[0]
        bars = [p.get_width() for p in importance(table, evaluator).axes[0].patches if p.get_height() > 0]
        assert sorted(bars) == pytest.approx(sorted(table["importance"]))  # one bar per importance
    frame = trials_table(study.get_trials(), spec.objective.names, is_baseline)
    (best,) = [line for line in history(frame, spec.objective.names).axes[0].lines if line.get_label() == "best so far"]
    values = [t.value for t in sorted(study.trials, key=lambda t: t.number)]
    assert list(best.get_ydata()) == pytest.approx([min(values[:i + 1]) for i in range(len(values))])
    drawn = intermediate({t.number: (t.state.name, t.intermediate_values) for t in study.trials}, "v")
    curves = sorted(float(line.get_ydata()[0]) for line in drawn.axes[0].lines if len(line.get_ydata()))
    assert curves == [1.0 + i for i in range(12)]  # one curve per trial, at the value it reported


def reservation_study(spec, target: int) -> optuna.Study:
    """An in-memory study carrying what a driver stores (no training needed)."""
    study = optuna.create_study(sampler=spec.make_sampler())
    study.set_user_attr("harness", {"type": "search", "experiment": "reservation", "target": target, "baseline_labels": spec.baseline_labels})
    return study


def test_reservation_is_exact_and_a_raced_surplus_trial_never_trains():
    from harness.studies.engine import claim
    from harness.studies.search import Search, reserve

    spec = parse_search_spec(spec_with())
    study = reservation_study(spec, 5)
    assert reserve(study) == 5 and reserve(study) == 0
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs.get("baseline", False) for t in waiting] == [True, False, False, False, False]
    # Two workers topping up at once: each adds the one trial it saw missing.
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    trained = []
    while (slot := claim(study, Search(spec))) is not None:
        trial, beat = slot
        beat.stop()
        values = spec.suggest(trial)
        study.tell(trial, spec.config_for(values).model.dropout)
        trained.append(trial.number)
    assert trained == [0, 1, 2, 3, 4]
    assert study.trials[0].params == spec.baseline_labels
    surplus = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in surplus] == [5, 6] and all("surplus" in t.user_attrs["skipped"] for t in surplus)
    assert sum(map(counts_toward_total, study.trials)) == 5
    # A trial that raised counts (its recipe is a result); one that was interrupted is replaced.
    study.set_user_attr("harness", {**study.user_attrs["harness"], "target": 7})
    assert reserve(study) == 2
    for raised in (True, False):
        trial, beat = claim(study, Search(spec))
        beat.stop()
        if raised:
            trial.set_user_attr("error", "NonFiniteLoss: non-finite loss at step 1")
        study.tell(trial, state=TrialState.FAIL)
    assert reserve(study) == 1


def test_grid_sampler_walks_its_grid_through_the_reservation():
    from harness.studies.engine import claim
    from harness.studies.search import Search, reserve

    raw = spec_with(sampler="grid", space={"model.dropout": {"float": [0.0, 0.2], "step": 0.1}})
    spec = parse_search_spec(raw)
    assert spec.grid_size() == 6
    study = reservation_study(spec, 6)
    reserve(study)
    seen = []
    while (slot := claim(study, Search(spec))) is not None:
        trial, beat = slot
        beat.stop()
        values = spec.suggest(trial)
        study.tell(trial, 0.0)
        seen.append((round(values["model.dropout"], 6), values["schedule.name"]))
    assert seen[0] == (0.0, "constant") and len(seen) == 6  # the baseline, then grid points


def test_pruning_reports_the_best_so_far_and_never_prunes_the_last_evaluation(tiny):
    from harness.core.metrics import Evaluation
    from harness.studies.search import pruning_hook

    spec = parse_search_spec(spec_with(pruner={"name": "median", "n_startup_trials": 1}))
    cfg = spec.config_for({}).model_copy(update={"train": spec.base.train.model_copy(update={"epochs": 3})})
    study = optuna.create_study(pruner=spec.make_pruner())
    done = study.ask()
    for step, value in enumerate([2.0, 1.8, 1.7]):
        done.report(value, step)
    study.tell(done, 1.7)

    def ev(epoch: int, val: float) -> Evaluation:
        return Evaluation(step=10 * epoch, epoch=float(epoch), train_loss=val, train_eval_loss=val, val_loss=val,
                          test_loss=val, lr=1e-3, grad_norm=1.0, grad_norm_max=1.0, clip_frac=0.0, tokens_per_s=1.0)

    trial = study.ask()
    hook = pruning_hook(trial, spec, cfg)
    assert hook(ev(1, 1.9)) is None  # better than the median at evaluation 1
    reason = hook(ev(2, 2.5))  # reports the best so far (1.9), worse than 1.8
    assert reason == ("pruned by the median pruner at epoch 2 (evaluation 2): best val_loss so far 1.9000 "
                      "worse than the median of earlier trials at this evaluation")
    assert study.trials[1].intermediate_values == {0: 1.9, 1: 1.9}
    last = pruning_hook(study.ask(), spec, cfg)
    assert [last(ev(e, 9.0)) for e in (1, 2, 3)][2] is None  # the last one runs its budget out


# --- searches with workers ------------------------------------------------------------------------------

@pytest.mark.slow
def test_search_reaches_the_exact_total_with_pruned_failed_and_conditional_trials(project, tiny, capsys, monkeypatch):
    monkeypatch.setenv("ABLATE_POLL_S", "0.5")
    path = write_search(project, tiny)
    assert main(["search", str(path), "--trials", "8", "--workers", "2", "--importance", "fanova"]) == 0
    out = capsys.readouterr().out
    study = load_study("tiny", default_storage())
    trials = study.get_trials()
    assert sum(counts_toward_total(t) for t in trials) == 8
    assert all(t.state.is_finished() for t in trials)
    states = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(states[TrialState.PRUNED]) >= 1 and len(states[TrialState.FAIL]) >= 1
    assert f"trials: COMPLETE {len(states[TrialState.COMPLETE])}, PRUNED {len(states[TrialState.PRUNED])}, " \
           f"FAIL {len(states[TrialState.FAIL])} (raised)" in out
    # The baseline is trial 0, with the base's values.
    assert trials[0].user_attrs["baseline"] and trials[0].params == {
        "optim.lr": 0.003, "model.dropout": 0.0, "schedule.name": "constant"}
    for t in trials:
        if t.params["optim.lr"] == 1e30:
            assert t.state == TrialState.FAIL and t.user_attrs["error"].startswith("NonFiniteLoss")
        branch = {"step": {"schedule.step_size"}, "cosine": {"schedule.eta_min"}, "constant": set()}
        assert set(t.params) - {"optim.lr", "model.dropout", "schedule.name"} == branch[t.params["schedule.name"]]
    client = store()
    check_trials_against_mlflow(study, client)
    parent = client.get_run(parent_of(study))
    assert parent.info.status == "FINISHED"
    assert {k: parent.data.tags[k] for k in ("harness.kind", "harness.study_type", "harness.objective",
                                              "harness.baseline_arm")} == {
        "harness.kind": "study", "harness.study_type": "search", "harness.objective": "val_loss",
        "harness.baseline_arm": "trial-0"}
    assert parent.data.tags["harness.storage"] == default_storage()
    for name in ("trials.csv", "best_trials.json", "importance.csv", "importance.json", "history.png",
                 "intermediate.png"):
        assert artifact(client, parent.info.run_id, f"search/{name}").exists(), name
    best = json.loads(artifact(client, parent.info.run_id, "search/best_trials.json").read_text())
    assert [b["number"] for b in best] == [study.best_trial.number]
    assert f"trial-{study.best_trial.number}" in out and "best trial:" in out
    imp = json.loads(artifact(client, parent.info.run_id, "search/importance.json").read_text())
    assert imp["evaluator"] == "fANOVA"
    if len(states[TrialState.COMPLETE]) < 4:  # pruning is aggressive here: a note, not a crash
        assert "needs at least 4 completed trials" in imp["notes"][0] and not imp["importances"]
        assert "note: parameter importance needs at least 4 completed trials" in out
    else:
        assert artifact(client, parent.info.run_id, "search/importance.png").exists()
    table = pd.read_csv(artifact(client, parent.info.run_id, "search/trials.csv"))
    assert len(table) == len(trials) and table["counted"].sum() == 8


@pytest.mark.slow
def test_interrupted_search_reruns_to_the_same_total_without_duplicates(project, tiny, capsys, monkeypatch):
    monkeypatch.setenv("ABLATE_POLL_S", "0.5")
    monkeypatch.setenv("ABLATE_GRACE_S", "5")  # workers: reap an unclaimed trial within seconds
    monkeypatch.setattr("harness.studies.liveness.GRACE_S", 5.0)  # this process, the rerun's driver
    path = write_search(project, {**tiny, "train.epochs": 4}, pruner="none",
                        space={k: v for k, v in SPACE.items() if k != "optim.lr"})
    env = {**os.environ, "ABLATE_HOME": str(project)}
    # SIGINT at its default in the driver, as in a terminal: a test run started in the background
    # by a shell without job control (`make test &`) passes SIGINT on ignored.
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "search", str(path), "--trials", "6",
                               "--workers", "2"], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    finished = 0
    while finished < 2 and time.time() < deadline:
        time.sleep(0.5)
        try:
            finished = sum(t.state.is_finished() for t in load_study("tiny", default_storage()).get_trials())
        except UsageError:  # not created yet
            continue
    assert finished >= 2, "no trial finished"
    # Ctrl-C while a worker is mid-trial, made certain: that worker is frozen holding its trial
    # until the driver's SIGTERM has reached it (it dies without running on).
    held = stopped_mid_trial("tiny", default_storage(), deadline)
    pid = held.system_attrs["harness.worker"]["pid"]
    driver.send_signal(signal.SIGINT)
    while not sigterm_reached(pid) and time.time() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out
    study = load_study("tiny", default_storage())
    # The driver failed its workers' trials at once, the frozen one's among them, and closed its run;
    # a trial popped in the instant before its worker named itself on it is reaped after the grace period.
    stopped = study.trials[held.number]
    assert stopped.state == TrialState.FAIL and "is gone" in stopped.system_attrs["harness.reaped"]
    run = store().get_run(held.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "worker died" in run.data.tags["harness.reason"]
    assert all("harness.worker" not in t.system_attrs for t in study.get_trials(states=(TrialState.RUNNING,)))
    before = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}

    # A --timeout that passes before the workers are up starts no trial and keeps the reservation.
    capsys.readouterr()
    assert main(["search", str(path), "--trials", "6", "--workers", "1", "--timeout", "0.01"]) == 0
    assert "trials finished (the --timeout passed); run the same command again" in capsys.readouterr().out
    assert {t.number for t in load_study("tiny", default_storage()).get_trials(
        states=(TrialState.COMPLETE,))} == before

    assert main(["search", str(path), "--trials", "6", "--workers", "2"]) == 0
    study = load_study("tiny", default_storage())
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and before <= {t.number for t in complete}
    assert sum(map(counts_toward_total, trials)) == 6
    assert sum(1 for t in complete if t.user_attrs.get("baseline")) == 1
    client = store()
    check_trials_against_mlflow(study, client)
    finished_runs = [r for r in runs_of(client, "tiny") if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in finished_runs) == sorted(t.number for t in complete)
    # A third run has nothing left to do: it trains nothing and leaves the study's run as it was.
    parent = client.get_run(parent_of(study)).info
    assert parent.status == "FINISHED"
    assert main(["search", str(path), "--trials", "6"]) == 0
    assert len(load_study("tiny", default_storage()).get_trials()) == len(trials)
    again = client.get_run(parent_of(study)).info
    assert (again.status, again.end_time) == (parent.status, parent.end_time)


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front_with_paired_seeds_and_a_confirmation(project, tiny, capsys, monkeypatch):
    monkeypatch.setenv("ABLATE_POLL_S", "0.5")
    space = {k: v for k, v in SPACE.items() if k != "optim.lr"}
    path = write_search(project, tiny, name="front", objective=["val_loss", "gap"], pruner="none", trials=5,
                        seeds_per_trial=2, space=space, confirm={"top": 1, "seeds": 2})
    assert main(["search", str(path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    study = load_study("front", default_storage())
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 5
    client = store()
    runs = runs_of(client, "front")
    for t in complete:
        mine = [r for r in runs if r.data.tags["harness.arm"] == f"trial-{t.number}"]
        assert sorted(r.data.tags["harness.seed"] for r in mine) == ["0", "1"]
        for i, metric in enumerate(("best_val_loss", "gap_at_best")):
            assert t.values[i] == pytest.approx(sum(r.data.metrics[metric] for r in mine) / 2)
    front = {t.number for t in complete if not any(
        o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in complete)}
    parent = parent_of(study)
    best = json.loads(artifact(client, parent, "search/best_trials.json").read_text())
    assert {b["number"] for b in best} == front == {t.number for t in study.best_trials}
    assert artifact(client, parent, "search/pareto.png").exists()
    assert client.get_run(parent).data.tags["harness.objective"] == "val_loss,gap"
    assert f"Pareto front ({len(front)} trials" in out
    assert all(f"trial-{n}" in out for n in front)
    # The confirmation: the baseline and the best distinct trial on fresh seeds 1000 and 1001.
    confirm = load_study("front-confirm", default_storage())
    cells = {(t.user_attrs["arm"], t.user_attrs["seed"]) for t in confirm.get_trials(states=(TrialState.COMPLETE,))}
    arms = {arm for arm, _ in cells}
    assert len(arms) == 2 and "baseline" in arms and cells == {(a, s) for a in arms for s in (1000, 1001)}
    assert "lowest mean test_loss (held out, chose nothing) on fresh seeds:" in out
    summaries = client.search_runs([client.get_experiment_by_name("front-confirm").experiment_id],
                                   "tags.`harness.kind` = 'arm-summary'")
    assert sorted(r.data.tags["harness.arm"] for r in summaries) == sorted(arms)
    # Its report's secondary view is the search's objective, not the ablation default.
    from harness.report import build_report

    assert build_report("front-confirm", out_dir=project / "confirm-report").metric == "best_val_loss"


def test_reopening_a_study_keeps_it_and_a_changed_spec_is_refused(project, tiny, capsys):
    from harness.studies.search import create_search
    from harness.studies.search_space import load_search_spec
    from harness.tracking.storage import open_storage
    from harness.tracking.store import init_store

    path = write_search(project, tiny)
    client, url = init_store(), default_storage()
    first = create_search(load_search_spec(str(path)), open_storage(url), url, client, 8, None)
    again = create_search(load_search_spec(str(path)), open_storage(url), url, client, 10, None)
    assert again.user_attrs["harness"]["parent_run_id"] == first.user_attrs["harness"]["parent_run_id"]
    assert again.user_attrs["harness"]["target"] == 10
    path = write_search(project, {**tiny, "model.n_embd": 64})
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the spec of study 'tiny' changed since it ran (base, baseline differ)" in err and "tiny-v2" in err
