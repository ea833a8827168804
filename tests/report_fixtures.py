"""Realistic MLflow stores for the report tests and benchmark, written as docs/tracking.md says.

Runs are written directly with MlflowClient (one log_batch per run) from synthetic learning
curves: no training, but the same experiments, tags, params, metrics and history.json files the
training side writes. Seeds shift every arm's curves the same way, so arms are truly paired.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from harness.core.config import build_config
from harness.core.metrics import EVAL_METRICS
PATIENCE = 2
SCRIPT_ARM = "<script>alert(1)</script>"


def synthetic_history(overrides: dict[str, Any], seed: int, n_evals: int = 12,
                      steps_per_eval: int = 50) -> dict[str, list[float]]:
    """Per-evaluation metrics of a run that overfits: val loss falls, bottoms, then rises.

    Dropout and weight decay slow the gap's growth; the seed adds an offset shared by all arms
    (what pairing removes) plus a little run noise.
    """
    dropout = float(overrides.get("model.dropout", 0.0))
    decay = float(overrides.get("optim.weight_decay", 0.0))
    clip = overrides.get("optim.clip_norm", 1.0)
    lr0 = float(overrides.get("optim.lr", 3e-3))
    schedule = overrides.get("schedule", {"name": "constant"})
    seed_shift = np.random.default_rng([seed, 1]).normal(0, 0.04)
    noise = np.random.default_rng([seed, int(dropout * 1000), int(decay * 1000), 2])
    t = np.arange(1, n_evals + 1, dtype=float)
    train_eval = 1.4 + 1.6 * np.exp(-t / 3) - 0.03 * t * (1 - dropout) + seed_shift
    gap = 0.02 + 0.09 * t * (1 - 1.5 * dropout) * (1 - 2 * decay) + noise.normal(0, 0.01, n_evals)
    val = train_eval + gap + 0.25 * np.exp(-t / 2)
    # Test text sits beside validation text: the same curve, a little harder, its own noise.
    test = val + 0.03 + noise.normal(0, 0.005, n_evals)
    grad = 1.2 * np.exp(-t / 6) + 0.4 + noise.normal(0, 0.02, n_evals)
    clip_frac = np.zeros(n_evals) if clip is None else 1 / (1 + np.exp(-(grad - float(clip)) * 6))
    return {
        "step": (t * steps_per_eval).astype(int).tolist(),
        "epoch": t.tolist(),
        "train_loss": (train_eval + 0.1 * dropout + 0.05).tolist(),
        "train_eval_loss": train_eval.tolist(),
        "val_loss": val.tolist(),
        "test_loss": test.tolist(),
        "gap": (val - train_eval).tolist(),
        "gap_ratio": (val / train_eval).tolist(),
        "lr": [_lr(schedule, lr0, e, n_evals) for e in t],
        "grad_norm": grad.tolist(),
        "grad_norm_max": (grad * 1.8).tolist(),
        "clip_frac": clip_frac.tolist(),
        "tokens_per_s": (20000 + noise.normal(0, 300, n_evals)).tolist(),
    }


def _lr(schedule: dict[str, Any], lr0: float, epoch: float, epochs: int) -> float:
    name = schedule.get("name", "constant")
    if name == "cosine":
        return lr0 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    if name in ("step", "plateau"):
        return lr0 * schedule.get("gamma", 0.5) ** ((epoch - 1) // schedule.get("step_size", 4))
    return lr0


def summarize(history: dict[str, list[float]]) -> dict[str, float]:
    """The summary metrics of docs/tracking.md computed from a history."""
    val = np.asarray(history["val_loss"])
    gap = np.asarray(history["gap"])
    best = int(val.argmin())
    test = history["test_loss"]
    out = {"test_loss": test[best], "test_gap": test[best] - history["train_eval_loss"][best],
           "final_test_loss": test[-1], "best_val_loss": float(val[best]), "best_epoch": history["epoch"][best],
           "gap_at_best": float(gap[best]), "final_gap": float(gap[-1]), "max_gap": float(gap.max()),
           "final_val_loss": float(val[-1]), "final_train_eval_loss": history["train_eval_loss"][-1],
           "wall_s": 6.0 * len(val), "n_params": 420_000.0}
    rising = np.diff(val) > 0
    out["overfit_onset"], out["onset_censored"] = history["epoch"][-1], 1.0  # censored at the budget
    for i in range(len(rising) - PATIENCE + 1):
        if rising[i:i + PATIENCE].all():
            out["overfit_onset"], out["onset_censored"] = history["epoch"][i], 0.0
            break
    return out


@dataclass
class Store:
    """A fresh MLflow store: sqlite database and local artifacts under `root`."""

    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.tracking_uri)

    def experiment(self, name: str) -> str:
        location = (self.root / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def parent(self, experiment_id: str, study: str, study_type: str, baseline_arm: str | None = "baseline",
               storage: str | None = None, objective: str | None = None) -> str:
        tags = {"harness.kind": "study", "harness.study": study, "harness.study_type": study_type,
                "harness.baseline_arm": baseline_arm, "harness.storage": storage,
                "harness.objective": objective}
        run = self.client.create_run(experiment_id, run_name=study,
                                     tags={k: v for k, v in tags.items() if v is not None})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def training_run(self, experiment_id: str, *, study: str, arm: str | None, seed: int,
                     overrides: dict[str, Any] | None = None, parent_id: str | None = None,
                     status: str = "FINISHED", n_evals: int = 12, trial_number: int | None = None,
                     extra_tags: dict[str, str] | None = None, history: bool = True) -> str:
        """One `harness.kind=run` run; FAILED and KILLED runs stop halfway, without summary."""
        overrides = dict(overrides or {})
        config = build_config(overrides={k: v for k, v in overrides.items()} | {"train.seed": seed})
        hist = synthetic_history(overrides, seed, n_evals)
        if status != "FINISHED":
            hist = {k: v[: n_evals // 2] for k, v in hist.items()}
        tags = {"harness.kind": "run", "harness.study": study, "harness.seed": str(seed),
                "harness.config_hash": config.hash(), "harness.recipe_hash": config.recipe_hash(),
                "harness.git_commit": "0" * 40}
        if arm is not None:
            tags["harness.arm"] = arm
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if trial_number is not None:
            tags["optuna.trial_number"] = str(trial_number)
        tags |= extra_tags or {}
        name = f"{arm or 'run'}-s{seed}" if trial_number is None else f"trial-{trial_number} seed={seed}"
        run = self.client.create_run(experiment_id, run_name=name)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k in EVAL_METRICS
                   for step, v in zip(hist["step"], hist[k])]
        if status == "FINISHED":
            metrics += [Metric(k, v, now, 0) for k, v in summarize(hist).items()]
        params = [Param(k, str(v)) for k, v in config.flat().items()]
        self.client.log_batch(run_id, metrics=metrics, params=params,
                              tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        if history:
            folder = Path(url2pathname(urlparse(run.info.artifact_uri).path))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "history.json").write_text(json.dumps(hist), encoding="utf-8")
            if status == "FINISHED":  # the training side's generated text; untrusted like any name
                (folder / "samples.txt").write_text(f"ROMEO:\n<b>{arm}</b> seed {seed}\n", encoding="utf-8")
        self.client.set_terminated(run_id, status)
        return run_id

    def arm_summary(self, experiment_id: str, study: str, arm: str, parent_id: str) -> str:
        run = self.client.create_run(experiment_id, run_name=f"summary-{arm}", tags={
            "harness.kind": "arm-summary", "harness.study": study, "harness.arm": arm,
            "mlflow.parentRunId": parent_id})
        self.client.log_batch(run.info.run_id, metrics=[Metric("final_gap_mean", 0.5, 0, 0)], synchronous=True)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


ABLATION_ARMS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "dropout=0.3": {"model.dropout": 0.3},
    "clip_norm=none": {"optim.clip_norm": None, "schedule": {"name": "cosine"}},
    SCRIPT_ARM: {"optim.weight_decay": 0.01, "schedule": {"name": "step", "step_size": 4}},
}


def make_ablation(store: Store, name: str = "abl", seeds: Iterable[int] = range(5),
                  arms: dict[str, dict[str, Any]] | None = None, broken: bool = True,
                  n_evals: int = 12) -> dict[str, Any]:
    """An ablation study: parent, arms x seeds finished runs and, with `broken`, one FAILED,
    one KILLED (pruned), one RUNNING run and an arm-summary run. Returns the ids made."""
    arms = ABLATION_ARMS if arms is None else arms
    exp = store.experiment(name)
    parent = store.parent(exp, name, "ablation")
    runs = [store.training_run(exp, study=name, arm=arm, seed=seed, overrides=o, parent_id=parent,
                               n_evals=n_evals)
            for arm, o in arms.items() for seed in seeds]
    out = {"experiment_id": exp, "parent": parent, "runs": runs, "excluded": {}}
    if broken:
        out["excluded"] = {
            "failed": store.training_run(exp, study=name, arm="dropout=0.3", seed=99, parent_id=parent,
                                         overrides={"model.dropout": 0.3}, status="FAILED",
                                         extra_tags={"harness.error": "RuntimeError: CUDA out of memory"}),
            "killed": store.training_run(exp, study=name, arm="baseline", seed=98, parent_id=parent,
                                         status="KILLED",
                                         extra_tags={"harness.reason": "interrupted (Ctrl-C) at epoch 6"}),
            "running": store.training_run(exp, study=name, arm="baseline", seed=97, parent_id=parent,
                                          status="RUNNING"),
            "summary": store.arm_summary(exp, name, "baseline", parent),
        }
    return out


SEARCH_SPACE = {"model.dropout": (0.0, 0.5), "optim.weight_decay": (0.0, 0.05)}


def make_search(store: Store, name: str = "search", n_trials: int = 10,
                objectives: tuple[str, ...] = ("val_loss",), prune_above: float = 0.45,
                n_evals: int = 12) -> dict[str, Any]:
    """A search as harness.studies.search writes it: an Optuna study in a journal file, the baseline
    enqueued as trial 0 (the parent's harness.baseline_arm=trial-0), one MLflow run per trial
    tagged harness.arm=trial-<number>; trials with dropout above `prune_above` are pruned
    (KILLED runs)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp = store.experiment(name)
    journal = store.root / "optuna.journal"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize"] * len(objectives),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    parent = store.parent(exp, name, "search", baseline_arm="trial-0", storage=f"journal:{journal}",
                          objective=",".join(objectives))
    study.enqueue_trial({"model.dropout": 0.0, "optim.weight_decay": 0.0, "schedule.name": "constant"})

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        overrides: dict[str, Any] = {k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in SEARCH_SPACE.items()}
        overrides["schedule"] = {"name": trial.suggest_categorical("schedule.name", ["constant", "cosine"])}
        run = {"study": name, "arm": f"trial-{trial.number}", "seed": 0, "overrides": overrides,
               "parent_id": parent, "trial_number": trial.number, "n_evals": n_evals}
        if overrides["model.dropout"] > prune_above:
            store.training_run(exp, **run, status="KILLED",
                               extra_tags={"harness.reason": "pruned by MedianPruner at epoch 6"})
            raise optuna.TrialPruned()
        store.training_run(exp, **run)
        summary = summarize(synthetic_history(overrides, 0, n_evals))
        values = tuple(summary["best_val_loss" if o == "val_loss" else "gap_at_best"] for o in objectives)
        return values if len(values) > 1 else values[0]

    study.optimize(objective, n_trials=n_trials)
    return {"experiment_id": exp, "parent": parent, "journal": journal}


def make_loose(store: Store, name: str = "train") -> dict[str, Any]:
    """Loose `ablate train` runs: no parent; two tagged harness.arm=tagged, two untagged seeds of
    the default config (one recipe hash: it leaves the seed out) and one untagged with dropout 0.1
    (another recipe)."""
    exp = store.experiment(name)
    tagged = [store.training_run(exp, study=name, arm="tagged", seed=s, overrides={"model.dropout": 0.2})
              for s in (0, 1)]
    default = [store.training_run(exp, study=name, arm=None, seed=s) for s in (0, 1)]
    other = [store.training_run(exp, study=name, arm=None, seed=0, overrides={"model.dropout": 0.1})]
    return {"experiment_id": exp, "tagged": tagged, "default": default, "other": other}


def make_all_failed(store: Store, name: str = "allfailed") -> dict[str, Any]:
    exp = store.experiment(name)
    parent = store.parent(exp, name, "ablation")
    runs = [store.training_run(exp, study=name, arm="baseline", seed=s, parent_id=parent, status="FAILED",
                               extra_tags={"harness.error": "ValueError: boom"}) for s in (0, 1)]
    return {"experiment_id": exp, "parent": parent, "runs": runs}


def make_search_without_storage(store: Store, name: str = "search-gone") -> dict[str, Any]:
    """A search whose Optuna storage no longer exists, its trial runs without a harness.arm tag:
    the report must still build, labelling arms trial-<number>."""
    exp = store.experiment(name)
    parent = store.parent(exp, name, "search", baseline_arm="trial-0",
                          storage=f"journal:{store.root / 'gone.journal'}", objective="val_loss")
    runs = [store.training_run(exp, study=name, arm=None, seed=0, parent_id=parent,
                               trial_number=i, overrides={"model.dropout": 0.1 * i}) for i in range(3)]
    return {"experiment_id": exp, "parent": parent, "runs": runs}


def make_without_histories(store: Store, name: str = "nohistory") -> dict[str, Any]:
    """Two loose runs whose history.json was never written: no curve can be drawn."""
    exp = store.experiment(name)
    runs = [store.training_run(exp, study=name, arm="a", seed=s, history=False) for s in (0, 1)]
    return {"experiment_id": exp, "runs": runs}


_SHARED: list[tempfile.TemporaryDirectory] = []


@functools.cache
def shared_store() -> tuple[Store, dict[str, dict[str, Any]]]:
    """One store with every kind of study, built once per test session (tests only read it).

    Experiments: abl (ablation, 4 arms x 5 seeds, with FAILED/KILLED/RUNNING/arm-summary runs),
    search (Optuna journal), search-gone, train (loose runs), nohistory, allfailed, empty.
    """
    tmp = tempfile.TemporaryDirectory(prefix="ablate-report-store-")
    _SHARED.append(tmp)  # lives until the interpreter exits
    store = Store(Path(tmp.name))
    ids = {"abl": make_ablation(store), "search": make_search(store),
           "search-gone": make_search_without_storage(store), "train": make_loose(store),
           "nohistory": make_without_histories(store),
           "allfailed": make_all_failed(store), "empty": {"experiment_id": store.experiment("empty")}}
    return store, ids
