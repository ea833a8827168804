"""Which runs a report counts, the arm each belongs to, and which arm is the baseline."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.core.errors import UsageError

SEED_PARAM = "params.train.seed"


@dataclass(frozen=True)
class Arms:
    """The runs a report analyses, grouped into arms."""

    runs: pd.DataFrame
    """The included runs (finished training runs) with columns arm, seed, trial_number added."""
    excluded: pd.DataFrame
    """Every other run: run_id, run_name, status, kind, arm, category, reason."""
    order: list[str]
    """Arm labels: the baseline first, then in natural order (trial-2 before trial-10)."""
    baseline: str | None
    baseline_note: str
    """How the baseline was chosen, or why there is none."""


def group_runs(runs: pd.DataFrame, *, study: str, study_type: str | None, group_by: str,
               requested_baseline: str | None, tagged_baseline: str | None) -> Arms:
    """Split `runs` (collect.StudyData.runs) into included and excluded, label arms, pick a baseline.

    Arm of a run: the value of the `group_by` tag (or ``params.<key>``, labelled key=value);
    without it, ``trial-<optuna.trial_number>`` for search trials, else ``config-<harness.recipe_hash>``
    (``harness.config_hash`` for runs logged before the recipe hash existed).
    Baseline: `requested_baseline`, else the parent's harness.baseline_arm, else an arm named
    "baseline". Raises UsageError when no run is usable or the requested baseline is no arm.
    """
    runs = runs.copy()
    runs["arm"] = _labels(runs, study_type, group_by)
    runs["seed"] = _seeds(runs)
    runs["trial_number"] = pd.to_numeric(_column(runs, "tags.optuna.trial_number"), errors="coerce").astype("Int64")
    reasons = runs.apply(_exclusion, axis=1)
    keep = reasons.isna()
    included = runs[keep].reset_index(drop=True)
    excluded = _excluded_table(runs[~keep], reasons[~keep])
    if included.empty:
        raise UsageError(f"study {study!r} has no finished training runs to report "
                         f"({_count_phrase(excluded)})")
    labels = sorted(set(included["arm"]), key=natural_key)
    baseline, note = _choose_baseline(labels, requested_baseline, tagged_baseline, study)
    order = ([baseline] if baseline else []) + [a for a in labels if a != baseline]
    return Arms(runs=included, excluded=excluded, order=order, baseline=baseline, baseline_note=note)


def natural_key(label: str) -> tuple:
    """Sort key that orders embedded numbers by value; the label itself breaks ties."""
    parts = re.split(r"(\d+)", label)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), label


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    if name not in runs:
        return pd.Series(pd.NA, index=runs.index, dtype="object")
    # An empty tag means "not set" as much as a missing one.
    return runs[name].where(runs[name].astype("string").str.len() > 0)


def _labels(runs: pd.DataFrame, study_type: str | None, group_by: str) -> pd.Series:
    if group_by.startswith("params."):
        values = _column(runs, group_by)
        label = (group_by.removeprefix("params.") + "=" + values.astype("string")).astype("object")
        label = label.where(values.notna())
    else:
        label = _column(runs, group_by if group_by.startswith("tags.") else f"tags.{group_by}")
    trial = _column(runs, "tags.optuna.trial_number")
    if study_type == "search":
        label = label.fillna(("trial-" + trial.astype("string")).astype("object").where(trial.notna()))
    # The recipe hash leaves the seed out, so the seeds of one recipe form one arm.
    config = _column(runs, "tags.harness.recipe_hash").fillna(_column(runs, "tags.harness.config_hash"))
    label = label.fillna(("config-" + config.astype("string")).astype("object").where(config.notna()))
    return label.fillna("run-" + runs["run_id"].str[:8]).astype(str)


def _seeds(runs: pd.DataFrame) -> pd.Series:
    seed = pd.to_numeric(_column(runs, "tags.harness.seed"), errors="coerce")
    fallback = pd.to_numeric(_column(runs, SEED_PARAM), errors="coerce")
    return seed.fillna(fallback).astype("Int64")


def _exclusion(run: pd.Series) -> str | None:
    """Why a run is left out, or None when it counts."""
    kind = run["kind"]
    if kind == "study":
        return "the study's parent run"
    if kind == "arm-summary":
        return "an arm summary (the report recomputes arm statistics from the runs)"
    if kind == "pretrain":
        return "a pretraining run (listed under Pretraining runs)"
    if kind != "run":
        return f"harness.kind={kind}: not a training run" if kind else "no harness.kind tag: not an ablate run"
    status = run["status"]
    if status == "FINISHED":
        return None
    if status == "FAILED":
        error = run.get("tags.harness.error")
        return f"FAILED: {error}" if isinstance(error, str) and error else "FAILED"
    if status == "KILLED":
        reason = run.get("tags.harness.reason")
        return f"KILLED: {reason}" if isinstance(reason, str) and reason else "KILLED (interrupted or pruned)"
    return f"{status}: not finished"


def _excluded_table(runs: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    table = runs[["run_id", "run_name", "status", "kind", "arm", "seed"]].copy()
    is_run = table["kind"] == "run"
    # Only a training run has an arm; for the others show their harness.arm tag, if any.
    table["arm"] = table["arm"].where(is_run, _column(runs, "tags.harness.arm").fillna(""))
    table["category"] = np.where(is_run, table["status"], "harness.kind=" + table["kind"].replace("", "(none)"))
    table["reason"] = reasons
    table["_other"] = ~is_run
    return (table.sort_values(["_other", "category", "arm", "run_name", "run_id"], key=_sort_text)
            .drop(columns="_other").reset_index(drop=True))


def _sort_text(column: pd.Series) -> pd.Series:
    return column.astype(str).map(natural_key)


def _count_phrase(excluded: pd.DataFrame) -> str:
    counts = excluded["category"].value_counts()
    return ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "no runs"


def failed_seeds(grouped: Arms) -> dict[str, int]:
    """Per arm, the seeds whose training runs FAILED (diverged or crashed) and never finished.

    A failed run that a later rerun of its cell replaced does not count: the seed finished.
    """
    done = set(zip(grouped.runs["arm"], grouped.runs["seed"]))
    ex = grouped.excluded
    failed = ex[(ex["kind"] == "run") & (ex["status"] == "FAILED") & ex["seed"].notna()]
    lost = {(arm, seed) for arm, seed in zip(failed["arm"], failed["seed"]) if (arm, seed) not in done}
    return dict(Counter(arm for arm, _ in lost))


def excluded_summary(excluded: pd.DataFrame) -> str:
    """'2 FAILED, 1 KILLED, 1 harness.kind=study' (or 'none')."""
    return _count_phrase(excluded) if not excluded.empty else "none"


def _choose_baseline(labels: list[str], requested: str | None, tagged: str | None,
                     study: str) -> tuple[str | None, str]:
    if requested is not None:
        if requested not in labels:
            shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
            raise UsageError(f"baseline {requested!r} is not an arm of study {study!r}; arms: {shown}")
        return requested, "chosen with --baseline"
    if tagged and tagged in labels:
        return tagged, "the study's harness.baseline_arm"
    if "baseline" in labels:
        return "baseline", "the arm named 'baseline'"
    if tagged:
        return None, f"the study's baseline arm {tagged!r} has no finished runs; no paired comparison"
    return None, "no harness.baseline_arm tag and no arm named 'baseline'; no paired comparison"


def arm_settings(runs: pd.DataFrame, order: list[str], baseline: str | None) -> dict[str, str]:
    """Per arm, the params that set it apart, as 'key=value, ...'.

    With a baseline: the params whose value differs from the baseline's. Without: the params
    that vary across arms. The seed is left out (it varies within arms by design); a param
    that differs between the runs of one arm shows as ``(varies)``.
    """
    cols = [c for c in runs.columns if c.startswith("params.") and c != SEED_PARAM]
    if not cols:
        return {arm: "" for arm in order}
    grouped = runs.groupby("arm", sort=False)[cols]
    values = grouped.first().astype("string").fillna("(unset)")
    values = values.where(grouped.nunique(dropna=False) <= 1, "(varies)").reindex(order)
    if baseline is not None:
        differs = values.ne(values.loc[baseline])
    else:
        differs = pd.DataFrame(np.broadcast_to(values.nunique() > 1, values.shape),
                               index=values.index, columns=values.columns)
    names = [c.removeprefix("params.") for c in cols]
    out: dict[str, str] = {}
    for arm, row, mask in zip(values.index, values.to_numpy(), differs.to_numpy()):
        out[arm] = ", ".join(f"{names[i]}={row[i]}" for i in np.flatnonzero(mask))
    return out
