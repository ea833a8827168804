"""A release that adds a config key leaves every stored study usable: finished ablations, their
pretraining runs (reused by other studies) and searches are compared under today's schema, so
nothing is refused and nothing is trained again; a real change of recipe is still refused."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml
from optuna.trial import TrialState
from pydantic import Field

from harness.cli import main
from harness.core import config
from harness.studies.ablation import create_ablation
from harness.studies.spec import load_spec
from harness.tracking.storage import default_storage, load_study, open_storage
from harness.tracking.store import init_store

from test_pretrain import runs_of, write_transfer_spec
from test_ablation import store
from test_search import nested


@contextmanager
def grown_schema() -> Iterator[None]:
    """Today's schema plus `train.upgrade_probe: int = 0`, as the next release adding a key with a
    default that leaves old recipes unchanged would ship it (every recipe is built through
    harness.core.config.build_config, which validates with this module's Config)."""

    class GrownTrain(config.TrainConfig):
        upgrade_probe: int = Field(default=0, ge=0)

    class GrownConfig(config.Config):
        train: GrownTrain = GrownTrain()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "Config", GrownConfig)
        assert "upgrade_probe" in config.build_config({}).to_dict()["train"]  # the release's schema
        yield


@pytest.mark.slow
def test_a_grown_schema_reruns_a_finished_study_and_reuses_its_pretraining(project, tiny, capsys):
    path = write_transfer_spec(project, tiny, seeds=(0,), arms=[
        {"label": "finetune", "set": {"transfer.init_from": "pretrain"}}])
    assert main(["run", str(path), "--workers", "2"]) == 0
    client = store()
    (pretrain,) = runs_of(client, "transfer", "pretrain")
    trained = {r.info.run_id for r in runs_of(client, "transfer", "run")}
    trials = len(load_study("transfer", default_storage()).trials)
    capsys.readouterr()

    with grown_schema():
        # The rerun: not refused, nothing trained.
        assert main(["run", str(path)]) == 0, capsys.readouterr().err
        assert "every cell is already done" in capsys.readouterr().out
        assert len(load_study("transfer", default_storage()).trials) == trials
        assert {r.info.run_id for r in runs_of(client, "transfer", "run")} == trained
        assert len(runs_of(client, "transfer", "pretrain")) == 1

        # Another study with the same pretraining recipe adopts the run trained before the key
        # existed (its harness.config_hash tag is the old schema's) instead of pretraining again.
        other = write_transfer_spec(project, tiny, name="transfer-b", seeds=(0,), arms=[
            {"label": "finetune-emb", "set": {"transfer.init_from": "pretrain", "transfer.freeze_embeddings": True}}])
        study = create_ablation(load_spec(other), open_storage(default_storage()), default_storage(), init_store())
        (adopted,) = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["arm"] == "pretrain"]
        assert adopted.user_attrs["reused"] is True and adopted.user_attrs["mlflow_run_id"] == pretrain.info.run_id

        # A real change is still refused, and names the new key's change.
        spec = yaml.safe_load(path.read_text())
        spec["base"]["train"]["upgrade_probe"] = 1
        path.write_text(yaml.safe_dump(spec))
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert "arm 'baseline' now differs (train.upgrade_probe: 0 -> 1)" in err


@pytest.mark.slow
def test_a_grown_schema_reopens_a_finished_search(project, tiny, capsys):
    path = project / "grow.yaml"
    path.write_text(yaml.safe_dump({"name": "grow", "base": {**nested(tiny), "train": {**nested(tiny)["train"], "epochs": 1}},
                                    "trials": 2, "sampler": {"name": "random", "seed": 3}, "pruner": {"name": "none"},
                                    "space": {"model.dropout": {"float": [0.0, 0.3]}}}))
    assert main(["search", str(path), "--workers", "1"]) == 0
    before = [(t.number, t.state) for t in load_study("grow", default_storage()).trials]
    runs = {r.info.run_id for r in store().search_runs([store().get_experiment_by_name("grow").experiment_id])}
    capsys.readouterr()
    with grown_schema():
        assert main(["search", str(path)]) == 0, capsys.readouterr().err
        assert "nothing to run" in capsys.readouterr().out
        assert [(t.number, t.state) for t in load_study("grow", default_storage()).trials] == before
        assert {r.info.run_id for r in store().search_runs([store().get_experiment_by_name("grow").experiment_id])} == runs
        # The search space's base really changed: refused as before.
        spec = yaml.safe_load(path.read_text())
        spec["base"]["train"]["upgrade_probe"] = 2
        path.write_text(yaml.safe_dump(spec))
        assert main(["search", str(path)]) == 2
        assert "the spec of study 'grow' changed since it ran (base" in capsys.readouterr().err


def test_a_stored_recipe_the_schema_no_longer_accepts_is_one_clear_error():
    """A key removed or renamed by a release: the stored recipe is named, not a traceback."""
    stored = {**config.Config().to_dict(), "train": {**config.Config().to_dict()["train"], "retired_key": 1}}
    with pytest.raises(config.UsageError, match="arm 'baseline' of study 'x' was stored by another release"):
        config.stored_config(stored, "arm 'baseline' of study 'x'")
