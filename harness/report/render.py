"""Write a report's files: index.html, report.md and runs.csv (figures are figures.py's).

Both documents show the same findings from the same table builders. Everything that comes
from a run (names, tags, params, error messages) is untrusted text: the HTML is rendered by
Jinja2 with autoescaping on, and Markdown cells escape the characters that would break a
table or open an HTML tag.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pandas as pd

from harness.report.collect import SUMMARY_METRICS
from harness.report.figures import FigureFile
from harness.report.html_template import HTML_TEMPLATE
from harness.report.stats import ARM_METRICS, METRICS
from harness.report.verdict import ALPHA, MIN_SEEDS, number

STUDY_KINDS = {"ablation": "ablation study", "search": "Optuna search", None: "loose runs"}


@dataclass(frozen=True)
class ReportContent:
    """Everything a report shows, computed; rendering only formats it."""

    name: str
    study_type: str | None
    experiment_id: str
    tracking_uri: str
    ui_url: str
    parent_run_id: str | None
    metric: str
    group_by: str
    baseline: str | None
    baseline_note: str
    arms: list[str]
    """All arms, baseline first."""
    featured: list[str]
    """The arms in figures, verdicts and Markdown tables (all of them when there are few)."""
    arm_links: dict[str, str]
    arm_settings: dict[str, str]
    arm_stats: pd.DataFrame
    comparisons: pd.DataFrame
    """stats.compare plus a ``verdict`` column (empty without a baseline)."""
    runs: pd.DataFrame
    """Included runs in report order, with a ``url`` column."""
    excluded: pd.DataFrame
    """arms.Arms.excluded with a ``url`` column."""
    excluded_summary: str
    figures: list[FigureFile]
    notes: list[str]


def write_runs_csv(content: ReportContent, path: Path) -> None:
    """One row per included run: identity, summary metrics, then every param (sorted)."""
    runs = content.runs
    ident = ["arm", "seed", "trial_number", "run_id", "run_name", "status", "url"]
    metrics = [m for m in SUMMARY_METRICS if m in runs]
    params = sorted(c for c in runs.columns if c.startswith("params."))
    runs[ident + metrics + params].to_csv(path, index=False)


def facts(content: ReportContent) -> list[tuple[str, str]]:
    """What the report was built from, as (label, value) pairs."""
    n_arms = len(content.arms)
    rows = [
        ("Study", f"{content.name} ({STUDY_KINDS.get(content.study_type, content.study_type)})"),
        ("MLflow", f"experiment {content.experiment_id} at {content.tracking_uri}"),
        ("Runs analysed", f"{len(content.runs)} finished training runs in {n_arms} arm{'s' * (n_arms != 1)}"
                          f" ({_grouping(content)})"),
        ("Runs excluded", f"{len(content.excluded)}: {content.excluded_summary}"),
        ("Baseline", f"{content.baseline} ({content.baseline_note})" if content.baseline else content.baseline_note),
        ("Compared on", f"{content.metric}: {METRICS[content.metric].noun}, paired by seed"),
    ]
    return rows + [("Note", note) for note in content.notes]


def _grouping(content: ReportContent) -> str:
    fallback = "trial-<number>, else config-<hash>" if content.study_type == "search" else "config-<hash>"
    return f"arm = {content.group_by}; without it, {fallback}"


def _cell(s: dict, n_runs: int) -> tuple[str, str]:
    """('mean ± std', '[ci_low, ci_high]') of one arm_table row; the second part may be empty."""
    if math.isnan(s["mean"]):
        return "n/a", ""
    extra = f" ({int(s['n'])}/{n_runs} runs)" if s["n"] < n_runs else ""
    if math.isnan(s["std"]):
        return number(s["mean"]), extra.strip()
    return f"{number(s['mean'])} \u00b1 {number(s['std'])}", f"[{number(s['ci_low'])}, {number(s['ci_high'])}]{extra}"


def arm_rows(content: ReportContent, arms: list[str]) -> list[dict]:
    """Per arm: n runs, per metric ('mean ± std', '[95% CI]'), what sets the arm apart.

    A metric some runs lack (overfit_onset when val loss never rose) notes how many have it.
    """
    stats = content.arm_stats.set_index(["arm", "metric"]).to_dict("index")
    counts = content.runs["arm"].value_counts().to_dict()
    rows = []
    for arm in arms:
        row = {"arm": arm, "url": content.arm_links[arm], "n": str(counts[arm]),
               "baseline": arm == content.baseline, "settings": content.arm_settings.get(arm, "")}
        row |= {metric: _cell(stats[(arm, metric)], counts[arm]) for metric in ARM_METRICS}
        rows.append(row)
    return rows


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def comparison_rows(content: ReportContent, arms: list[str]) -> list[dict[str, str]]:
    """Per compared arm: pairs, mean difference [CI], p-values, P(better), seeds better, verdict."""
    table = content.comparisons.set_index("arm").to_dict("index")
    rows = []
    for arm in arms:
        if arm not in table:
            continue
        c = table[arm]
        diff = "n/a" if c["n"] == 0 else f"{c['mean_diff']:+.3g}" + (
            "" if math.isnan(c["ci_low"]) else f" [{c['ci_low']:+.3g}, {c['ci_high']:+.3g}]")
        rows.append({
            "arm": arm, "url": content.arm_links[arm], "n": str(int(c["n"])), "diff": diff,
            "t_p": _p(c["t_p"]), "wilcoxon_p": _p(c["wilcoxon_p"]), "p_holm": _p(c["p_holm"]),
            "p_better": "n/a" if math.isnan(c["p_better"]) else f"{c['p_better']:.2f}",
            "better": f"{int(c['n_better'])}/{int(c['n'])}", "verdict": c["verdict"],
            "significant": bool(c["n"] >= MIN_SEEDS and c["p_holm"] < ALPHA),
        })
    return rows


def run_rows(content: ReportContent) -> list[dict[str, str]]:
    rows = []
    for run in content.runs.itertuples(index=False):
        rec = run._asdict()
        rows.append({"arm": run.arm, "seed": "" if pd.isna(run.seed) else str(run.seed),
                     "run": run.run_name or run.run_id, "url": run.url,
                     **{m: number(rec[m]) if m in rec else "n/a" for m in ARM_METRICS}})
    return rows


HOW_TO_READ = [
    "Intervals are 95% t-intervals: mean \u00b1 t(0.975, n-1) \u00b7 sd/\u221an over seeds (runs).",
    "Differences are arm minus baseline on runs that share a seed (same init, data order and "
    "augmentation); several runs of an arm with one seed are averaged first.",
    "p: paired t-test (scipy.stats.ttest_rel); Wilcoxon: signed-rank test as the non-parametric "
    "check; p (Holm): the t-test p after Holm's step-down correction across the arms compared.",
    "P(better): the probability that the arm beats the baseline on the metric, under the Student t "
    "posterior of the mean paired difference (reference prior, n-1 degrees of freedom, centred on "
    "the observed mean, scale sd/\u221an). Lower is better for losses, gaps and wall time; later is "
    "better for the overfitting onset.",
    f"A winner is named only with at least {MIN_SEEDS} paired seeds and p (Holm) < {ALPHA}; with "
    "fewer seeds the report says the evidence is thin, with one seed it runs no test.",
]


def write_html(content: ReportContent, path: Path) -> None:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    figures = [(f, _data_uri(f.path)) for f in content.figures if f.path]
    html = env.from_string(HTML_TEMPLATE).render(
        c=content, facts=facts(content), arm_rows=arm_rows(content, content.arms),
        comparison_rows=comparison_rows(content, content.arms), run_rows=run_rows(content),
        metrics=ARM_METRICS, figures=figures, skipped=[f for f in content.figures if not f.path],
        verdicts=_verdicts(content), how_to_read=HOW_TO_READ, noun=METRICS[content.metric].noun,
        excluded=content.excluded.to_dict("records"))
    path.write_text(html, encoding="utf-8")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _verdicts(content: ReportContent) -> list[str]:
    if content.comparisons.empty:
        return []
    verdicts = dict(zip(content.comparisons["arm"], content.comparisons["verdict"]))
    return [verdicts[a] for a in content.featured if a in verdicts]


def md(text: object) -> str:
    r"""Text safe in a Markdown table cell: | and \ escaped, < > escaped so no tag opens, one line."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")
    return " ".join(out.split())


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


class _Links:
    """Reference-style Markdown links, so long MLflow addresses stay out of the tables."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def __call__(self, text: str, url: str) -> str:
        ref = self.ids.setdefault(url, f"{len(self.ids) + 1}")
        return f"[{md(text)}][{ref}]"

    def definitions(self) -> list[str]:
        return [f"[{ref}]: <{url}>" for url, ref in self.ids.items()]


def write_markdown(content: ReportContent, path: Path) -> None:
    arms = content.featured
    link = _Links()
    lines = [f"# Report: {md(content.name)}", ""]
    lines += [f"- **{label}**: {md(value)}" for label, value in facts(content)]
    lines += ["", "## Verdicts", ""]
    lines += [f"- {md(v)}" for v in _verdicts(content)] or ["- " + md(content.baseline_note)]
    if len(arms) < len(content.arms):
        lines += ["", f"_Tables and verdicts show {len(arms)} of {len(content.arms)} arms: the baseline "
                      f"and the best by {content.metric}; index.html and runs.csv have all of them._"]
    comparisons = comparison_rows(content, arms)
    if comparisons:
        noun = md(METRICS[content.metric].noun)
        lines += ["", f"## Against the baseline: {noun} ({content.metric}), paired by seed", ""]
        lines += _md_table(
            ["arm", "pairs", "mean diff [95% CI]", "t-test p", "Wilcoxon p", "p (Holm)", "P(better)", "better on"],
            [[link(r["arm"], r["url"]), r["n"], r["diff"], md(r["t_p"]), md(r["wilcoxon_p"]), md(r["p_holm"]),
              r["p_better"], r["better"]] for r in comparisons])
    lines += ["", "## Per arm: mean \u00b1 std [95% CI]", ""]
    lines += _md_table(
        ["arm", "n", *ARM_METRICS, "differs from the baseline" if content.baseline else "settings that vary"],
        [[link(r["arm"], r["url"]) + (" (baseline)" if r["baseline"] else ""), r["n"],
          *(md(" ".join(r[m]).strip()) for m in ARM_METRICS), md(r["settings"])] for r in arm_rows(content, arms)])
    lines += ["", "## Figures", ""]
    for f in content.figures:
        if f.path:
            lines += [f"### {md(f.title)}", "", f"![{md(f.title)}](figures/{f.path.name})", "", md(f.caption), ""]
    lines += [f"- {md(f.title)}: not drawn, {md(f.skipped)}" for f in content.figures if not f.path]
    lines += ["", f"## Excluded runs ({len(content.excluded)})", ""]
    if content.excluded.empty:
        lines += ["None."]
    else:
        lines += _md_table(["run", "arm", "status", "reason"],
                           [[link(r["run_name"] or r["run_id"], r["url"]), md(r["arm"]), md(r["status"]),
                             md(r["reason"])] for r in content.excluded.to_dict("records")])
    lines += ["", "## How to read this report", ""] + [f"- {md(t)}" for t in HOW_TO_READ]
    lines += [""] + link.definitions()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
