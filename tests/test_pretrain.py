"""Transfer learning as an arm: a study's pretraining stage, scheduled before the cells that
fine-tune from it, reused rather than trained twice, retried when its worker dies, and failing
its dependents (with the reason) when it fails."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from optuna.trial import TrialState

from harness.cli import main
from harness.studies.ablation import create_ablation
from harness.studies.spec import load_spec
from harness.tracking.storage import default_storage, load_study, open_storage
from harness.tracking.store import CHECKPOINT_ARTIFACT, init_store, local_artifact_dir

from test_ablation import store


def write_transfer_spec(project, tiny, name="transfer", seeds=(0, 1), per_seed=True, pretrain_epochs=2,
                        arms=None):
    base = {}
    for key, value in tiny.items():
        section, leaf = key.split(".")
        base.setdefault(section, {})[leaf] = value
    base["train"]["epochs"] = 2
    spec = {"name": name, "base": base, "seeds": list(seeds),
            "pretrain": {"set": {"data.train_chars": 30000, "train.epochs": pretrain_epochs}, "per_seed": per_seed},
            "arms": arms or [{"label": "finetune", "set": {"transfer.init_from": "pretrain"}},
                             {"label": "finetune-freeze1",
                              "set": {"transfer.init_from": "pretrain", "transfer.freeze_blocks": 1}}]}
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def runs_of(client, experiment, kind):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`harness.kind` = '{kind}'")


@pytest.mark.slow
def test_cells_wait_for_their_pretraining_and_nothing_is_pretrained_twice(project, tiny, capsys):
    """Three workers, two seeds: each seed's fine-tuning cells start only after that seed's
    pretraining run finished, load exactly it (param and tag), and the scratch baseline runs
    meanwhile. A rerun trains nothing; another study with the same pretraining recipe reuses the
    finished pretraining runs instead of training its own, except one whose checkpoint is gone."""
    path = write_transfer_spec(project, tiny)
    assert main(["run", str(path), "--workers", "3"]) == 0
    client = store()
    pretrain = {r.data.tags["harness.seed"]: r for r in runs_of(client, "transfer", "pretrain")}
    assert sorted(pretrain) == ["0", "1"] and all(r.info.status == "FINISHED" for r in pretrain.values())
    cells = runs_of(client, "transfer", "run")
    assert len(cells) == 6
    for run in cells:
        tags, arm = run.data.tags, run.data.tags["harness.arm"]
        if arm == "baseline":
            assert "harness.pretrain_run" not in tags and run.data.params["transfer.init_from"] == "None"
            continue
        source = pretrain[tags["harness.seed"]]
        assert tags["harness.pretrain_run"] == source.info.run_id
        assert run.data.params["transfer.init_from"] == f"runs:/{source.info.run_id}"
        assert run.info.start_time >= source.info.end_time  # it waited for its pretraining
    out = capsys.readouterr().out
    assert "pretrain" in out  # the cells table lists the stage
    assert main(["report", "transfer"]) == 0
    report = (project / "reports" / "transfer" / "report.md").read_text()
    assert "## Pretraining runs (2)" in report
    assert all(run.info.run_id in report for run in pretrain.values())
    assert "## Verdicts" in report and "finetune-freeze1" in report  # compared like any arm
    # A rerun: nothing to do, nothing trained.
    assert main(["run", str(path)]) == 0
    assert "every cell is already done" in capsys.readouterr().out
    assert len(runs_of(client, "transfer", "pretrain")) == 2 and len(runs_of(client, "transfer", "run")) == 6
    # Another study, the same pretraining recipe (and seeds): the finished runs are reused, but
    # not seed 1's, whose checkpoint was deleted by hand (nothing could fine-tune from it).
    (local_artifact_dir(client, pretrain["1"].info.run_id) / CHECKPOINT_ARTIFACT).unlink()
    other = write_transfer_spec(project, tiny, name="transfer-b",
                                arms=[{"label": "finetune-emb", "set": {"transfer.init_from": "pretrain",
                                                                        "transfer.freeze_embeddings": True}}])
    assert main(["run", str(other)]) == 0
    (retrained,) = runs_of(client, "transfer-b", "pretrain")
    assert retrained.data.tags["harness.seed"] == "1" and retrained.info.status == "FINISHED"
    reused = {r.data.tags["harness.seed"]: r.data.tags["harness.pretrain_run"]
              for r in runs_of(client, "transfer-b", "run") if r.data.tags["harness.arm"] == "finetune-emb"}
    assert reused == {"0": pretrain["0"].info.run_id, "1": retrained.info.run_id}
    assert main(["report", "transfer-b"]) == 0
    assert "transfer (reused)" in (project / "reports" / "transfer-b" / "report.md").read_text()
    study = load_study("transfer-b", default_storage())
    adopted = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["arm"] == "pretrain"]
    assert [t.user_attrs.get("reused", False) for t in sorted(adopted, key=lambda t: t.user_attrs["seed"])] == \
        [True, False]


def test_a_failed_pretraining_fails_its_dependent_cells_with_the_reason(project, tiny, capsys):
    """The pretraining crashes: its fine-tuning cells fail naming it (and train nothing), the
    scratch cells finish. The next run retries the pretraining, then runs the dependents."""
    from harness.studies import engine, worker

    path = write_transfer_spec(project, tiny, seeds=(0,), per_seed=False,
                               arms=[{"label": "finetune", "set": {"transfer.init_from": "pretrain"}}])
    url = default_storage()
    create_ablation(load_spec(path), open_storage(url), url, init_store())
    real = engine.run_tracked

    def crash_the_pretraining(cfg, *args, **kwargs):
        if kwargs["tags"].get("harness.kind") == "pretrain":
            raise RuntimeError("No space left on device (injected)")
        return real(cfg, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "run_tracked", crash_the_pretraining)
        assert worker.run_worker("transfer", url) == 2  # the pretraining and the baseline; not the dependent
    study = load_study("transfer", url)
    (blocked,) = [t for t in study.get_trials() if t.user_attrs["arm"] == "finetune"]
    assert blocked.state == TrialState.FAIL and "mlflow_run_id" not in blocked.user_attrs
    assert "its pretraining run (pretrain/seed=0" in blocked.user_attrs["error"]
    assert "No space left on device (injected)" in blocked.user_attrs["error"]
    capsys.readouterr()
    assert main(["status", "transfer"]) == 0
    status = capsys.readouterr().out
    assert [line.split()[:2] for line in status.splitlines()[1:3]] == [["baseline", "1"], ["finetune", "0"]]
    # The next `ablate run` retries the stage, then the cell that waited for it.
    assert main(["run", str(path), "--workers", "1"]) == 0
    study = load_study("transfer", url)
    done = {t.user_attrs["arm"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert done == {"pretrain", "baseline", "finetune"}


def test_one_pretraining_for_the_study_serves_seeds_listed_in_any_order(project, tiny, capsys):
    """per_seed: false with seeds listed [2, 1]: the study's one pretraining run is the one every
    fine-tuning cell waits for and loads, so the study completes. A rerun that would pretrain
    otherwise (per_seed flipped, or a smaller seed added) is refused: its cells would fine-tune
    from another run than the study's."""
    from harness.studies import worker

    arms = [{"label": "finetune", "set": {"transfer.init_from": "pretrain"}}]
    path = write_transfer_spec(project, tiny, seeds=(2, 1), per_seed=False, arms=arms)
    url = default_storage()
    create_ablation(load_spec(path), open_storage(url), url, init_store())
    assert worker.run_worker("transfer", url) == 5  # one pretraining, two baseline and two fine-tuning cells
    study = load_study("transfer", url)
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,))]
    (pretrain,) = [t for t in done if t.user_attrs["arm"] == "pretrain"]
    assert pretrain.user_attrs["seed"] == 1
    loaded = {r.data.tags["harness.pretrain_run"] for r in runs_of(store(), "transfer", "run")
              if r.data.tags["harness.arm"] == "finetune"}
    assert len(done) == 5 and loaded == {pretrain.user_attrs["mlflow_run_id"]}
    capsys.readouterr()
    for seeds, per_seed in (((2, 1, 0), False), ((2, 1), True)):
        write_transfer_spec(project, tiny, seeds=seeds, per_seed=per_seed, arms=arms)
        assert main(["run", str(path)]) == 2
        assert "its pretraining stage now differs" in capsys.readouterr().err
    write_transfer_spec(project, tiny, seeds=(2, 1, 3), per_seed=False, arms=arms)  # a larger seed: the same stage
    assert main(["run", str(path), "--workers", "1"]) == 0
    assert len(load_study("transfer", url).get_trials(states=(TrialState.COMPLETE,))) == 7


def test_cells_that_wait_for_their_pretraining_show_as_waiting(project, tiny, capsys):
    """Before any worker ran, the fine-tuning cells are not queued (a worker must not pop a cell
    that has to wait), yet `ablate status` counts them as waiting, not missing."""
    path = write_transfer_spec(project, tiny)
    url = default_storage()
    study = create_ablation(load_spec(path), open_storage(url), url, init_store())
    queued = {t.user_attrs["arm"] for t in study.get_trials(states=(TrialState.WAITING,))}
    assert queued == {"pretrain", "baseline"}
    capsys.readouterr()
    assert main(["status", "transfer"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    rows = {line.split()[0]: dict(zip(header[1:], map(int, line.split()[1:]))) for line in lines[1:]}
    assert rows["pretrain"]["waiting"] == 2
    assert rows["finetune"]["waiting"] == 2 and rows["finetune"]["missing"] == 0
    assert rows["total"]["waiting"] == 8 and rows["total"]["missing"] == 0


@pytest.mark.slow
def test_a_worker_killed_during_pretraining_is_replaced_and_nothing_runs_twice(project, tiny):
    """SIGKILL the worker that pretrains: the survivor reaps the trial (its run KILLED), trains
    the stage again, then the dependents, which load the one FINISHED pretraining run."""
    path = write_transfer_spec(project, {**tiny, "data.train_chars": 12000}, seeds=(0,), per_seed=False,
                               pretrain_epochs=6)
    env = {**os.environ, "ABLATE_HOME": str(project), "ABLATE_POLL_S": "0.5"}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--workers", "2"],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, victim = time.time() + 180, None
    while victim is None and time.time() < deadline:
        time.sleep(0.3)
        try:
            study = load_study("transfer", default_storage())
        except Exception:  # the driver has not created it yet
            continue
        held = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                if t.user_attrs.get("arm") == "pretrain" and "mlflow_run_id" in t.user_attrs
                and "harness.worker" in t.system_attrs]
        victim = held[0] if held else None
    if victim is None:
        driver.kill()
        pytest.fail("no worker was seen pretraining")
    os.kill(victim.system_attrs["harness.worker"]["pid"], signal.SIGKILL)
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out
    client = store()
    pretrain = runs_of(client, "transfer", "pretrain")
    by_status = sorted((r.info.status, r.info.run_id) for r in pretrain)
    assert [s for s, _ in by_status] == ["FINISHED", "KILLED"]
    finished = by_status[0][1]
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    dependents = [r for r in runs_of(client, "transfer", "run") if r.data.tags["harness.arm"] != "baseline"]
    assert len(dependents) == 2 and {r.data.tags["harness.pretrain_run"] for r in dependents} == {finished}
    study = load_study("transfer", default_storage())
    assert sum(t.user_attrs["arm"] == "pretrain" for t in study.get_trials(states=(TrialState.COMPLETE,))) == 1


def test_pretraining_text_holding_held_out_text_is_refused_before_anything_is_written(project, tiny,
                                                                                      small_corpus, capsys):
    """Another corpus for the pretraining, which contains a passage of the study's validation
    text: exit 2, one line naming the overlap, no store, no study, no run."""
    text = small_corpus.read_text()
    leaked = text[int(len(text) * 0.92):int(len(text) * 0.92) + 500]  # validation: 90% to 95%
    other = project / "other.txt"
    other.write_text(leaked + text)  # the same characters, and the passage in its training part
    path = write_transfer_spec(project, tiny, seeds=(0,))
    spec = yaml.safe_load(path.read_text())
    spec["pretrain"]["set"]["data.corpus"] = f"file:{other}"
    path.write_text(yaml.safe_dump(spec))
    before = sorted(p.name for p in project.iterdir())
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ablate: error: pretrain: ")
    assert "validation" in err and "occur in the pretraining text" in err
    assert sorted(p.name for p in project.iterdir()) == before  # no mlruns/, no journal
