"""One tracked training run: validate, open the MLflow run, train, record, close with a status.

Used by `ablate train`, by ablation cells and by search trials, so every run is logged the same
way (docs/tracking.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import matplotlib.pyplot as plt
import torch
from mlflow.tracking import MlflowClient

from harness.core.checkpoint import load_checkpoint
from harness.core.config import Config
from harness.core.curves import learning_curves
from harness.core.data import Dataset
from harness.core.errors import UsageError
from harness.core.metrics import Evaluation
from harness.tracking.store import (CHECKPOINT_ARTIFACT, RunTracker, local_artifact_dir, save_checkpoint_artifact,
                                    transfer_state)
from harness.core.train import (Hooks, Interrupted, NonFiniteLoss, TrainResult, build_model, device_label, pick_device,
                           prepare_data, train)


@dataclass
class RunOutcome:
    run_id: str
    status: str
    """FINISHED, or KILLED when `should_stop` ended it early (pruned)."""
    result: TrainResult


@dataclass
class Prepared:
    """What preflight read for a run, handed on to its training so nothing is read twice."""
    data: Dataset
    init_state: dict[str, Any] | None
    """The checkpoint a `runs:/` transfer.init_from names (downloaded and loaded once), else None."""


def preflight(cfg: Config, dataset: Dataset | None = None) -> Prepared:
    """Everything that can reject the config, done before a run exists in the store.

    The ranges are the config's own; here: the corpus and its split, the device, the sample
    prompt against the corpus's vocabulary, and the model's shape and transfer checkpoint (a
    `runs:/` one read from the project's store). `dataset`, when given, is `cfg`'s data already
    prepared.
    """
    data = dataset or prepare_data(cfg)
    pick_device(cfg.train.device)
    check_prompt(cfg, data)
    init_state = transfer_state(cfg.transfer.init_from)
    build_model(cfg, len(data.vocab), init_state)  # shape and transfer errors surface here
    return Prepared(data, init_state)


def check_prompt(cfg: Config, data: Dataset) -> None:
    """The samples drawn after training start from sample.prompt: its characters must be ones the
    model knows (the corpus's), or sampling fails once training is done."""
    s = cfg.sample
    if s.count == 0 or s.chars == 0:
        return
    unknown = sorted(set(s.prompt or "\n") - set(data.vocab.chars))
    if unknown:
        raise UsageError(f"sample.prompt={s.prompt!r}: character {unknown[0]!r} is not in the vocabulary of "
                         f"corpus {data.corpus.name!r}; allowed: its {len(data.vocab)} characters "
                         f"(or sample.count=0)")


def run_tracked(cfg: Config, client: MlflowClient, experiment: str, *, run_name: str | None = None,
                tags: dict[str, Any] | None = None, parent_run_id: str | None = None,
                should_stop: Callable[[Evaluation], str | None] | None = None,
                on_start: Callable[[str], None] | None = None,
                progress: bool = False, prepared: Prepared | None = None) -> RunOutcome:
    """Train `cfg` as one MLflow run. Re-raises training errors after closing the run FAILED.

    `on_start(run_id)` is called once the run exists (a trial records its run id there);
    `prepared` is `cfg`'s preflight when the caller has done it.
    """
    prepared = prepared or preflight(cfg)
    run_tags = {"harness.config_hash": cfg.hash(), "harness.recipe_hash": cfg.recipe_hash(),
                "harness.seed": cfg.train.seed,
                # Float results are bit-identical only at one intra-op thread count; reports say
                # when a study's runs differ in it.
                "harness.threads": cfg.train.threads or torch.get_num_threads(),
                "harness.device": device_label(cfg.train.device), **(tags or {})}
    tracker = RunTracker.start(client, experiment, run_name, run_tags, cfg.flat(), parent_run_id)
    tracker.log_config(cfg.to_dict())
    if on_start:
        on_start(tracker.run_id)
    return _train_and_close(cfg, tracker, prepared, should_stop, progress, resume=None)


def resume_tracked(client: MlflowClient, run_id: str, progress: bool = False) -> RunOutcome:
    """Continue an interrupted run from its checkpoint (CHECKPOINT_ARTIFACT), logging into the same run."""
    try:
        run = client.get_run(run_id)
    except Exception:
        raise UsageError(f"--resume {run_id!r}: no such MLflow run in this store") from None
    if run.info.status != "KILLED":
        # A FINISHED run would train again from its last checkpoint and log its metrics twice;
        # a RUNNING one may be training in another process right now.
        raise UsageError(f"--resume {run_id!r}: the run is {run.info.status}; only an interrupted "
                         f"(KILLED) run resumes; train a new run instead")
    folder = local_artifact_dir(client, run_id)
    path = (folder / CHECKPOINT_ARTIFACT) if folder else None
    if path is None or not path.exists():
        raise UsageError(f"--resume {run_id!r}: the run has no {CHECKPOINT_ARTIFACT} "
                         f"(status {run.info.status}); only interrupted or checkpointed runs resume")
    state = load_checkpoint(path)
    from harness.core.config import build_config

    cfg = build_config(state["config"])
    prepared = preflight(cfg)
    tracker = RunTracker.resume(client, run_id)
    return _train_and_close(cfg, tracker, prepared, None, progress, resume=state)


def _train_and_close(cfg: Config, tracker: RunTracker, prepared: Prepared,
                     should_stop: Callable[[Evaluation], str | None] | None, progress: bool,
                     resume: dict[str, Any] | None) -> RunOutcome:
    hooks = Hooks(on_eval=tracker.log_eval, should_stop=should_stop)
    try:
        result = train(cfg, hooks, resume=resume, progress=progress, dataset=prepared.data,
                       init_state=prepared.init_state)
    except Interrupted as stop:
        if stop.checkpoint is not None:
            save_checkpoint_artifact(tracker, stop.checkpoint)
            step = stop.checkpoint["progress"]["step"]
            reason = (f"interrupted (Ctrl-C); resumable from step {step}: "
                      f"ablate train --resume {tracker.run_id}")
        else:
            reason = "interrupted (Ctrl-C) before the first evaluation; nothing to resume"
        tracker.finish("KILLED", reason=reason)
        raise
    except NonFiniteLoss as exc:
        tracker.finish("FAILED", reason=str(exc), error=str(exc))
        raise
    except BaseException as exc:
        tracker.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        raise

    tracker.log_summary(result.summary, result.history)
    fig = learning_curves(result.history, title=f"run {tracker.run_id[:8]}")
    tracker.log_figure(fig, "curves.png")
    plt.close(fig)
    if result.samples:
        tracker.log_text("\n\n----\n\n".join(result.samples), "samples.txt")
    if cfg.train.save_checkpoint and result.checkpoint is not None:
        save_checkpoint_artifact(tracker, result.checkpoint)
    if result.stopped:
        tracker.finish("KILLED", reason=result.stopped)
        return RunOutcome(tracker.run_id, "KILLED", result)
    tracker.finish("FINISHED")
    return RunOutcome(tracker.run_id, "FINISHED", result)
