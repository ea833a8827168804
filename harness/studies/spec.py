"""Ablation specs: one YAML naming a base recipe, the factors to vary and the paired seeds.

```yaml
name: quick
base: {model: {n_layer: 2}, train: {epochs: 12}}
design: one-at-a-time          # or factorial
factors:
  model.dropout: [0.1, 0.3]
  schedule:                    # a mapping value: a whole scheduler
    - {name: step, step_size: 4, gamma: 0.5}
    - {label: cosine, value: {name: cosine, eta_min: 0.0001}}   # an explicit arm label
arms:                          # optional arms that change several keys at once
  - {label: adam-l2, set: {optim.name: adam, optim.weight_decay: 0.01}}
seeds: [0, 1, 2]
```

one-at-a-time: the baseline (the base config) plus one arm per factor level, each varying that
factor alone. factorial: one arm per combination of levels. Every arm runs every seed, so arms
are paired by seed.

A pretraining stage (transfer learning as an arm): arms that set `transfer.init_from: pretrain`
fine-tune from the checkpoint of a pretraining run the study schedules before them.

```yaml
pretrain:
  set: {data.train_chars: null, train.max_steps: 500}   # dotted overrides on base: what is pretrained
  per_seed: true               # default: one pretraining run per seed; false: once, with the smallest seed
arms:
  - {label: finetune, set: {transfer.init_from: pretrain}}
  - {label: finetune-freeze1, set: {transfer.init_from: pretrain, transfer.freeze_blocks: 1}}
```

The whole format, with every rule a spec is checked against: docs/ablation-spec.md.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.config import Config, build_config, read_yaml, valid_keys
from harness.core.errors import UsageError

DESIGNS = ("one-at-a-time", "factorial")
SPEC_KEYS = ("name", "description", "base", "design", "factors", "arms", "seeds", "baseline", "pretrain")
SECTIONS = ("data", "model", "optim", "schedule", "augment", "transfer", "train", "sample")
BASELINE = "baseline"
LARGE_STUDY_CELLS = 100
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PRETRAIN = "pretrain"
"""The reserved `transfer.init_from` value naming the study's pretraining stage, and a label no arm
may take (it names the stage's runs). A checkpoint file called pretrain is `./pretrain`."""
PRETRAIN_KEYS = ("set", "per_seed")
MODEL_SHAPE_KEYS = ("model.n_layer", "model.n_head", "model.n_embd", "model.bias", "model.norm",
                    "model.norm_type", "data.block_size")
"""What a dependent arm must share with the pretraining recipe. n_layer, n_embd, bias, norm (a
final norm only in pre-norm, none at all in none), norm_type (RMSNorm has no bias) and block_size
(the position table) decide which tensors the checkpoint holds and their shapes; n_head changes
no shape but how the attention weights split into heads, so a checkpoint would load and mean
something else."""


@dataclass(frozen=True)
class Arm:
    label: str
    overrides: dict[str, Any]
    """What this arm changes against the base (empty for the baseline)."""
    config: Config
    """The arm's recipe, seed not yet applied."""


@dataclass(frozen=True)
class PretrainStage:
    """The pretraining every dependent arm fine-tunes from (`transfer.init_from: pretrain`)."""

    overrides: dict[str, Any]
    """What the pretraining changes against the base (`pretrain.set`)."""
    config: Config
    """The pretraining recipe, seed not yet applied: the base plus `overrides`, with
    train.save_checkpoint forced on (its checkpoint is what the arms load)."""
    per_seed: bool = True
    """One pretraining run per study seed (arms stay paired, the pretraining's randomness is part
    of the comparison); False: one run, with the study's smallest seed."""


def uses_pretrain(config: Config) -> bool:
    """Whether a recipe fine-tunes from the study's pretraining stage."""
    return config.transfer.init_from == PRETRAIN


def join_key(arm: str, seed: int) -> str:
    """A cell's key, "arm/seed=N": how the study record, the queue, the status and the report name it."""
    return f"{arm}/seed={seed}"


def split_key(key: str) -> tuple[str, int]:
    arm, seed = key.rsplit("/seed=", 1)
    return arm, int(seed)


def stage_seed(seed: int, seeds: list[int], per_seed: bool) -> int:
    """The seed of the pretraining run that the cells of `seed` fine-tune from: their own, or with
    per_seed false the study's smallest seed (the smallest, not the first listed: the study record
    keeps its seeds sorted, and both must name the same run)."""
    return seed if per_seed else min(seeds)


@dataclass(frozen=True)
class Cell:
    arm: str
    seed: int

    @property
    def key(self) -> str:
        return join_key(self.arm, self.seed)


@dataclass(frozen=True)
class AblationSpec:
    name: str
    design: str
    base: Config
    arms: list[Arm]
    seeds: list[int]
    baseline: str
    description: str = ""
    skipped: tuple[str, ...] = ()
    """Factor levels dropped because they equal the baseline."""
    pretrain: PretrainStage | None = None
    """The pretraining stage (`pretrain:`), or None when no arm transfers from one."""

    @property
    def cells(self) -> list[Cell]:
        """The arms' cells (arm x seed); the pretraining runs are `pretrain_seeds`."""
        return [Cell(arm.label, seed) for arm in self.arms for seed in self.seeds]

    @property
    def pretrain_arms(self) -> list[Arm]:
        """The arms that fine-tune from the pretraining stage: their cells wait for its run."""
        return [arm for arm in self.arms if uses_pretrain(arm.config)]

    def pretrain_seed(self, seed: int) -> int:
        """The seed of the pretraining run that the cells of `seed` fine-tune from."""
        if self.pretrain is None:
            raise ValueError(f"study {self.name!r} has no pretraining stage")
        return stage_seed(seed, self.seeds, self.pretrain.per_seed)

    @property
    def pretrain_seeds(self) -> list[int]:
        """The seeds of the pretraining runs, in study-seed order (none without a stage)."""
        if self.pretrain is None:
            return []
        return list(dict.fromkeys(self.pretrain_seed(seed) for seed in self.seeds))

    def arm(self, label: str) -> Arm:
        return next(a for a in self.arms if a.label == label)


def cell_config(arm_config: Config, seed: int) -> Config:
    return build_config(arm_config.to_dict(), {"train.seed": seed})


def load_spec(path: str | Path, allow_large: bool = False) -> AblationSpec:
    raw = read_yaml(path, what="spec")
    if not isinstance(raw, dict):
        raise UsageError(f"spec {str(path)!r} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    return parse_spec(raw, allow_large=allow_large)


MAX_STUDY_NAME = 100
"""Longest study name: it names the MLflow experiment and its artifact folder, and a search's
confirmation study adds '-confirm' (see harness.tracking.store.MAX_NAME)."""


def check_name(name: Any) -> str:
    """A study name, checked before anything is created (a name the stores refuse half-way would
    leave a half-created study)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise UsageError(f"name={name!r}: a study needs a name of letters, digits, '_', '.' and '-'")
    if len(name) > MAX_STUDY_NAME:
        raise UsageError(f"name: {len(name)} characters is too long for a study name; allowed: 1 to "
                         f"{MAX_STUDY_NAME} letters, digits, '_', '.' and '-'")
    return name


def check_seeds(seeds: Any) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise UsageError(f"seeds={seeds!r}: must be a non-empty list of integers, e.g. [0, 1, 2]")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise UsageError(f"seeds={seeds!r}: seed {dupes[0]} is listed twice; every seed must be distinct")
    return seeds


def check_path(path: Any, where: str) -> str:
    keys = valid_keys()
    if isinstance(path, str) and (path in keys or path in SECTIONS):
        return path
    import difflib

    close = difflib.get_close_matches(str(path), keys + list(SECTIONS), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"{where} {path!r}: not a config key{hint}; allowed: a section "
                     f"({', '.join(SECTIONS)}) or a dotted key such as model.dropout")


def parse_spec(raw: dict[str, Any], allow_large: bool = False) -> AblationSpec:
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise UsageError(f"spec key {unknown[0]!r} is not known; allowed: {', '.join(SPEC_KEYS)}")
    name = check_name(raw.get("name"))
    design = raw.get("design", "one-at-a-time")
    if design not in DESIGNS:
        raise UsageError(f"design={design!r}: allowed: {', '.join(DESIGNS)}")
    base_tree = raw.get("base") or {}
    if not isinstance(base_tree, dict):
        raise UsageError("base: must be a mapping of config sections (data, model, optim, ...)")
    base = build_config(base_tree, where="base: ")
    seeds = check_seeds(raw.get("seeds", [0]))
    levels = _factor_levels(raw.get("factors") or {})
    explicit = _explicit_arms(raw.get("arms") or [])
    if not levels and not explicit:
        raise UsageError("a spec needs factors (or arms) to compare against the baseline")

    if design == "one-at-a-time":
        candidates = [(BASELINE, {})] + [(label, {path: value}) for path, opts in levels for label, value in opts]
    else:
        combos = itertools.product(*[opts for _, opts in levels]) if levels else [()]
        candidates = []
        for combo in combos:
            overrides = {path: value for (path, _), (_, value) in zip(levels, combo)}
            candidates.append((", ".join(label for label, _ in combo), overrides))
    candidates += explicit

    pretrain = _pretrain_stage(raw["pretrain"], base) if raw.get("pretrain") is not None else None

    arms: list[Arm] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    for label, overrides in candidates:
        if label == PRETRAIN:
            raise UsageError(f"arm label {PRETRAIN!r} is reserved for the pretraining stage; choose another label")
        config = build_config(base.to_dict(), overrides, where=f"arm {label!r}: ")
        digest = config.hash()
        if digest in seen:
            if design == "one-at-a-time" and seen[digest] == BASELINE:
                skipped.append(label)  # a level equal to the base is the baseline itself
                continue
            raise UsageError(f"arms {seen[digest]!r} and {label!r} give the same config; remove one")
        if any(a.label == label for a in arms):
            raise UsageError(f"two arms are labelled {label!r}; give one an explicit label")
        seen[digest] = label
        arms.append(Arm(label, overrides, config))

    baseline = raw.get("baseline") or _default_baseline(arms, base)
    if baseline not in {a.label for a in arms}:
        raise UsageError(f"baseline={baseline!r}: not an arm of this spec; arms: "
                         f"{', '.join(a.label for a in arms)}")
    spec = AblationSpec(name, design, base, arms, seeds, baseline, str(raw.get("description") or ""),
                        tuple(skipped), pretrain)
    _check_dependents(spec)
    n_cells, n_pretrain = len(spec.cells), len(spec.pretrain_seeds)
    if n_cells + n_pretrain > LARGE_STUDY_CELLS and not allow_large:
        extra = f" + {n_pretrain} pretraining runs" if n_pretrain else ""
        raise UsageError(f"design={design!r} gives {len(arms)} arms x {len(seeds)} seeds = {n_cells} runs{extra}; "
                         f"pass --yes to run that many (or list fewer levels)")
    return spec


def _pretrain_stage(section: Any, base: Config) -> PretrainStage:
    """`pretrain: {set: {...}, per_seed: bool}` -> the stage, checked like an arm's `set`."""
    if not isinstance(section, dict):
        raise UsageError(f"pretrain: must be a mapping {{set: {{dotted.key: value}}, per_seed: true|false}}, "
                         f"got {section!r}")
    unknown = sorted(set(section) - set(PRETRAIN_KEYS))
    if unknown:
        raise UsageError(f"pretrain key {unknown[0]!r} is not known; allowed: {', '.join(PRETRAIN_KEYS)}")
    overrides = section.get("set")
    if not isinstance(overrides, dict) or not overrides:
        raise UsageError(f"pretrain.set: missing or empty (got {overrides!r}); it names what the pretraining "
                         f"changes against the base as dotted keys, e.g. {{data.train_chars: null}}")
    per_seed = section.get("per_seed", True)
    if not isinstance(per_seed, bool):
        raise UsageError(f"pretrain.per_seed={per_seed!r}: allowed: true or false")
    for path in overrides:
        check_path(path, "pretrain: key")
    config = build_config(base.to_dict(), {**overrides, "train.save_checkpoint": True}, where="pretrain: ")
    if uses_pretrain(config):
        source = "pretrain.set" if "transfer.init_from" in overrides else "the base"
        raise UsageError(f"pretrain: transfer.init_from={PRETRAIN!r} would start the pretraining from itself "
                         f"(set by {source}); allowed there: null or a checkpoint path")
    return PretrainStage(dict(overrides), config, per_seed)


def _check_dependents(spec: AblationSpec) -> None:
    """Arms that fine-tune need the stage, the stage needs an arm, and its checkpoint must load."""
    dependents, pretrain = spec.pretrain_arms, spec.pretrain
    if pretrain is None:
        if dependents:
            raise UsageError(f"arm {dependents[0].label!r}: transfer.init_from={PRETRAIN!r} names the study's "
                             f"pretraining stage, but the spec has no pretrain: section; add one, e.g. "
                             f"pretrain: {{set: {{data.train_chars: null}}}}")
        return
    if not dependents:
        raise UsageError(f"pretrain: no arm uses it; set transfer.init_from: {PRETRAIN} in an arm (or a factor "
                         f"level), or remove the pretrain: section")
    source = pretrain.config.flat()
    for arm in dependents:
        flat = arm.config.flat()
        for key in MODEL_SHAPE_KEYS:
            if flat[key] != source[key]:
                raise UsageError(f"arm {arm.label!r}: {key}={flat[key]!r} but the pretraining has {key}="
                                 f"{source[key]!r}; an arm that fine-tunes keeps the pretrained model's "
                                 f"shape ({', '.join(MODEL_SHAPE_KEYS)})")


def _default_baseline(arms: list[Arm], base: Config) -> str:
    for arm in arms:
        if arm.config.hash() == base.hash():
            return arm.label
    return arms[0].label


def _factor_levels(factors: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
    if not isinstance(factors, dict):
        raise UsageError("factors: must map config paths to lists of values, e.g. model.dropout: [0.1, 0.3]")
    out = []
    short = _short_names(list(factors))
    for path, values in factors.items():
        check_path(path, "factor")
        if not isinstance(values, list) or not values:
            raise UsageError(f"factor {path!r}: needs a non-empty list of values, got {values!r}")
        levels = []
        for value in values:
            if isinstance(value, dict) and set(value) == {"label", "value"}:
                levels.append((str(value["label"]), value["value"]))
            else:
                levels.append((f"{short[path]}={format_value(value)}", value))
        out.append((path, levels))
    return out


def _explicit_arms(arms: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(arms, list):
        raise UsageError("arms: must be a list of {label: NAME, set: {dotted.key: value, ...}}")
    out = []
    for arm in arms:
        if not isinstance(arm, dict) or set(arm) != {"label", "set"} or not isinstance(arm["set"], dict):
            raise UsageError(f"arms: each arm is {{label: NAME, set: {{dotted.key: value}}}}, got {arm!r}")
        for path in arm["set"]:
            check_path(path, f"arm {arm['label']!r}: key")
        out.append((str(arm["label"]), dict(arm["set"])))
    return out


def _short_names(paths: list[str]) -> dict[str, str]:
    """model.dropout -> dropout, unless two factors end alike; then the full path."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: (l if last.count(l) == 1 else p) for p, l in zip(paths, last)}


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        name = value.get("name")
        rest = ",".join(f"{k}={format_value(v)}" for k, v in value.items() if k != "name")
        return f"{name}({rest})" if name and rest else str(name) if name else f"({rest})"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
