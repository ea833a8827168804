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

from harness.core.metrics import ARM_METRICS, COMPARABLE_METRICS, SUMMARY_METRICS
from harness.report.figures import FigureFile
from harness.report.html_template import HTML_TEMPLATE
from harness.report.links import run_url
from harness.report.formatting import interval, number, p_value, signed
from harness.report.verdict import ALPHA, GAP, HELDOUT, MIN_SEEDS, VERDICT_COLUMNS

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
    """stats.compare on `metric` plus a ``verdict`` column (empty without a baseline)."""
    verdicts: pd.DataFrame
    """verdict.verdict_table: each arm on held-out loss and gap (empty without a baseline)."""
    failed: dict[str, int]
    """Per arm, seeds whose runs all failed."""
    ignore_failed: bool
    headline: str
    """The study's answer in one sentence."""
    description: str
    """The study's question, from its spec."""
    samples: dict[str, tuple[int | None, str]]
    """Per featured arm: (seed, the text its run generated)."""
    runs: pd.DataFrame
    """Included runs in report order, with a ``url`` column."""
    pretraining: pd.DataFrame
    """collect.load_pretraining with a ``url`` column: the pretraining runs the study trained or
    fine-tuned from (empty for a study without a pretraining stage)."""
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
    table = runs[ident + metrics + params]
    # One physical line per run: a param such as sample.prompt may hold a newline.
    table = table.apply(lambda column: column.map(_one_line) if column.dtype == object
                        or pd.api.types.is_string_dtype(column) else column)
    table.to_csv(path, index=False)


def _one_line(value: object) -> object:
    return value.replace("\r\n", "\\n").replace("\n", "\\n") if isinstance(value, str) else value


def write_verdicts_csv(content: ReportContent, path: Path) -> None:
    """verdicts.csv: one row per compared arm (verdict.VERDICT_COLUMNS), arms in report order."""
    content.verdicts[VERDICT_COLUMNS].to_csv(path, index=False)


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
        ("Verdicts on", f"{HELDOUT} ({COMPARABLE_METRICS[HELDOUT].noun} at the evaluation validation loss chose) "
                        f"and {GAP} ({COMPARABLE_METRICS[GAP].noun} there), paired by seed, Holm-adjusted per axis"),
        ("Secondary view", f"{content.metric}: {COMPARABLE_METRICS[content.metric].noun}, paired by seed"),
    ]
    if content.failed:
        rows.append(("Failed seeds", ", ".join(f"{arm}: {n}" for arm, n in content.failed.items())
                     + (" (judged on finished seeds: --ignore-failed)" if content.ignore_failed else
                        " (counted against their arm: not declared generalizes-better)")))
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
    return f"{number(s['mean'])} \u00b1 {number(s['std'])}", f"{interval(s['ci_low'], s['ci_high'])}{extra}"


def arm_rows(content: ReportContent, arms: list[str]) -> list[dict]:
    """Per arm: n runs, per metric ('mean ± std', '[95% CI]'), what sets the arm apart.

    A metric some runs lack notes how many have it. The overfitting onset of a run whose val
    loss never rose is censored at its budget (its last evaluation): the count is shown, and the
    arm's mean is then a lower bound.
    """
    stats = content.arm_stats.set_index(["arm", "metric"]).to_dict("index")
    counts = content.runs["arm"].value_counts().to_dict()
    censored = _censored(content.runs)
    rows = []
    for arm in arms:
        row = {"arm": arm, "url": content.arm_links[arm], "n": str(counts[arm]),
               "baseline": arm == content.baseline, "settings": content.arm_settings.get(arm, "")}
        row |= {metric: _cell(stats[(arm, metric)], counts[arm]) for metric in ARM_METRICS}
        if censored.get(arm):
            mean, band = row["overfit_onset"]
            row["overfit_onset"] = (f"≥ {mean}", f"{band} ({censored[arm]}/{counts[arm]} censored at the budget)".strip())
        rows.append(row)
    return rows


def _censored(runs: pd.DataFrame) -> dict[str, int]:
    """Per arm, the runs whose overfitting onset is censored (val loss never rose long enough)."""
    if "onset_censored" not in runs:
        return {}
    flags = pd.to_numeric(runs["onset_censored"], errors="coerce").fillna(0) > 0
    return flags.groupby(runs["arm"]).sum().astype(int).to_dict()


def verdict_rows(content: ReportContent) -> list[dict[str, str]]:
    """Per compared arm: verdict, pairs, failed seeds, both paired changes with CI and Holm p."""
    def change(row: pd.Series, axis: str) -> str:
        diff = row[f"{axis}_diff"]
        return "n/a" if math.isnan(diff) else signed(diff, row[f"{axis}_ci_low"], row[f"{axis}_ci_high"])

    return [{"arm": r["arm"], "url": content.arm_links[r["arm"]], "verdict": r["verdict"], "n": str(int(r["n"])),
             "failed": str(int(r["failed"])), "loss": change(r, HELDOUT), "loss_p": p_value(r[f"{HELDOUT}_p_holm"]),
             "gap": change(r, GAP), "gap_p": p_value(r[f"{GAP}_p_holm"]),
             "seeds": f"{int(r['seeds_lower_loss'])}/{int(r['n'])}", "sentence": r["sentence"]}
            for _, r in content.verdicts.iterrows()]


def comparison_rows(content: ReportContent, arms: list[str]) -> list[dict[str, str]]:
    """Per compared arm: pairs, mean difference [CI], p-values, P(better), seeds better, verdict."""
    table = content.comparisons.set_index("arm").to_dict("index")
    rows = []
    for arm in arms:
        if arm not in table:
            continue
        c = table[arm]
        diff = "n/a" if c["n"] == 0 else signed(c["mean_diff"], c["ci_low"], c["ci_high"])
        rows.append({
            "arm": arm, "url": content.arm_links[arm], "n": str(int(c["n"])), "diff": diff,
            "t_p": p_value(c["t_p"]), "wilcoxon_p": p_value(c["wilcoxon_p"]), "p_holm": p_value(c["p_holm"]),
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
                     **{m: number(rec[m]) if m in rec else "n/a" for m in RUN_METRICS}})
    return rows


RUN_METRICS = ("best_epoch", *ARM_METRICS)
"""The runs table: where each run's validation loss bottomed out, then the per-arm metrics."""


HOW_TO_READ = [
    "Splits: the corpus is cut into training, validation and test text, in that order. Validation "
    "decides everything (each run's best evaluation, the plateau scheduler, pruning, a search's "
    "objective and its top-k); test is only read here. test_loss is the test loss at the evaluation "
    "validation chose, test_gap is test_loss minus the eval-mode training loss there.",
    "Verdicts judge held-out loss and gap together. generalizes-better: test_loss lower (p (Holm) < "
    f"{ALPHA}). closes-gap-by-underfitting: the gap shrank (p (Holm) < {ALPHA}) but test_loss is not "
    "lower: the arm fits its training text worse, which is no win. hurts: test_loss higher. "
    f"no-clear-effect: none of these. too-few-seeds: under {MIN_SEEDS} pairs, numbers shown, "
    "nothing declared. An arm with failed seeds is not called generalizes-better unless the "
    "report was built with --ignore-failed.",
    "Intervals are 95% t-intervals: mean \u00b1 t(0.975, n-1) \u00b7 sd/\u221an over seeds (runs).",
    "Differences are arm minus baseline on runs that share a seed (same init, data order, "
    "augmentation and evaluation windows); several runs of an arm with one seed are averaged first.",
    "p: paired t-test (scipy.stats.ttest_rel); Wilcoxon: signed-rank test as the non-parametric "
    "check; p (Holm): the t-test p after Holm's step-down correction across the arms compared "
    "(for the verdicts, within each axis). With n pairs the smallest two-sided Wilcoxon p is "
    "2/2^n (0.0625 at n = 5): below 6 pairs it can never reach 0.05, so it is shown, never decisive.",
    "P(better): the probability that the arm beats the baseline on the metric, under the Student t "
    "posterior of the mean paired difference (reference prior, n-1 degrees of freedom, centred on "
    "the observed mean, scale sd/\u221an). Lower is better for losses, gaps and wall time; later is "
    "better for the overfitting onset.",
    "Overfitting onset: the epoch after which validation loss rose patience times in a row; a run "
    "where it never did is censored at its budget (counted as its last epoch, shown as \u2265).",
]


PRETRAIN_HEADER = ["run", "seed", "status", "trained by study", "fine-tuned from it", "best_val_loss", "test_loss",
                   "wall_s"]


def pretraining_rows(content: ReportContent) -> list[dict[str, str]]:
    """The pretraining runs, formatted (a run another study trained and this one reused says so)."""
    return [{"run": r["run_id"], "url": r["url"], "seed": str(r["seed"]), "status": r["status"],
             "study": r["study"] + ("" if r["study"] in ("", content.name) else " (reused)"),
             "used_by": f"{r['used_by']} run(s)", "best_val_loss": number(r["best_val_loss"]),
             "test_loss": number(r["test_loss"]), "wall_s": number(r["wall_s"])}
            for r in content.pretraining.to_dict("records")]


def write_html(content: ReportContent, path: Path) -> None:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    figures = [(f, _data_uri(f.path)) for f in content.figures if f.path]
    html = env.from_string(HTML_TEMPLATE).render(
        c=content, facts=facts(content), arm_rows=arm_rows(content, content.arms),
        comparison_rows=comparison_rows(content, content.arms), run_rows=run_rows(content),
        metrics=ARM_METRICS, figures=figures, skipped=[f for f in content.figures if not f.path],
        verdicts=verdict_sentences(content), verdict_rows=verdict_rows(content), verdict_header=VERDICT_HEADER,
        how_to_read=HOW_TO_READ, noun=COMPARABLE_METRICS[content.metric].noun,
        excluded=content.excluded.to_dict("records"), run_metrics=RUN_METRICS,
        pretraining=pretraining_rows(content),
        parent_url=content.parent_run_id and run_url(content.ui_url, content.experiment_id, content.parent_run_id))
    path.write_text(html, encoding="utf-8")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def verdict_sentences(content: ReportContent) -> list[str]:
    """The verdict sentences of the featured arms, in report order."""
    sentences = dict(zip(content.verdicts["arm"], content.verdicts["sentence"]))
    return [sentences[a] for a in content.featured if a in sentences]


VERDICT_HEADER = ["arm", "verdict", "pairs", "failed seeds", f"\u0394 {HELDOUT} [95% CI]", "p (Holm)",
                  f"\u0394 {GAP} [95% CI]", "p (Holm)", "lower loss on"]


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
    if content.description:
        lines += [f"> {md(content.description)}", ""]
    lines += [f"**Answer:** {md(content.headline)}", ""]
    lines += ["## Verdicts: held-out loss and gap, paired by seed", ""]
    featured = [r for r in verdict_rows(content) if r["arm"] in arms]
    if featured:
        lines += _md_table(VERDICT_HEADER, [[link(r["arm"], r["url"]), r["verdict"], r["n"], r["failed"], r["loss"],
                                             md(r["loss_p"]), r["gap"], md(r["gap_p"]), r["seeds"]]
                                            for r in featured])
        lines += [""]
    lines += [f"- {md(v)}" for v in verdict_sentences(content)] or ["- " + md(content.baseline_note)]
    if len(arms) < len(content.arms):
        lines += ["", f"_Tables and verdicts show {len(arms)} of {len(content.arms)} arms: the baseline "
                      f"every arm with a finding, and the best by {HELDOUT}; index.html, runs.csv and "
                      "verdicts.csv have all of them._"]
    lines += ["", "## Built from", ""]
    lines += [f"- **{label}**: {md(value)}" for label, value in facts(content)]
    comparisons = comparison_rows(content, arms)
    if comparisons:
        noun = md(COMPARABLE_METRICS[content.metric].noun)
        lines += ["", f"## Secondary view: {noun} ({content.metric}), paired by seed", ""]
        lines += _md_table(
            ["arm", "pairs", "mean diff [95% CI]", "t-test p", "Wilcoxon p", "p (Holm)", "P(better)", "better on"],
            [[link(r["arm"], r["url"]), r["n"], r["diff"], md(r["t_p"]), md(r["wilcoxon_p"]), md(r["p_holm"]),
              r["p_better"], r["better"]] for r in comparisons])
    lines += ["", "## Per arm: mean \u00b1 std [95% CI]", ""]
    lines += _md_table(
        ["arm", "n", *ARM_METRICS, "differs from the baseline" if content.baseline else "settings that vary"],
        [[link(r["arm"], r["url"]) + (" (baseline)" if r["baseline"] else ""), r["n"],
          *(md(" ".join(r[m]).strip()) for m in ARM_METRICS), md(r["settings"])] for r in arm_rows(content, arms)])
    if content.samples:
        lines += ["", "## Samples (each arm's first seed)", ""]
        for arm, (seed, text) in content.samples.items():
            # A quote, escaped like every cell: generated text may hold anything, "<script>" too.
            lines += [f"**{md(arm)}** (seed {seed}):", ""] + [f"> {md(line)}  " for line in text.splitlines()] + [""]
    pretraining = pretraining_rows(content)
    if pretraining:
        lines += ["", f"## Pretraining runs ({len(pretraining)})", "",
                  "The arms that set `transfer.init_from: pretrain` fine-tuned from these (each run's "
                  "`harness.pretrain_run` tag names its own); they are compared above like any arm.", ""]
        lines += _md_table(PRETRAIN_HEADER, [[link(r["run"], r["url"]), md(r["seed"]), md(r["status"]), md(r["study"]),
                                              r["used_by"], r["best_val_loss"], r["test_loss"], r["wall_s"]]
                                             for r in pretraining])
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
