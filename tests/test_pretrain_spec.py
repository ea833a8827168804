"""A spec's `pretrain:` section (issue 15): a pretraining stage that arms fine-tune from.

Parsing only: what the stage trains, which arms depend on it, which seed each pretraining run
takes, and every way a spec can get it wrong (one line each).
"""

from __future__ import annotations

import pytest

from harness.core.errors import UsageError
from harness.studies.spec import PRETRAIN, AblationSpec, parse_spec, uses_pretrain

FINETUNE = {"label": "finetune", "set": {"transfer.init_from": PRETRAIN}}
FREEZE1 = {"label": "finetune-freeze1", "set": {"transfer.init_from": PRETRAIN, "transfer.freeze_blocks": 1}}


def spec(**extra: object) -> AblationSpec:
    raw = {"name": "t", "base": {"data": {"train_chars": 10000}, "train": {"epochs": 50}},
           "pretrain": {"set": {"data.train_chars": None, "train.max_steps": 500}},
           "arms": [FINETUNE, FREEZE1], "seeds": [3, 1, 2], **extra}
    return parse_spec({k: v for k, v in raw.items() if v is not None})


def test_the_pretraining_recipe_is_the_base_plus_its_overrides_and_keeps_its_checkpoint():
    s = spec()
    stage = s.pretrain
    assert stage is not None and stage.per_seed
    assert stage.overrides == {"data.train_chars": None, "train.max_steps": 500}
    assert stage.config.data.train_chars is None and stage.config.train.max_steps == 500
    assert stage.config.train.epochs == 50  # the rest is the base's
    assert stage.config.train.save_checkpoint  # its checkpoint is what the arms load
    assert s.base.train.save_checkpoint is False


def test_dependent_arms_are_ordinary_arms_that_init_from_the_stage():
    s = spec(arms=[FINETUNE, FREEZE1, {"label": "noise", "set": {"augment.noise": 0.1}}])
    assert [a.label for a in s.arms] == ["baseline", "finetune", "finetune-freeze1", "noise"]
    assert [a.label for a in s.pretrain_arms] == ["finetune", "finetune-freeze1"]
    assert s.baseline == "baseline" and len(s.cells) == 4 * 3
    assert s.arm("finetune-freeze1").config.transfer.freeze_blocks == 1
    assert uses_pretrain(s.arm("finetune").config) and not uses_pretrain(s.arm("noise").config)


def test_one_pretraining_run_per_seed_by_default_else_once_with_the_smallest_seed():
    paired = spec()
    assert [paired.pretrain_seed(seed) for seed in paired.seeds] == [3, 1, 2]
    assert paired.pretrain_seeds == [3, 1, 2]
    once = spec(pretrain={"set": {"data.train_chars": None}, "per_seed": False})
    assert once.pretrain is not None and not once.pretrain.per_seed
    # The smallest, not the first listed (3): the study record, which keeps its seeds sorted,
    # must name the same run (tests/test_pretrain.py, seeds listed in any order).
    assert [once.pretrain_seed(seed) for seed in once.seeds] == [1, 1, 1]
    assert once.pretrain_seeds == [1]


def test_a_spec_without_the_section_has_no_stage():
    s = parse_spec({"name": "t", "factors": {"model.dropout": [0.1]}, "seeds": [0]})
    assert s.pretrain is None and s.pretrain_arms == [] and s.pretrain_seeds == []


def test_factor_levels_and_factorial_designs_can_depend_on_the_stage():
    s = spec(arms=None, design="factorial", factors={"transfer.init_from": [None, PRETRAIN],
                                                      "transfer.freeze_embeddings": [False, True]})
    assert [a.label for a in s.pretrain_arms] == ["init_from=pretrain, freeze_embeddings=False",
                                                  "init_from=pretrain, freeze_embeddings=True"]
    assert s.baseline == "init_from=none, freeze_embeddings=False"


def test_a_base_that_fine_tunes_makes_every_arm_depend_once_the_stage_starts_from_scratch():
    s = parse_spec({"name": "t", "base": {"transfer": {"init_from": PRETRAIN}}, "seeds": [0],
                    "pretrain": {"set": {"transfer.init_from": None, "data.train_chars": None}},
                    "factors": {"transfer.freeze_blocks": [1]}})
    assert [a.label for a in s.pretrain_arms] == ["baseline", "freeze_blocks=1"]
    assert s.pretrain is not None and s.pretrain.config.transfer.init_from is None


def test_the_large_study_guard_counts_the_pretraining_runs():
    def arms(n: int) -> list[dict]:
        return [{"label": f"a{i}", "set": {"transfer.init_from": PRETRAIN, "optim.lr": 0.001 * (i + 1)}}
                for i in range(n)]

    assert len(spec(arms=arms(18), seeds=[0, 1, 2, 3, 4]).cells) == 95  # + 5 pretraining runs = 100
    with pytest.raises(UsageError, match=r"20 arms x 5 seeds = 100 runs \+ 5 pretraining runs"):
        spec(arms=arms(19), seeds=[0, 1, 2, 3, 4])


@pytest.mark.parametrize("extra, message", [
    ({"pretrain": {"set": {"data.train_chars": None}, "seeds": [0]}},
     "pretrain key 'seeds' is not known; allowed: set, per_seed"),
    ({"pretrain": [1]}, "pretrain: must be a mapping"),
    ({"pretrain": {"per_seed": True}}, "pretrain.set: missing"),
    ({"pretrain": {"set": {}}}, "pretrain.set: missing"),
    ({"pretrain": {"set": ["data.train_chars"]}}, "pretrain.set: missing"),
    ({"pretrain": {"set": {"data.train_chars": None}, "per_seed": "yes"}},
     "pretrain.per_seed='yes': allowed: true or false"),
    ({"pretrain": {"set": {"model.dropuot": 0.1}}},
     "pretrain: key 'model.dropuot': not a config key (did you mean 'model.dropout'?)"),
    ({"pretrain": {"set": {"train.max_steps": 0}}}, "pretrain: train.max_steps=0"),
    ({"pretrain": {"set": {"transfer.init_from": PRETRAIN}}},
     "pretrain: transfer.init_from='pretrain' would start the pretraining from itself"),
    ({"pretrain": None}, "arm 'finetune': transfer.init_from='pretrain' names the study's pretraining "
                         "stage, but the spec has no pretrain: section"),
    ({"pretrain": None, "arms": None, "factors": {"transfer.init_from": [PRETRAIN]}},
     "arm 'init_from=pretrain': transfer.init_from='pretrain'"),
    ({"arms": [{"label": "noise", "set": {"augment.noise": 0.1}}]},
     "pretrain: no arm uses it; set transfer.init_from: pretrain in an arm"),
    ({"arms": [FINETUNE, {"label": "pretrain", "set": {"augment.noise": 0.1}}]},
     "arm label 'pretrain' is reserved for the pretraining stage"),
    ({"arms": None, "factors": {"augment.noise": [{"label": "pretrain", "value": 0.1}]}},
     "arm label 'pretrain' is reserved"),
    ({"arms": [{"label": "wide", "set": {"transfer.init_from": PRETRAIN, "model.n_embd": 64}}]},
     "arm 'wide': model.n_embd=64 but the pretraining has model.n_embd=128"),
    ({"pretrain": {"set": {"data.block_size": 128}}},
     "arm 'finetune': data.block_size=64 but the pretraining has data.block_size=128"),
    ({"arms": [{"label": "nobias", "set": {"transfer.init_from": PRETRAIN, "model.bias": False}}]},
     "model.bias=False but the pretraining has model.bias=True"),
    ({"arms": [{"label": "heads", "set": {"transfer.init_from": PRETRAIN, "model.n_head": 2}}]},
     "model.n_head=2 but the pretraining has model.n_head=4"),
])
def test_bad_pretraining_sections_are_one_clear_error(extra, message):
    with pytest.raises(UsageError) as err:
        spec(**extra)
    assert message in str(err.value) and "\n" not in str(err.value)
