"""Checkpoints: everything needed to resume a run bit-for-bit, or to initialise a new one.

Saved with torch.save and read with ``torch.load(weights_only=True)``: only tensors, numbers,
strings, lists and dicts, never pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.core.errors import UsageError

FORMAT = 1
RUN_PREFIX = "runs:/"
"""How `transfer.init_from` names an MLflow run (its checkpoint/last.pt) instead of a path."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated last.pt behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    torch.save({"format": FORMAT, **state}, partial)
    partial.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for a corrupt or foreign file
        # Not torch's message: it advises weights_only=False, which would run a foreign pickle.
        raise UsageError(f"checkpoint {str(path)!r} is not an ablate checkpoint (torch cannot read it as "
                         f"plain tensors); allowed: a checkpoint/last.pt that ablate wrote") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise UsageError(f"checkpoint {str(path)!r} is not an ablate checkpoint (format {FORMAT})")
    return state


def init_checkpoint(ref: str) -> dict[str, Any]:
    """The checkpoint a `transfer.init_from` path names.

    The other form, `runs:/<run id>`, names an MLflow run's checkpoint: the tracking layer loads
    it (harness.tracking.store.transfer_state) and hands the state to harness.core.train, so this
    layer never opens a store.
    """
    if ref.startswith(RUN_PREFIX):
        raise ValueError(f"transfer.init_from={ref!r} names an MLflow run: load it with "
                         f"harness.tracking.store.transfer_state and pass the state as init_state")
    return load_checkpoint(Path(ref).expanduser())
