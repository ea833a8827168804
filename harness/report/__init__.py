"""The comparison report of one study: `build_report` reads MLflow and writes reports/NAME/.

Pipeline: collect (MLflow -> pandas) -> arms (what counts, grouping, baseline) -> stats ->
verdict -> search (what a search logged, searches only) -> figures -> render. Each step is its own module.

The answer is the verdict table: every arm against the baseline on held-out (test) loss and on
the gap together, paired by seed (verdict.verdict_table). `metric` only picks the secondary
comparison table and the per-arm figure.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from harness.core.errors import UsageError
from harness.core.metrics import COMPARABLE_METRICS
from harness.report import arms as arms_mod
from harness.report import collect, figures, links, render, search, stats
from harness.report.output import claim_out_dir
from harness.report.verdict import (ALPHA, FEW, GENERALIZES, HELDOUT, LABELS as VERDICT_ORDER, UNCLEAR,
                                    VERDICT_COLUMNS)
from harness.report.formatting import interval, number
from harness.report.verdict import verdict, verdict_table
from harness.tracking.uris import redact

__all__ = ["ReportResult", "build_report", "default_out_dir"]

TOP_ARMS = 10
"""Most arms drawn in a figure or listed in verdicts and Markdown tables: the baseline and the
best by the compared metric. Searches have one arm per trial; hundreds of lines help no one."""


@dataclass(frozen=True)
class ReportResult:
    out_dir: Path
    index_html: Path
    report_md: Path
    runs_csv: Path
    verdicts_csv: Path
    figures: list[Path]
    summary_lines: list[str]
    """Three lines for the CLI: what was read and where the report is; the best arm; the headline verdict."""
    n_runs: int
    """Runs analysed (finished training runs)."""
    n_excluded: int
    arms: list[str]
    baseline: str | None
    arm_stats: pd.DataFrame
    """stats.arm_table: arm, metric, n, mean, std, ci_low, ci_high."""
    comparisons: pd.DataFrame
    """stats.compare on `metric` plus verdict; empty without a baseline."""
    verdicts: pd.DataFrame
    """verdict.verdict_table (VERDICT_COLUMNS); empty without a baseline."""
    metric: str
    """The metric of the secondary comparison (the requested one, or the default chosen)."""


def default_out_dir(name: str) -> Path:
    """reports/<name> under $ABLATE_HOME (or the current directory); the name made path-safe."""
    safe = re.sub(r"[^\w.=+-]+", "_", name).strip("._") or "study"
    return Path(os.environ.get("ABLATE_HOME") or ".") / "reports" / safe


def build_report(name: str, out_dir: Path | None = None, baseline: str | None = None,
                 metric: str | None = None, ui_url: str = "http://127.0.0.1:5000",
                 tracking_uri: str | None = None, group_by: str = "harness.arm",
                 ignore_failed: bool = False) -> ReportResult:
    """Read study `name` from MLflow and write index.html, report.md, runs.csv, verdicts.csv and
    figures/.

    `metric` picks the secondary comparison; None means the search's objective for a search or
    its confirmation (the parent's harness.objective_metric tag), else test_loss.
    `ignore_failed` lets an arm with failed seeds be judged on its finished seeds alone.
    `tracking_uri` None means mlflow's current one. `group_by` is the tag (or ``params.KEY``)
    that names a run's arm. Raises UsageError (one line) for a missing or empty study, a study
    without finished runs, an unknown metric or a baseline that is no arm. The output is the
    same for the same runs: arms sort baseline first, then by label; nothing depends on the clock.
    """
    if metric is not None and metric not in COMPARABLE_METRICS:
        raise UsageError(f"--metric {metric!r} is not a comparable metric; allowed: {', '.join(COMPARABLE_METRICS)}")
    study = collect.load_study(name, tracking_uri)
    if metric is None:
        objective = study.parent_tag("harness.objective_metric")
        metric = objective if objective in COMPARABLE_METRICS else HELDOUT
    study_type = study.parent_tag("harness.study_type")
    grouped = arms_mod.group_runs(study.runs, study=name, study_type=study_type, group_by=group_by,
                                  requested_baseline=baseline,
                                  tagged_baseline=study.parent_tag("harness.baseline_arm"))
    runs = _in_order(grouped.runs, grouped.order)
    runs["url"] = [links.run_url(ui_url, study.experiment_id, r) for r in runs["run_id"]]
    excluded = grouped.excluded.assign(
        url=[links.run_url(ui_url, study.experiment_id, r) for r in grouped.excluded["run_id"]])

    arm_stats = stats.arm_table(runs, grouped.order, tuple(dict.fromkeys((*stats.ARM_METRICS, metric))))
    comparisons = _comparisons(runs, grouped, metric)
    failed = arms_mod.failed_seeds(grouped)
    verdicts = (verdict_table(runs, grouped.order, grouped.baseline, failed, ignore_failed)
                if grouped.baseline is not None else pd.DataFrame(columns=VERDICT_COLUMNS))
    featured = _featured(arm_stats, grouped.order, grouped.baseline, HELDOUT, verdicts)

    history = collect.load_histories(runs[["run_id", "artifact_uri"]], study.tracking_uri)
    notes = _thread_notes(runs)
    missing = runs["run_id"].nunique() - (history["run_id"].nunique() if not history.empty else 0)
    if missing:
        notes.append(f"{missing} run(s) have no readable history.json; their curves are missing")
    if not history.empty:
        history = history.merge(runs[["run_id", "arm"]], on="run_id")
    samples = _samples(runs, featured, study.tracking_uri)
    pretraining = collect.load_pretraining(study, runs)
    pretraining["url"] = [links.run_url(ui_url, study.experiment_id, r) for r in pretraining["run_id"]]
    search_data, search_note = (None, "only searches have search results")
    if study_type == "search":
        search_data, search_note = search.load_search(study)
        notes.append(search_note)

    out = claim_out_dir(Path(out_dir) if out_dir is not None else default_out_dir(name))
    figure_files = figures.write_figures(figures.FigureInput(
        runs=runs, history=history, arms=featured, baseline=grouped.baseline, metric=metric,
        arm_stats=arm_stats, verdicts=verdicts, study_type=study_type, search=search_data,
        search_note=search_note),
        out / "figures")

    parent = study.parent
    content = render.ReportContent(
        name=name, study_type=study_type, experiment_id=study.experiment_id,
        tracking_uri=redact(study.tracking_uri), ui_url=ui_url,
        parent_run_id=None if parent is None else parent["run_id"], metric=metric, group_by=group_by,
        baseline=grouped.baseline, baseline_note=grouped.baseline_note, arms=grouped.order,
        featured=featured, arm_links=_arm_links(runs, study, ui_url),
        arm_settings=arms_mod.arm_settings(runs, grouped.order, grouped.baseline),
        arm_stats=arm_stats, comparisons=comparisons, verdicts=verdicts, failed=failed,
        ignore_failed=ignore_failed, headline=_headline(grouped, arm_stats, verdicts),
        description=question(study.parent_tag("mlflow.note.content")), samples=samples, runs=runs,
        pretraining=pretraining,
        excluded=excluded,
        excluded_summary=arms_mod.excluded_summary(grouped.excluded), figures=figure_files, notes=notes)
    paths = out / "index.html", out / "report.md", out / "runs.csv", out / "verdicts.csv"
    render.write_html(content, paths[0])
    render.write_markdown(content, paths[1])
    render.write_runs_csv(content, paths[2])
    render.write_verdicts_csv(content, paths[3])
    if parent is not None:
        _publish(study, parent["run_id"], out, content)
    return ReportResult(
        out_dir=out, index_html=paths[0], report_md=paths[1], runs_csv=paths[2], verdicts_csv=paths[3],
        figures=[f.path for f in figure_files if f.path],
        summary_lines=_summary(content, paths[0]), n_runs=len(runs), n_excluded=len(excluded),
        arms=grouped.order, baseline=grouped.baseline, arm_stats=arm_stats, comparisons=comparisons,
        verdicts=verdicts, metric=metric)


def _in_order(runs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rank = {arm: i for i, arm in enumerate(order)}
    keyed = runs.assign(_rank=runs["arm"].map(rank))
    keyed = keyed.sort_values(["_rank", "seed", "run_id"], na_position="last")
    return keyed.drop(columns="_rank").reset_index(drop=True)


def _comparisons(runs: pd.DataFrame, grouped: arms_mod.Arms, metric: str) -> pd.DataFrame:
    if grouped.baseline is None:
        return pd.DataFrame(columns=["arm", "n", "mean_diff", "ci_low", "ci_high", "t_p", "wilcoxon_p",
                                     "p_holm", "p_better", "n_better", "verdict"])
    table = stats.compare(runs, grouped.order, grouped.baseline, metric)
    table["verdict"] = [verdict(row, metric, grouped.baseline) for row in table.to_dict("records")]
    return table


def _ranked(arm_stats: pd.DataFrame, order: list[str], metric: str) -> list[str]:
    """Arms best first by mean `metric` (arms without a value last; ties keep `order`)."""
    means = arm_stats[arm_stats["metric"] == metric].set_index("arm")["mean"]
    sign = 1 if COMPARABLE_METRICS[metric].lower_is_better else -1
    rank = {a: i for i, a in enumerate(order)}

    def key(arm: str) -> tuple:
        value = means[arm]
        return (bool(math.isnan(value)), 0.0 if math.isnan(value) else sign * value, rank[arm])

    return sorted(order, key=key)


def _featured(arm_stats: pd.DataFrame, order: list[str], baseline: str | None, metric: str,
              verdicts: pd.DataFrame) -> list[str]:
    """The baseline, every arm with a finding (a verdict other than no-clear-effect or
    too-few-seeds: a regularizer that hurts matters as much as one that helps), then the best
    arms by mean `metric` up to TOP_ARMS in all; kept in `order`."""
    if len(order) <= TOP_ARMS:
        return list(order)
    found = set(verdicts.loc[~verdicts["verdict"].isin([UNCLEAR, FEW]), "arm"])
    keep = found | {baseline}
    for arm in _ranked(arm_stats, order, metric):
        if len(keep - {None}) >= TOP_ARMS:
            break
        keep.add(arm)
    return [a for a in order if a in keep]


def _arm_links(runs: pd.DataFrame, study: collect.StudyData, ui_url: str) -> dict[str, str]:
    all_runs = study.runs
    summaries = all_runs[all_runs["kind"] == "arm-summary"]
    summary_of = {}
    if "tags.harness.arm" in summaries:
        summary_of = dict(zip(summaries["tags.harness.arm"], summaries["run_id"]))
    return {arm: links.arm_url(ui_url, study.experiment_id, list(ids), summary_of.get(arm))
            for arm, ids in runs.groupby("arm", sort=False)["run_id"]}


def _samples(runs: pd.DataFrame, arms: list[str], tracking_uri: str) -> dict[str, tuple[int | None, str]]:
    """Per arm, the generated text of its first seed's run: (seed, samples.txt), where it has one."""
    first = runs[runs["arm"].isin(arms)].drop_duplicates("arm")
    texts = collect.load_texts(first[["run_id", "artifact_uri"]], tracking_uri)
    return {arm: (None if pd.isna(seed) else int(seed), texts[run_id])
            for arm, seed, run_id in zip(first["arm"], first["seed"], first["run_id"]) if run_id in texts}


ANSWER_MARK = "\n\n---\nablate report:"
"""Where the report's answer starts in the study run's MLflow description (after the question)."""


def question(note: str | None) -> str:
    """The study's question: its MLflow description without an answer an earlier report added."""
    return (note or "").split(ANSWER_MARK)[0].strip()


def _publish(study: collect.StudyData, parent_run_id: str, out: Path, content: render.ReportContent) -> None:
    """Put the answer where the runs are: the study run's description gets the headline and the
    verdicts, its artifacts the report's files (report/), replacing what an earlier report put."""
    client = MlflowClient(tracking_uri=study.tracking_uri)
    lines = [f"**Answer:** {content.headline}", ""] + [f"- {v}" for v in render.verdict_sentences(content)]
    note = question(study.parent_tag("mlflow.note.content")) + ANSWER_MARK + "\n\n" + "\n".join(lines)
    client.set_tag(parent_run_id, "mlflow.note.content", note)
    for name in ("index.html", "report.md", "runs.csv", "verdicts.csv"):
        client.log_artifact(parent_run_id, str(out / name), "report")
    for figure in content.figures:
        if figure.path:
            client.log_artifact(parent_run_id, str(figure.path), "report/figures")


def _thread_notes(runs: pd.DataFrame) -> list[str]:
    """A note when the runs used different intra-op thread counts (tag harness.threads)."""
    if "tags.harness.threads" not in runs:
        return []
    counts = sorted({int(t) for t in pd.to_numeric(runs["tags.harness.threads"], errors="coerce").dropna()})
    if len(counts) < 2:
        return []
    return [f"runs used {', '.join(map(str, counts))} torch threads: the same recipe and seed give "
            "bit-identical results only at one thread count, so differences of the order of float "
            "rounding between such runs are not effects"]


def _headline(grouped: arms_mod.Arms, arm_stats: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """The study's answer in one sentence: the best arm on held-out loss and what became of its gap.

    The best arm is the one with the lowest mean test_loss; when that is the baseline, or no
    arm's verdict is `generalizes-better`, the sentence says so rather than naming a winner.
    """
    if grouped.baseline is None or verdicts.empty:
        return grouped.baseline_note
    best = _ranked(arm_stats, grouped.order, HELDOUT)[0]
    winners = verdicts[verdicts["verdict"] == GENERALIZES]
    if best == grouped.baseline or best not in set(verdicts["arm"]):
        lead = (f"No arm has a lower mean held-out loss than the baseline {grouped.baseline}"
                if best == grouped.baseline else f"{best} has the lowest mean held-out loss")
        if winners.empty:
            return f"{lead}; no arm generalizes better (held-out loss lower, Holm p < {ALPHA})."
        return f"{lead}. {winners.iloc[0]['sentence']}"
    return "Best on held-out loss: " + verdicts.set_index("arm").loc[best, "sentence"]


def _summary(content: render.ReportContent, index_html: Path) -> list[str]:
    n_arms = len(content.arms)
    first = (f"{content.name}: {len(content.runs)} runs in {n_arms} arm{'s' * (n_arms != 1)}, "
             f"{len(content.excluded)} excluded -> {index_html}")
    if not content.verdicts.empty:
        counts = content.verdicts["verdict"].value_counts()
        return [first, content.headline,
                "verdicts: " + ", ".join(f"{counts[v]} {v}" for v in VERDICT_ORDER if v in counts)]
    best = _ranked(content.arm_stats, content.arms, HELDOUT)[0]
    row = content.arm_stats.set_index(["arm", "metric"]).loc[(best, HELDOUT)]
    ci = " " + interval(row["ci_low"], row["ci_high"]) if not math.isnan(row["ci_low"]) else ""
    return [first, content.headline,
            f"lowest mean {HELDOUT}: {best}, {number(row['mean'])}{ci} over {int(row['n'])} run(s); no verdicts"]
