"""Learning-rate schedules: torch's StepLR, CosineAnnealingLR and ReduceLROnPlateau, each behind
an optional linear warmup.

Warmup is applied by hand rather than with SequentialLR, which cannot hold ReduceLROnPlateau:
during the first `warmup` units the lr ramps linearly to its base value, then the torch scheduler
takes over from the base value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau, StepLR

from harness.core.config import CosineSchedule, PlateauSchedule, StepSchedule


class LRSchedule:
    """Steps once per `interval` unit (`step_unit`) and once per evaluation (`after_eval`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Any, total_units: int) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.units = 0
        self.main: LRScheduler | ReduceLROnPlateau | None = None
        if isinstance(cfg, StepSchedule):
            self.main = StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        elif isinstance(cfg, CosineSchedule):
            t_max = cfg.t_max or max(1, total_units - cfg.warmup)
            self.main = CosineAnnealingLR(optimizer, T_max=t_max, eta_min=cfg.eta_min)
        elif isinstance(cfg, PlateauSchedule):
            self.main = ReduceLROnPlateau(optimizer, mode="min", factor=cfg.factor,
                                          patience=cfg.patience, threshold=cfg.threshold)
        self._apply_warmup()

    def _apply_warmup(self) -> None:
        if self.units < self.cfg.warmup:
            scale = (self.units + 1) / (self.cfg.warmup + 1)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * scale
        elif self.units == self.cfg.warmup:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base

    def step_unit(self) -> None:
        """One interval unit (an epoch or an optimizer step) has passed."""
        self.units += 1
        if self.units <= self.cfg.warmup:
            self._apply_warmup()
        elif self.main is not None and not isinstance(self.main, ReduceLROnPlateau):
            self.main.step()

    def after_eval(self, val_loss: float) -> None:
        if isinstance(self.main, ReduceLROnPlateau) and self.units >= self.cfg.warmup:
            self.main.step(val_loss)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"units": self.units, "main": self.main.state_dict() if self.main else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.units = state["units"]
        if self.main is not None and state["main"] is not None:
            self.main.load_state_dict(state["main"])
