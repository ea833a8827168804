"""The metric definitions: what each evaluation records and what a run's summary means.

This module is the single owner of those definitions (DESIGN.md, "Training and the metrics").
The gap is always val_loss - train_eval_loss: the eval-mode loss on a fixed sample of training
windows, never the running training loss, which dropout and augmentation inflate.

Validation decides, test reports: the best evaluation (and so best_val_loss, best_epoch,
gap_at_best) is chosen on validation loss alone; `test_loss` and `test_gap` are read off the test
split at that same evaluation, text that no decision of the run or of its study ever saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

EVAL_METRICS = ("epoch", "train_loss", "train_eval_loss", "val_loss", "gap", "gap_ratio", "lr",
                "grad_norm", "grad_norm_max", "clip_frac", "tokens_per_s")
"""Logged to MLflow at every evaluation (the live curves)."""
HISTORY_COLUMNS = EVAL_METRICS + ("test_loss",)
"""history.json's columns. The test loss of every evaluation is kept there only: the MLflow
metric `test_loss` is the summary's (at the validation-selected evaluation), and no live chart
invites picking an epoch by its test loss."""
SUMMARY_METRICS = ("test_loss", "test_gap", "final_test_loss", "best_val_loss", "best_epoch",
                   "gap_at_best", "final_gap", "max_gap", "overfit_onset", "onset_censored",
                   "final_val_loss", "final_train_eval_loss", "wall_s", "n_params")
"""The per-run summary metrics (docs/tracking.md), logged once at step 0: Summary's fields."""
ARM_SUMMARY_METRICS = ("test_loss", "test_gap", "best_val_loss", "gap_at_best", "final_gap")
"""Averaged over seeds into each arm's run of a study: the verdicts' two axes, then the
validation view."""
ARM_METRICS = ARM_SUMMARY_METRICS + ("overfit_onset", "wall_s")
"""Tabulated per arm by the report: the arm runs' metrics, then when overfitting set in and the
time it took."""
TRIAL_METRICS = ARM_SUMMARY_METRICS + ("max_gap", "overfit_onset", "wall_s")
"""Copied from a finished run's summary onto its Optuna trial (what `ablate status` and searches
read)."""
SUMMARY_AT = {("val_loss", "best"): "best_val_loss", ("gap", "best"): "gap_at_best",
              ("val_loss", "final"): "final_val_loss", ("gap", "final"): "final_gap"}
"""The summary metric holding an evaluation metric at the best evaluation (lowest val_loss) or
at the last one: what a search objective's (metric, at) names."""
PRUNED_VALUE = {"best": "best val_loss so far", "final": "val_loss"}
"""What a search trial reports to the pruner at each evaluation, by the objective's `at`."""


@dataclass(frozen=True)
class MetricInfo:
    """How a report words one metric."""

    noun: str
    unit: str
    lower_is_better: bool
    better: str
    """Verb for a change in the good direction ("shrank"); `worse` for the other."""
    worse: str


COMPARABLE_METRICS: dict[str, MetricInfo] = {
    "test_loss": MetricInfo("held-out (test) loss", "nats", True, "lowered", "raised"),
    "test_gap": MetricInfo("gap on test text", "nats", True, "shrank", "widened"),
    "final_test_loss": MetricInfo("final test loss", "nats", True, "lowered", "raised"),
    "best_val_loss": MetricInfo("best validation loss", "nats", True, "lowered", "raised"),
    "gap_at_best": MetricInfo("gap at the best epoch", "nats", True, "shrank", "widened"),
    "final_gap": MetricInfo("final gap", "nats", True, "shrank", "widened"),
    "max_gap": MetricInfo("maximum gap", "nats", True, "shrank", "widened"),
    "final_val_loss": MetricInfo("final validation loss", "nats", True, "lowered", "raised"),
    # A later onset means overfitting started later: higher is better.
    "overfit_onset": MetricInfo("overfitting onset", "", False, "delayed", "brought forward"),
    "wall_s": MetricInfo("wall time", "s", True, "cut", "lengthened"),
}
"""Summary metrics a report can compare arms on (--metric), with the words a verdict uses."""


@dataclass(frozen=True)
class Evaluation:
    step: int
    """Global optimizer step at which the evaluation ran."""
    epoch: float
    """Epochs completed (fractional when evaluating every N steps)."""
    train_loss: float
    """Mean training loss since the previous evaluation, regularization active."""
    train_eval_loss: float
    val_loss: float
    test_loss: float
    """Eval-mode loss on the test sample: recorded for the report, never read by a decision."""
    lr: float
    """The learning rate the last optimizer step before this evaluation applied."""
    grad_norm: float
    """Mean global gradient norm before clipping, since the previous evaluation."""
    grad_norm_max: float
    clip_frac: float
    """Fraction of steps since the previous evaluation whose gradient was clipped."""
    tokens_per_s: float

    @property
    def gap(self) -> float:
        return self.val_loss - self.train_eval_loss

    @property
    def gap_ratio(self) -> float:
        return self.val_loss / self.train_eval_loss if self.train_eval_loss > 0 else math.inf

    def metrics(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in EVAL_METRICS}


@dataclass
class StepStats:
    """Accumulates the per-step numbers between two evaluations."""

    loss_sum: float = 0.0
    norm_sum: float = 0.0
    norm_max: float = 0.0
    clipped: int = 0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    lr: float = 0.0
    """The learning rate of the latest step."""

    def add(self, loss: float, grad_norm: float, clipped: bool, tokens: int, seconds: float,
            lr: float) -> None:
        self.lr = lr
        self.loss_sum += loss
        self.norm_sum += grad_norm
        self.norm_max = max(self.norm_max, grad_norm)
        self.clipped += int(clipped)
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds


def overfit_onset(val_losses: list[float], epochs: list[float], patience: int) -> float | None:
    """The epoch of the first evaluation after which val loss rose `patience` times in a row.

    That evaluation is the last one before the rise: the point where overfitting set in.
    """
    rises = 0
    for i in range(1, len(val_losses)):
        rises = rises + 1 if val_losses[i] > val_losses[i - 1] else 0
        if rises == patience:
            return epochs[i - patience]
    return None


@dataclass
class Summary:
    test_loss: float
    """Test loss at the best evaluation (chosen on validation loss): the held-out loss reported."""
    test_gap: float
    """test_loss - train_eval_loss at the best evaluation: the gap measured on test text."""
    final_test_loss: float
    best_val_loss: float
    best_epoch: float
    gap_at_best: float
    final_gap: float
    max_gap: float
    overfit_onset: float
    """Epoch where overfitting set in; the last evaluation's epoch when it never did (censored)."""
    onset_censored: bool
    """True when val loss never rose `patience` times in a row: the onset lies beyond the budget."""
    final_val_loss: float
    final_train_eval_loss: float
    wall_s: float = 0.0
    n_params: int = 0

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def summarize(history: list[Evaluation], patience: int, wall_s: float, n_params: int) -> Summary:
    best = min(history, key=lambda e: e.val_loss)
    last = history[-1]
    onset = overfit_onset([e.val_loss for e in history], [e.epoch for e in history], patience)
    return Summary(
        test_loss=best.test_loss,
        test_gap=best.test_loss - best.train_eval_loss,
        final_test_loss=last.test_loss,
        best_val_loss=best.val_loss,
        best_epoch=best.epoch,
        gap_at_best=best.gap,
        final_gap=last.gap,
        max_gap=max(e.gap for e in history),
        overfit_onset=last.epoch if onset is None else onset,
        onset_censored=onset is None,
        final_val_loss=last.val_loss,
        final_train_eval_loss=last.train_eval_loss,
        wall_s=wall_s,
        n_params=n_params,
    )


def history_columns(history: list[Evaluation]) -> dict[str, list[float]]:
    """Column-oriented history (the `history.json` artifact): {"step": [...], "val_loss": [...]}."""
    cols: dict[str, list[float]] = {"step": [e.step for e in history]}
    for name in HISTORY_COLUMNS:
        cols[name] = [float(getattr(e, name)) for e in history]
    return cols
