"""What a study needs beyond Optuna's own state: the study record.

Stored as the Optuna study's user attribute `harness` (JSON), so a worker on another machine
finds everything it needs in the storage alone: the study type, the MLflow experiment and
parent run, and for an ablation each arm's recipe, the seeds and cells, for a search the spec,
its fingerprint, the total and the deadline. Read once per use with `read`, written with
`write`; the attribute's keys are the field names (docs/tracking.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from harness.core.errors import UsageError

ATTR = "harness"


@dataclass
class StudyRecord:
    type: str
    """"ablation" or "search"."""
    experiment: str
    """The MLflow experiment (the study's name)."""
    parent_run_id: str = ""
    """The study's MLflow run: every run of the study nests below it."""
    # --- an ablation
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    """label -> {"config": the arm's recipe (seed not applied), "hash": its hash}."""
    seeds: list[int] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    """Cell keys "arm/seed=N", sorted; pretraining cells under the arm label `pretrain`."""
    baseline: str | None = None
    arm_runs: dict[str, str] = field(default_factory=dict)
    """label -> the arm's MLflow run (harness.kind=arm-summary), parent of its seed runs."""
    pretrain: dict[str, Any] | None = None
    """The pretraining stage: {"config", "hash", "per_seed"} (spec's `pretrain:`), or None."""
    # --- a search
    spec: dict[str, Any] | None = None
    """The search spec as written (parsed again by each worker)."""
    fingerprint: dict[str, Any] | None = None
    baseline_labels: dict[str, Any] | None = None
    target: int | None = None
    """The total number of counted trials the search reaches."""
    deadline: float | None = None
    """Epoch seconds after which workers take no new trial (--timeout), or None."""

    _KEYS = {
        "ablation": ("type", "experiment", "parent_run_id", "arms", "seeds", "cells", "baseline", "arm_runs"),
        "search": ("type", "experiment", "parent_run_id", "spec", "fingerprint", "baseline_labels", "target",
                   "deadline"),
    }

    def to_attr(self) -> dict[str, Any]:
        """The stored form: the type's keys only (the pretraining stage when there is one), as
        JSON gives them back, so comparing with what is stored tells whether anything changed."""
        values = asdict(self)
        keys = self._KEYS[self.type] + (("pretrain",) if self.pretrain is not None else ())
        return json.loads(json.dumps({k: values[k] for k in keys}))


def read(study: optuna.Study) -> StudyRecord:
    try:
        attr = study.user_attrs[ATTR]
    except KeyError:
        raise UsageError(f"study {study.study_name!r} was not created by ablate") from None
    known = set(StudyRecord.__dataclass_fields__) - {"_KEYS"}
    return StudyRecord(**{k: v for k, v in attr.items() if k in known})


def write(study: optuna.Study, record: StudyRecord) -> None:
    """Store `record` unless the study already holds exactly it (a rerun writes nothing new)."""
    attr = record.to_attr()
    if study.user_attrs.get(ATTR) != attr:
        study.set_user_attr(ATTR, attr)
