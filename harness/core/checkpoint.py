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


def resolve_checkpoint(ref: str) -> Path:
    """A path, or `runs:/<run id>` for that MLflow run's `checkpoint/last.pt` artifact.

    The run is looked up in the project's store (harness.tracking.store.tracking_uri), which may not be
    open yet (preflight runs before it is), and a store that does not exist is not created.
    """
    if not ref.startswith("runs:/"):
        return Path(ref).expanduser()
    import mlflow  # only here: checkpoint paths need no tracking store

    from harness.tracking.store import read_store, tracking_uri

    run_id = ref[len("runs:/"):].strip("/").split("/")[0]
    read_store(f"transfer.init_from={ref!r}")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/last.pt",
                                                    tracking_uri=tracking_uri())
    except Exception as exc:
        raise UsageError(f"transfer.init_from={ref!r}: no checkpoint in that MLflow run "
                         f"({str(exc).splitlines()[0]}); train it with train.save_checkpoint=true") from None
    return Path(local)
