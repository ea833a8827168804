import json
import os
import subprocess
import sys

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.core.config import build_config
from harness.core.metrics import EVAL_METRICS, HISTORY_COLUMNS, SUMMARY_METRICS
from harness.tracking.run import resume_tracked, run_tracked
from harness.tracking.store import init_store, local_artifact_dir
from harness.core.train import Interrupted, NonFiniteLoss


def runs(client, experiment="train"):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_a_run_logs_params_metrics_tags_and_artifacts(project, tiny):
    client = init_store()
    cfg = build_config({}, {**tiny, "model.dropout": 0.2})
    outcome = run_tracked(cfg, client, "train", tags={"harness.arm": "dropout=0.2"})
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dropout"] == "0.2" and run.data.params["schedule.name"] == "constant"
    assert len(run.data.params) == len(cfg.flat())
    assert run.data.tags["harness.config_hash"] == cfg.hash() and run.data.tags["harness.seed"] == "0"
    assert run.data.tags["harness.kind"] == "run" and run.data.tags["harness.arm"] == "dropout=0.2"
    for name in SUMMARY_METRICS:
        assert name in run.data.metrics
    # The MLflow metric test_loss is the summary's: one value, at the validation-selected evaluation.
    assert [m.value for m in client.get_metric_history(outcome.run_id, "test_loss")] == \
        pytest.approx([outcome.result.summary.test_loss])
    val = client.get_metric_history(outcome.run_id, "val_loss")
    assert [m.step for m in val] == [e.step for e in outcome.result.history]
    assert [m.value for m in val] == pytest.approx([e.val_loss for e in outcome.result.history])
    folder = local_artifact_dir(client, outcome.run_id)
    assert {p.name for p in folder.iterdir()} >= {"config.yaml", "history.json", "curves.png", "samples.txt"}
    history = json.loads((folder / "history.json").read_text())
    assert set(history) == {"step", *HISTORY_COLUMNS} and len(history["test_loss"]) == 3
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_one_log_call_per_evaluation(project, tiny, monkeypatch):
    client = init_store()
    calls = []
    real = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        if metrics and metrics[0].key in EVAL_METRICS:
            calls.append(len(metrics))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    outcome = run_tracked(build_config({}, tiny), client, "train")
    assert calls == [len(EVAL_METRICS)] * len(outcome.result.history)


def test_divergence_marks_the_run_failed(project, tiny):
    client = init_store()
    with pytest.raises(NonFiniteLoss):
        run_tracked(build_config({}, {**tiny, "optim.lr": 1e30, "optim.clip_norm": None}), client, "train")
    (run,) = runs(client)
    assert run.info.status == "FAILED"
    assert run.data.tags["harness.error"].startswith("non-finite loss at step ")


def test_ctrl_c_kills_the_run_with_a_checkpoint_that_resumes_exactly(project, tiny):
    client = init_store()
    cfg = build_config({}, {**tiny, "train.epochs": 4, "model.dropout": 0.1})
    full = run_tracked(cfg, client, "full")

    def ctrl_c(ev):
        if ev.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        run_tracked(cfg, client, "train", should_stop=ctrl_c)
    (killed,) = runs(client)
    assert killed.info.status == "KILLED"
    assert f"ablate train --resume {killed.info.run_id}" in killed.data.tags["harness.reason"]
    resumed = resume_tracked(client, killed.info.run_id)
    assert resumed.run_id == killed.info.run_id
    assert [e.val_loss for e in resumed.result.history] == [e.val_loss for e in full.result.history]
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 4


def test_transfer_from_an_mlflow_run(project, tiny, small_corpus):
    client = init_store()
    source = run_tracked(build_config({}, {**tiny, "train.save_checkpoint": True}), client, "train")
    fine = run_tracked(build_config({}, {**tiny, "transfer.init_from": f"runs:/{source.run_id}",
                                          "transfer.freeze_embeddings": True, "train.epochs": 1}), client, "train")
    assert client.get_run(fine.run_id).data.params["transfer.init_from"] == f"runs:/{source.run_id}"  # as given
    # Starting from trained weights, the first evaluation beats the source's first one.
    assert fine.result.history[0].val_loss < source.result.history[0].val_loss
    # Frozen embeddings (and the head tied to them) keep the source's values; the blocks train on.
    before, after = source.result.checkpoint["model"], fine.result.checkpoint["model"]
    for name in ("tok_emb.weight", "pos_emb.weight", "head.weight"):
        assert torch.equal(after[name], before[name]), f"{name} moved"
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    other = small_corpus.parent / "other.txt"
    other.write_text("abc def\n" * 2000)
    from harness.core.errors import UsageError
    with pytest.raises(UsageError, match="vocabulary has"):
        run_tracked(build_config({}, {**tiny, "data.corpus": f"file:{other}",
                                      "transfer.init_from": f"runs:/{source.run_id}"}), client, "train")
    with pytest.raises(UsageError, match="does not fit this config"):
        run_tracked(build_config({}, {**tiny, "model.n_embd": 64,
                                      "transfer.init_from": f"runs:/{source.run_id}"}), client, "train")
    assert len(runs(client)) == 2  # the refused configs created no run


def test_ablate_train_from_an_mlflow_run_downloads_its_checkpoint_once(project, tiny, monkeypatch):
    """The preflight's checkpoint is the one training starts from: one download, one load."""
    client = init_store()
    source = run_tracked(build_config({}, {**tiny, "train.save_checkpoint": True}), client, "train")
    real = mlflow.artifacts.download_artifacts
    downloads = []

    def counted(*args, **kwargs):
        downloads.append(kwargs.get("artifact_path"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counted)
    sets = [f"{k}={v}" for k, v in {**tiny, "train.epochs": 1, "transfer.init_from": f"runs:/{source.run_id}"}.items()]
    assert main(["train", "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    assert downloads == ["checkpoint/last.pt"]


@pytest.mark.parametrize("args, message", [
    (["--set", "model.dropuot=0.2"], "unknown key 'model.dropuot' (did you mean 'model.dropout'?)"),
    (["--set", "model.dropout=1.5"], "model.dropout=1.5"),
    (["--set", "optim.clip_norm=0"], "optim.clip_norm=0"),
    (["--set", "optim.lr=-1"], "optim.lr=-1"),
    (["--set", "schedule.name=exp"], "schedule.name='exp': unknown scheduler"),
    (["--set", "optim.name=sgd"], "optim.name='sgd'"),
    (["--set", "model.n_layer=two"], "model.n_layer='two'"),
    (["--set", "data.corpus=wiki"], "data.corpus='wiki': unknown corpus"),
    (["--set", "data.corpus=file:/nonexistent/x.txt"], "does not exist"),
    (["--set", "data.block_size=600000"], "data.block_size=600000: larger than the validation text"),
])
def test_cli_bad_input_exits_2_with_one_line_and_no_run(project, tiny, capsys, args, message):
    base = [f"--set={k}={v}" for k, v in tiny.items() if k != "data.corpus"]
    assert main(["train", "--quiet", *base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    client = MlflowClient(mlflow.get_tracking_uri())
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_cli_train_prints_the_run_and_the_ui(project, tiny, capsys):
    sets = [f"--set={k}={v}" for k, v in tiny.items()]
    assert main(["train", "--quiet", *sets, "--set", "model.dropout=0.2", "--set", "optim.weight_decay=0.1",
                 "--set", "schedule.name=cosine"]) == 0
    out = capsys.readouterr().out
    run_id = out.split()[1]
    assert "best val loss" in out and "test loss" in out and "gap on test" in out
    assert "http://127.0.0.1:5000/#/experiments/" in out
    run = MlflowClient(mlflow.get_tracking_uri()).get_run(run_id)
    assert run.data.params["schedule.name"] == "cosine" and run.data.params["optim.weight_decay"] == "0.1"


def test_cli_divergence_exits_nonzero_with_the_reason(project, tiny):
    sets = [f"--set={k}={v}" for k, v in tiny.items()]
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "train", "--quiet", *sets,
                           "--set", "optim.lr=1e30", "--set", "optim.clip_norm=null"],
                          capture_output=True, text=True, cwd=project)
    assert proc.returncode == 1
    assert "non-finite loss at step" in proc.stderr.strip().splitlines()[-1]


def test_cli_data_describes_the_corpus(project, small_corpus, capsys):
    assert main(["data", "--corpus", f"file:{small_corpus}", "--set", "data.block_size=16"]) == 0
    out = capsys.readouterr().out
    assert "characters  60,000" in out and "sha256" in out and "vocabulary" in out


def test_run_tracker_redacts_nothing_but_passwords():
    from harness.tracking.uris import redact
    assert redact("postgresql+psycopg2://me:secret@127.0.0.1:5432/db") == "postgresql+psycopg2://me:***@127.0.0.1:5432/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


def _init_in(home: str) -> str:
    os.environ["ABLATE_HOME"] = home
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    init_store()
    return "ok"


@pytest.mark.slow
def test_processes_starting_together_on_a_fresh_store_do_not_race_its_creation(tmp_path):
    """Two `ablate train` started at once on a new project both migrate the new database unless
    its creation is serialised; one then fails with 'table ... already exists'."""
    import multiprocessing

    for attempt in range(2):
        home = tmp_path / f"p{attempt}"
        home.mkdir()
        with multiprocessing.get_context("spawn").Pool(3) as pool:
            assert pool.map(_init_in, [str(home)] * 3) == ["ok"] * 3


def test_resume_in_a_project_whose_path_has_a_space(tmp_path, monkeypatch, tiny, capsys):
    """MLflow stores the artifact folder as a file URI, where a space reads %20: resuming must
    find checkpoint/last.pt in the decoded folder, as `ablate train --resume` is told to."""
    home = tmp_path / "my project"
    home.mkdir()
    monkeypatch.setenv("ABLATE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(home)
    client = init_store()
    cfg = build_config({}, {**tiny, "train.epochs": 2})

    def ctrl_c(_ev):
        raise KeyboardInterrupt  # after the first evaluation, inside the training loop

    with pytest.raises(Interrupted):
        run_tracked(cfg, client, "train", should_stop=ctrl_c)
    (killed,) = runs(client)
    assert "%20" in killed.info.artifact_uri
    assert main(["train", "--resume", killed.info.run_id, "--quiet"]) == 0, capsys.readouterr().err
    assert client.get_run(killed.info.run_id).info.status == "FINISHED"
    assert local_artifact_dir(client, killed.info.run_id) == \
        home / "mlruns" / "artifacts" / "train" / killed.info.run_id / "artifacts"
