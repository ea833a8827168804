"""Checkpoints: everything needed to resume a run bit-for-bit, or to initialise a new one.

Saved with torch.save and read with ``torch.load(weights_only=True)``: only tensors, numbers,
strings, lists and dicts, never pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError

FORMAT = 1


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
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise UsageError(f"checkpoint {str(path)!r} cannot be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise UsageError(f"checkpoint {str(path)!r} is not an ablate checkpoint (format {FORMAT})")
    return state


def resolve_checkpoint(ref: str) -> Path:
    """A path, or `runs:/<run id>` for that MLflow run's `checkpoint/last.pt` artifact."""
    if not ref.startswith("runs:/"):
        return Path(ref).expanduser()
    import mlflow  # only here: checkpoint paths need no tracking store

    run_id = ref[len("runs:/"):].strip("/").split("/")[0]
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/last.pt")
    except Exception as exc:
        raise UsageError(f"transfer.init_from={ref!r}: no checkpoint in that MLflow run "
                         f"({str(exc).splitlines()[0]}); train it with train.save_checkpoint=true") from None
    return Path(local)
