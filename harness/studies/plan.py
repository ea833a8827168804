"""`ablate run --dry-run`: what the run would do, without doing it.

Which cells the study already has done (read from its Optuna storage, never creating it), how
long the rest should take, and whether the run needs --yes. The estimate of one cell's wall time
comes from the study's own finished cells when there are any (start to completion of their
trials: training, evaluation, logging), else from a measured calibration: the baseline arm
trained for a tenth of its epochs here, scaled to its budget (training and evaluation only; an
arm that augments or drops out costs a little more).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.core.errors import UsageError
from harness.core.config import Config
from harness.studies.spec import LARGE_STUDY_CELLS, PRETRAIN, AblationSpec, cell_config, join_key, split_key

if TYPE_CHECKING:
    from harness.studies.launch import Placement

CALIBRATION_FRACTION = 0.1
"""The share of the baseline's epochs trained to calibrate the estimate when nothing finished yet."""


@dataclass(frozen=True)
class Estimate:
    cell_s: float
    """Wall seconds of one cell on one worker."""
    basis: str
    """Where `cell_s` comes from, for the user."""


def cell_states(spec: AblationSpec, storage_url: str) -> tuple[dict[str, str], list[float], str | None]:
    """Each cell of `spec` with its state in the stored study ('missing' when there is no study),
    the wall seconds of the study's finished cells, and why the storage could not be read (or None).
    """
    from optuna.trial import TrialState

    from harness.tracking.storage import load_study
    from harness.studies.cells import cell_status, trials_by_cell

    missing = {cell.key: "missing" for cell in spec.cells} | {join_key(PRETRAIN, seed): "missing"
                                                               for seed in spec.pretrain_seeds}
    try:
        study = load_study(spec.name, storage_url, create=False)
    except UsageError as exc:
        not_there = "no study" in str(exc) or "there is no journal" in str(exc)
        return missing, [], None if not_there else str(exc)
    known = cell_status(study)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds()
                 for key, trials in trials_by_cell(study).items() for t in trials
                 if split_key(key)[0] != PRETRAIN  # the pretraining is calibrated apart
                 and t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]
    return {key: known.get(key, "missing") for key in missing}, durations, None


def calibrate(label: str, full: Config, threads: int) -> Estimate:
    """Train recipe `full` for CALIBRATION_FRACTION of its budget (epochs, or max_steps when that
    ends it), untracked, and scale the time to the full budget."""
    from harness.core.config import build_config
    from harness.core.train import train

    t = full.train
    unit, budget = ("steps", t.max_steps) if t.max_steps is not None else ("epochs", t.epochs)
    part = max(1, math.ceil(budget * CALIBRATION_FRACTION))
    short = build_config(full.to_dict(), {f"train.{'max_steps' if unit == 'steps' else 'epochs'}": part,
                                          "train.threads": t.threads or threads, "train.save_checkpoint": False,
                                          "transfer.init_from": None})
    start = time.perf_counter()
    train(short)
    took = time.perf_counter() - start
    return Estimate(took * budget / part, f"measured: {part} of {budget} {unit} of {label} took "
                                          f"{took:.1f} s at {short.train.threads} thread(s)")


def describe_plan(spec: AblationSpec, storage_url: str, placement: Placement, yes: bool) -> str:
    """The dry run's lines after the arms table: done cells, the estimate (for the workers
    `placement` starts: by default one per core, or packed on the GPUs, as the run would start
    them), the --yes note."""
    from harness.studies.cells import SETTLED
    from harness.studies.launch import threads_per_worker, visible_gpus

    states, durations, unreadable = cell_states(spec, storage_url)
    lines = []
    if unreadable:
        lines.append(f"cannot read the study's storage ({unreadable}); counting every cell as to run")
    todo = [key for key, state in states.items() if state not in SETTLED]
    done = len(states) - len(todo)
    lines.append(f"{done} of {len(states)} cells already done; {len(todo)} to run")
    for arm in spec.arms:
        finished = [str(seed) for seed in spec.seeds if states[join_key(arm.label, seed)] in SETTLED]
        if finished:
            lines.append(f"  {arm.label}: seeds {','.join(finished)} done")
    pretrain = [key for key in todo if split_key(key)[0] == PRETRAIN]
    cells = [key for key in todo if key not in pretrain]
    if todo:
        n = len(placement.assign(len(todo), placement.devices(visible_gpus())))
        wall = 0.0
        if pretrain:  # the stage runs first: its cells each take a worker
            first = cell_config(spec.pretrain.config, spec.pretrain_seeds[0])
            stage = calibrate("the pretraining", first, threads_per_worker(n))
            wall += math.ceil(len(pretrain) / n) * stage.cell_s
            lines.append(f"pretraining: about {stage.cell_s:.0f} s per run ({stage.basis})")
        if cells:
            estimate = (Estimate(sum(durations) / len(durations), f"from {len(durations)} finished cell(s) of this study")
                        if durations else calibrate(f"arm {spec.baseline!r}", cell_config(spec.arm(spec.baseline).config,
                                                                                         spec.seeds[0]),
                                                    threads_per_worker(n)))
            wall += math.ceil(len(cells) / n) * estimate.cell_s  # n cells at a time
            lines.append(f"cells: about {estimate.cell_s:.0f} s per cell ({estimate.basis})")
        lines.append(f"estimated wall time: {format_duration(wall)} with {n} worker(s)")
    if len(spec.cells) > LARGE_STUDY_CELLS and not yes:
        lines.append(f"{len(spec.cells)} runs is more than {LARGE_STUDY_CELLS}: the real run needs --yes")
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '2 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"
