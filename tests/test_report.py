"""`build_report` end to end on a real MLflow store (sqlite + local artifacts) written as
docs/tracking.md says: files, tables, exclusions, escaping, errors, determinism."""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import ABLATION_ARMS, SCRIPT_ARM, shared_store

from harness.core.config import build_config
from harness.core.errors import UsageError
from harness.report import build_report, default_out_dir
from harness.report.arms import group_runs
from harness.core.metrics import SUMMARY_METRICS
from harness.report.collect import load_study
from harness.report.output import MARKER
from harness.tracking.uris import local_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ABLATION_FIGURES = {"paired_differences", "validation_curves", "learning_curves", "gap", "test_loss_by_arm",
                    "tradeoff", "learning_rate", "gradients"}


@pytest.fixture(scope="module")
def store():
    return shared_store()


@pytest.fixture(scope="module")
def ablation(store, tmp_path_factory):
    s, ids = store
    out = tmp_path_factory.mktemp("report") / "abl"
    return build_report("abl", out_dir=out, tracking_uri=s.tracking_uri), ids["abl"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_ablation_report_writes_every_file(ablation):
    result, _ = ablation
    for path in (result.index_html, result.report_md, result.runs_csv, result.verdicts_csv):
        assert path.parent == result.out_dir and path.stat().st_size > 0
    names = {p.stem for p in result.figures}
    assert names == ABLATION_FIGURES
    for png in result.figures:
        assert png.parent == result.out_dir / "figures"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


def test_runs_csv_has_one_row_per_finished_run_and_every_param(ablation):
    result, ids = ablation
    header, rows = read_csv(result.runs_csv)
    # Params are the union over runs: the cosine and step schedules add their own keys.
    n_params = len(set().union(*(build_config(overrides=o).flat() for o in ABLATION_ARMS.values())))
    assert len(header) == 7 + len(SUMMARY_METRICS) + n_params
    assert header[:7] == ["arm", "seed", "trial_number", "run_id", "run_name", "status", "url"]
    assert {r["run_id"] for r in rows} == set(ids["runs"]) and len(rows) == len(ids["runs"]) == 20
    # sample.prompt is "\n": one physical line per run all the same.
    assert {r["params.sample.prompt"] for r in rows} == {"\\n"}
    assert len(result.runs_csv.read_text(encoding="utf-8").splitlines()) == 21
    assert [r["arm"] for r in rows[:5]] == ["baseline"] * 5
    assert [r["seed"] for r in rows[:5]] == ["0", "1", "2", "3", "4"]
    dropout = [r for r in rows if r["arm"] == "dropout=0.3"]
    assert {r["params.model.dropout"] for r in dropout} == {"0.3"}
    assert all(r["url"].endswith(f"/runs/{r['run_id']}?workflowType=machine_learning") for r in rows)


def test_arm_table_and_comparisons(ablation):
    result, _ = ablation
    assert result.n_runs == 20 and result.baseline == "baseline"
    assert result.arms == ["baseline", SCRIPT_ARM, "clip_norm=none", "dropout=0.3"]
    stats = result.arm_stats.set_index(["arm", "metric"])
    assert stats.loc[("dropout=0.3", "final_gap"), "n"] == 5
    assert stats.loc[("dropout=0.3", "final_gap"), "mean"] < stats.loc[("baseline", "final_gap"), "mean"]
    # The secondary view defaults to the held-out loss.
    assert result.metric == "test_loss"
    comp = result.comparisons.set_index("arm")
    assert list(comp.index) == [SCRIPT_ARM, "clip_norm=none", "dropout=0.3"]
    drop = comp.loc["dropout=0.3"]
    assert drop["n"] == 5 and drop["n_better"] == 5 and drop["p_holm"] < 0.01
    assert drop["verdict"].startswith("dropout=0.3 lowered the held-out (test) loss by 0.24")


def test_verdicts_judge_heldout_loss_and_gap_and_count_failed_seeds(ablation, store, tmp_path):
    result, _ = ablation
    header, rows = read_csv(result.verdicts_csv)
    assert header[:4] == ["arm", "n", "failed", "verdict"] and "test_loss_p_holm" in header
    by_arm = {r["arm"]: r for r in rows}
    assert list(by_arm) == [SCRIPT_ARM, "clip_norm=none", "dropout=0.3"]
    drop = by_arm["dropout=0.3"]
    # Lower held-out loss on 5/5 seeds, but seed 99 FAILED: not declared better by default...
    assert (drop["n"], drop["failed"], drop["verdict"]) == ("5", "1", "no-clear-effect")
    assert float(drop["test_loss_diff"]) < 0 and float(drop["test_loss_p_holm"]) < 0.05
    assert "1 seed(s) failed" in drop["sentence"] and "--ignore-failed" in drop["sentence"]
    assert by_arm["clip_norm=none"]["verdict"] == "no-clear-effect"
    # ...and judged on its finished seeds when asked.
    again = build_report("abl", out_dir=tmp_path / "ignore", tracking_uri=store[0].tracking_uri,
                         ignore_failed=True)
    assert again.verdicts.set_index("arm").loc["dropout=0.3", "verdict"] == "generalizes-better"
    assert again.summary_lines[1].startswith("Best on held-out loss: dropout=0.3 generalizes better than baseline")


def test_summary_has_three_lines(ablation):
    result, _ = ablation
    first, second, third = result.summary_lines
    assert first.startswith("abl: 20 runs in 4 arms, 5 excluded") and str(result.index_html) in first
    assert second.startswith("Best on held-out loss: dropout=0.3: no clear effect against baseline")
    assert third == "verdicts: 3 no-clear-effect"


def test_excluded_runs_are_listed_with_their_reason(ablation):
    result, ids = ablation
    assert result.n_excluded == 5
    page = result.index_html.read_text(encoding="utf-8")
    md = result.report_md.read_text(encoding="utf-8")
    for run_id in ids["excluded"].values():
        assert f"/runs/{run_id}" in page and f"/runs/{run_id}" in md
    for reason in ("FAILED: RuntimeError: CUDA out of memory", "KILLED: interrupted (Ctrl-C) at epoch 6",
                   "RUNNING: not finished", "the study&#39;s parent run", "an arm summary"):
        assert reason in page
    assert "5: 1 FAILED, 1 KILLED, 1 RUNNING, 1 harness.kind=arm-summary, 1 harness.kind=study" in md


def test_every_arm_and_run_links_to_mlflow(ablation, store):
    result, ids = ablation
    page = result.index_html.read_text(encoding="utf-8")
    exp = ids["experiment_id"]
    for run_id in ids["runs"]:
        assert f'href="http://127.0.0.1:5000/#/experiments/{exp}/runs/{run_id}?workflowType=machine_learning"' in page
    # The baseline has an arm-summary run: its arm links there.
    assert (f'<a href="http://127.0.0.1:5000/#/experiments/{exp}/runs/{ids["excluded"]["summary"]}'
            f'?workflowType=machine_learning">baseline</a>') in page
    # The study's run, which holds the report in MLflow, too.
    assert f'href="http://127.0.0.1:5000/#/experiments/{exp}/runs/{ids["parent"]}?workflowType=machine_learning"' in page
    # Every address opens MLflow 3's model-training view (not its GenAI overview).
    assert f"#/experiments/{exp}/runs?workflowType=machine_learning&amp;searchFilter=attributes.run_id%20IN" in page


def test_names_from_runs_are_escaped(ablation):
    result, _ = ablation
    page = result.index_html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert html.escape(SCRIPT_ARM) in page
    md = result.report_md.read_text(encoding="utf-8")
    assert "<script>" not in md and r"\<script\>alert(1)\</script\>" in md


def test_markdown_tables_stay_intact(ablation):
    result, _ = ablation
    lines = result.report_md.read_text(encoding="utf-8").splitlines()
    tables = [line for line in lines if line.startswith("| ")]
    header = next(line for line in tables if line.startswith("| arm | n |"))
    width = header.count(" | ")
    arm_rows = tables[tables.index(header) + 1: tables.index(header) + 1 + len(ABLATION_ARMS)]
    assert len(arm_rows) == len(ABLATION_ARMS)
    for row in arm_rows:
        assert row.replace("\\|", "").count(" | ") == width


def test_same_runs_give_the_same_report(ablation, store, tmp_path):
    result, _ = ablation
    again = build_report("abl", out_dir=tmp_path / "again", tracking_uri=store[0].tracking_uri)
    for name in ("report.md", "runs.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (result.out_dir / name).read_bytes()
    page = again.index_html.read_text(encoding="utf-8").replace(str(again.out_dir), "")
    assert page == result.index_html.read_text(encoding="utf-8").replace(str(result.out_dir), "")


def test_baseline_and_metric_options(store, tmp_path):
    s, _ = store
    result = build_report("abl", out_dir=tmp_path, tracking_uri=s.tracking_uri, baseline="dropout=0.3",
                          metric="best_val_loss", ui_url="http://mlflow.example:8080/")
    assert result.arms[0] == "dropout=0.3" and result.baseline == "dropout=0.3"
    assert "dropout=0.3" not in set(result.comparisons["arm"])
    assert (tmp_path / "figures" / "best_val_loss_by_arm.png").exists()
    assert not (tmp_path / "figures" / "final_gap_by_arm.png").exists()
    base = result.comparisons.set_index("arm").loc["baseline"]
    assert base["mean_diff"] > 0 and "raised the best validation loss" in base["verdict"]
    assert "http://mlflow.example:8080/#/experiments/" in result.index_html.read_text(encoding="utf-8")


def test_search_report_has_trial_arms_pareto_front_and_optuna_figures(store, tmp_path):
    s, _ = store
    result = build_report("search", out_dir=tmp_path, tracking_uri=s.tracking_uri)
    assert result.baseline == "trial-0" and result.arms[:3] == ["trial-0", "trial-1", "trial-2"]
    assert all(a.startswith("trial-") for a in result.arms)
    assert {p.stem for p in result.figures} >= {"importance", "optimization_history", "tradeoff"}
    md = result.report_md.read_text(encoding="utf-8")
    assert "KILLED: pruned by MedianPruner at epoch 6" in md
    assert "Pareto front" in md and "completed trials" in md
    assert "too few seeds (1 pair with trial-0, fewer than 5)" in md and "nothing declared" in md


def test_search_without_its_optuna_storage_still_reports(store, tmp_path):
    s, _ = store
    result = build_report("search-gone", out_dir=tmp_path, tracking_uri=s.tracking_uri)
    assert result.arms == ["trial-0", "trial-1", "trial-2"] and result.baseline == "trial-0"
    names = {p.stem for p in result.figures}
    assert "importance" not in names and "optimization_history" not in names
    md = result.report_md.read_text(encoding="utf-8")
    assert "Parameter importance: not drawn, Optuna study 'search-gone' could not be read" in md


def test_loose_runs_group_by_tag_else_recipe_hash(store, tmp_path):
    s, ids = store
    result = build_report("train", out_dir=tmp_path, tracking_uri=s.tracking_uri)
    assert result.baseline is None and result.comparisons.empty
    assert result.arms[-1] == "tagged" and len(result.arms) == 3  # two untagged configs + the tag
    counts = result.arm_stats[result.arm_stats["metric"] == "final_gap"].set_index("arm")["n"]
    assert sorted(counts.to_dict().values()) == [1, 2, 2]
    assert all(a.startswith("config-") for a in result.arms[:2])
    assert "no arm named" in result.summary_lines[1]
    assert result.summary_lines[2].startswith("lowest mean test_loss: ") and result.verdicts.empty


def test_figures_without_data_are_skipped_with_the_reason(store, tmp_path):
    s, _ = store
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "learning_curves.png").write_bytes(b"from an earlier report")
    (tmp_path / MARKER).write_text("an earlier report's folder")  # only a report's own folder is rewritten
    result = build_report("nohistory", out_dir=tmp_path, tracking_uri=s.tracking_uri)
    assert {p.stem for p in result.figures} == {"test_loss_by_arm", "tradeoff"}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["test_loss_by_arm.png", "tradeoff.png"]
    md = result.report_md.read_text(encoding="utf-8")
    assert "2 run(s) have no readable history.json; their curves are missing" in md
    assert "- Learning curves: not drawn, no run has train_eval_loss and val_loss in its history.json" in md
    assert "- Gradient norm and clip fraction: not drawn, optim.clip_norm does not vary" in md


def test_group_by_a_param():
    s, _ = shared_store()
    study = load_study("train", s.tracking_uri)
    grouped = group_runs(study.runs, study="train", study_type=None, group_by="params.model.dropout",
                         requested_baseline="model.dropout=0.0", tagged_baseline=None)
    assert grouped.order == ["model.dropout=0.0", "model.dropout=0.1", "model.dropout=0.2"]


@pytest.mark.parametrize(("name", "message"), [
    ("nope", "no study named 'nope' in the MLflow store"),
    ("empty", "study 'empty' has no runs"),
    ("allfailed", "study 'allfailed' has no finished training runs to report (2 FAILED, 1 harness.kind=study)"),
])
def test_unusable_studies_raise_one_line_usage_errors(store, tmp_path, name, message):
    with pytest.raises(UsageError) as err:
        build_report(name, out_dir=tmp_path, tracking_uri=store[0].tracking_uri)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


def test_bad_options_raise_usage_errors(store, tmp_path):
    uri = store[0].tracking_uri
    with pytest.raises(UsageError, match="--metric 'loss' is not a comparable metric; allowed: test_loss, test_gap, final_test_loss, best_val_loss"):
        build_report("abl", out_dir=tmp_path, tracking_uri=uri, metric="loss")
    arms = re.escape(f"arms: {SCRIPT_ARM}, baseline, clip_norm=none, dropout=0.3")
    with pytest.raises(UsageError, match=f"baseline 'nope' is not an arm of study 'abl'; {arms}"):
        build_report("abl", out_dir=tmp_path, tracking_uri=uri, baseline="nope")


def test_default_out_dir_is_under_ablate_home_and_path_safe(monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    assert default_out_dir("abl") == tmp_path / "reports" / "abl"
    assert default_out_dir("../../etc/x y") == tmp_path / "reports" / "etc_x_y"
    monkeypatch.delenv("ABLATE_HOME")
    assert default_out_dir("abl") == Path("reports/abl")


def test_local_artifact_uris_are_read_directly():
    assert local_path("file:///tmp/a%20b/artifacts") == Path("/tmp/a b/artifacts")
    assert local_path("/srv/mlruns/1/abc/artifacts") == Path("/srv/mlruns/1/abc/artifacts")
    assert local_path("mlflow-artifacts:/1/abc/artifacts") is None
    assert local_path("s3://bucket/1/abc/artifacts") is None


def test_runs_on_different_thread_counts_are_noted():
    from harness.report import _thread_notes

    runs = pd.DataFrame({"tags.harness.threads": ["1", "2", "1"]})
    assert _thread_notes(runs)[0].startswith("runs used 1, 2 torch threads")
    assert _thread_notes(runs.iloc[[0, 2]]) == [] and _thread_notes(pd.DataFrame({"x": [1]})) == []


def test_report_lands_in_mlflow_on_the_study_run(ablation, store, tmp_path):
    """The answer is where the runs are: the study run's description and artifacts, replaced (not
    stacked) by a later report, the study's question kept in front."""
    from mlflow import MlflowClient

    from harness.report import ANSWER_MARK, question

    result, ids = ablation
    client = MlflowClient(tracking_uri=store[0].tracking_uri)
    build_report("abl", out_dir=tmp_path / "again", tracking_uri=store[0].tracking_uri)
    note = client.get_run(ids["parent"]).data.tags["mlflow.note.content"]
    assert note.count(ANSWER_MARK) == 1 and result.summary_lines[1] in note
    assert "dropout=0.3: no clear effect against baseline" in note
    assert question("Does dropout help?" + ANSWER_MARK + "old answer") == "Does dropout help?"
    names = {a.path for a in client.list_artifacts(ids["parent"], "report")}
    assert {"report/index.html", "report/report.md", "report/verdicts.csv", "report/runs.csv"} <= names
    assert client.list_artifacts(ids["parent"], "report/figures")


def test_samples_and_best_epochs_are_in_the_html(ablation):
    result, _ = ablation
    page = result.index_html.read_text(encoding="utf-8")
    assert '<h2 id="samples">' in page and "<th>best_epoch</th>" in page
    # The first seed's text of each arm, escaped like every value from a run.
    assert "&lt;b&gt;dropout=0.3&lt;/b&gt; seed 0" in page and "<b>dropout=0.3</b>" not in page
    md = result.report_md.read_text(encoding="utf-8")
    assert r"> \<b\>baseline\</b\> seed 0" in md
