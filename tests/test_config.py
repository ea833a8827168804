import pytest

from harness.core.config import Config, build_config, flatten, load_config, parse_set_args, valid_keys
from harness.core.errors import UsageError


@pytest.mark.parametrize("overrides, expected", [
    ({"model.dropuot": 0.2}, "unknown key 'model.dropuot' (did you mean 'model.dropout'?)"),
    ({"model.dropout": 1.5}, "model.dropout=1.5: Input should be less than 1"),
    ({"model.dropout": -0.1}, "model.dropout=-0.1: Input should be greater than or equal to 0"),
    ({"model.n_layer": "two"}, "model.n_layer='two': Input should be a valid integer"),
    ({"optim.clip_norm": 0}, "optim.clip_norm=0: Input should be greater than 0"),
    ({"optim.clip_norm": -1.0}, "optim.clip_norm=-1.0: Input should be greater than 0"),
    ({"optim.lr": 0}, "optim.lr=0: Input should be greater than 0"),
    ({"optim.lr": -3e-4}, "optim.lr=-0.0003: Input should be greater than 0"),
    ({"schedule.name": "exponential"}, "schedule.name='exponential': unknown scheduler; allowed: constant, step, cosine, plateau"),
    ({"optim.name": "sgd"}, "optim.name='sgd': not allowed; allowed: 'adamw' or 'adam'"),
    ({"model.norm": "sandwich"}, "model.norm='sandwich': not allowed; allowed: 'pre', 'post' or 'none'"),
    ({"schedule.step_size": 3}, "unknown key 'schedule.step_size' for schedule 'constant'"),
    ({"model.n_embd": 130}, "model.n_embd=130: must be divisible by model.n_head=4"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(overrides, expected):
    with pytest.raises(UsageError) as err:
        build_config({}, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_defaults_validate_and_hash_is_stable():
    assert Config().hash() == build_config({}).hash()
    assert build_config({}, {"model.dropout": 0.2}).hash() != Config().hash()


def test_set_values_are_parsed_as_yaml():
    assert parse_set_args(["model.dropout=0.2", "optim.clip_norm=null", "schedule={name: step, step_size: 3}"]) == {
        "model.dropout": 0.2, "optim.clip_norm": None, "schedule": {"name": "step", "step_size": 3}}
    with pytest.raises(UsageError, match="expected key=value"):
        parse_set_args(["model.dropout"])


def test_scheduler_keys_exist_only_for_their_scheduler():
    cfg = build_config({}, {"schedule": {"name": "step", "step_size": 3, "gamma": 0.1}})
    assert (cfg.schedule.step_size, cfg.schedule.gamma) == (3, 0.1)
    with pytest.raises(UsageError, match="for schedule 'cosine'"):
        build_config({}, {"schedule": {"name": "cosine", "step_size": 3}})


def test_yaml_file_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  dropout: 0.1\noptim:\n  name: adam\n  weight_decay: 0.01\n")
    cfg = load_config(path, {"model.dropout": 0.3})
    assert cfg.model.dropout == 0.3 and cfg.optim.name == "adam" and cfg.optim.weight_decay == 0.01


def test_config_file_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="must be a mapping"):
        load_config(listy)


def test_flat_keys_are_dotted_and_all_valid():
    flat = Config().flat()
    assert flat["model.dropout"] == 0.0 and flat["schedule.name"] == "constant"
    assert set(flat) <= set(valid_keys())
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}}) == {"a.b": 1, "a.c.d": [1, 2]}


def test_mapping_values_merge_but_a_new_scheduler_replaces_the_schedule():
    base = {"optim": {"lr": 0.01, "name": "adamw"}, "schedule": {"name": "cosine", "eta_min": 0.001}}
    cfg = build_config(base, {"optim": {"name": "adam", "weight_decay": 0.01}})
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 0.01, 0.01)
    cfg = build_config(base, {"schedule": {"name": "step", "step_size": 2}})
    assert cfg.schedule.name == "step" and cfg.schedule.step_size == 2
    cfg = build_config(base, {"schedule": {"eta_min": 0.0001}})
    assert cfg.schedule.name == "cosine" and cfg.schedule.eta_min == 0.0001


def test_recipe_hash_ignores_only_the_seed():
    a, b = build_config({}, {"train.seed": 0}), build_config({}, {"train.seed": 1})
    assert a.hash() != b.hash() and a.recipe_hash() == b.recipe_hash()
    assert build_config({}, {"model.dropout": 0.1}).recipe_hash() != a.recipe_hash()


def test_the_readme_shows_the_defaults_of_the_code():
    """The README's config block (section, then its keys) states each key's default: every value
    shown must be what Config() gives, so the documented recipe is the one that trains."""
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```yaml\ndata:", 1)[1].split("```", 1)[0]
    shown = flatten(yaml.safe_load("data:" + block))
    defaults = Config().flat()
    assert len(shown) > 20 and {"schedule.name", "optim.name", "train.eval_windows"} <= set(shown)
    assert {k: v for k, v in shown.items() if defaults.get(k, "missing") != v} == {}
