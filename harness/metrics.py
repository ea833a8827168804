"""The metric definitions: what each evaluation records and what a run's summary means.

This module is the single owner of those definitions (DESIGN.md, "Training and the metrics").
The gap is always val_loss - train_eval_loss: the eval-mode loss on a fixed sample of training
windows, never the running training loss, which dropout and augmentation inflate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

EVAL_METRICS = ("epoch", "train_loss", "train_eval_loss", "val_loss", "gap", "gap_ratio", "lr",
                "grad_norm", "grad_norm_max", "clip_frac", "tokens_per_s")
SUMMARY_METRICS = ("best_val_loss", "best_epoch", "gap_at_best", "final_gap", "max_gap",
                   "overfit_onset", "final_val_loss", "final_train_eval_loss", "wall_s", "n_params")


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
    lr: float
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

    def add(self, loss: float, grad_norm: float, clipped: bool, tokens: int, seconds: float) -> None:
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
    best_val_loss: float
    best_epoch: float
    gap_at_best: float
    final_gap: float
    max_gap: float
    overfit_onset: float | None
    final_val_loss: float
    final_train_eval_loss: float
    wall_s: float = 0.0
    n_params: int = 0
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        return {k: float(v) for k, v in out.items()}


def summarize(history: list[Evaluation], patience: int, wall_s: float, n_params: int) -> Summary:
    best = min(history, key=lambda e: e.val_loss)
    last = history[-1]
    return Summary(
        best_val_loss=best.val_loss,
        best_epoch=best.epoch,
        gap_at_best=best.gap,
        final_gap=last.gap,
        max_gap=max(e.gap for e in history),
        overfit_onset=overfit_onset([e.val_loss for e in history], [e.epoch for e in history], patience),
        final_val_loss=last.val_loss,
        final_train_eval_loss=last.train_eval_loss,
        wall_s=wall_s,
        n_params=n_params,
    )


def history_columns(history: list[Evaluation]) -> dict[str, list[float]]:
    """Column-oriented history (the `history.json` artifact): {"step": [...], "val_loss": [...]}."""
    cols: dict[str, list[float]] = {"step": [e.step for e in history]}
    for name in EVAL_METRICS:
        cols[name] = [float(getattr(e, name)) for e in history]
    return cols
