"""Search specs (`studies/NAME.yaml`): the base recipe, the objective, the sampler and pruner, and
the space of dotted config paths Optuna searches. Parsing validates everything a trial could
trip on before any study exists; the format is documented in `harness.studies.search`.

A trial's config is always `base` plus the trial's decoded parameters, applied in the order the
space lists them, so the same parameters give the same recipe on every machine.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, NSGAIISampler, RandomSampler, TPESampler

from harness.core.config import SCHEDULE_MODELS, Config, build_config, read_yaml, set_dotted, stored_config
from harness.core.errors import UsageError
from harness.core.metrics import SUMMARY_AT
from harness.studies.spec import check_name, check_path, check_seeds, format_value

SPEC_KEYS = ("name", "description", "base", "objective", "sampler", "pruner", "trials", "seeds_per_trial",
             "baseline", "confirm", "space")
KINDS = ("float", "int", "categorical")
PARAM_KEYS = {"float": {"float", "log", "step", "when"}, "int": {"int", "log", "step", "when"},
              "categorical": {"categorical", "when"}}
OBJECTIVES = (("val_loss",), ("val_loss", "gap"))
MAX_GRID_POINTS = 100_000
"""Most points a grid search may have: more would be built in memory while validating, and no
grid that size could ever be trained through."""
SAMPLER_OPTIONS = {"tpe": ("seed", "n_startup_trials"), "random": ("seed",), "grid": ("seed",),
                   "nsga2": ("seed", "population_size")}
PRUNER_OPTIONS = {"median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
                  "hyperband": ("min_resource", "max_resource", "reduction_factor"), "none": ()}
FINGERPRINT_RECIPES = ("base", "baseline")
"""The fingerprint's entries that are recipes (Config.to_dict()), compared under today's schema."""
CONFIRM_SEED_START = 1000
"""Confirmation seeds start here, far from the search's 0..k-1, so they are fresh."""


# --- the parts of a spec ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]
    """("val_loss",) or ("val_loss", "gap"); every objective is minimised."""
    at: str
    """"best": the values at the evaluation with the lowest val_loss; "final": at the last one."""

    @property
    def names(self) -> list[str]:
        """The run summary metrics the objective values are (best_val_loss, gap_at_best, ...)."""
        return [SUMMARY_AT[(m, self.at)] for m in self.metrics]

    @property
    def tag(self) -> str:
        return ",".join(self.metrics)

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


@dataclass(frozen=True)
class Choice:
    """A named sampler or pruner with its options (validated against the allowed ones)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name


@dataclass(frozen=True)
class Confirm:
    top: int
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class Param:
    """One searched config path. Categorical choices that are not JSON primitives (a whole
    schedule mapping, a list) go to Optuna as a label and are decoded back here."""

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    labels: tuple[Any, ...] = ()
    """What Optuna sees for each categorical choice: the value itself, or its label."""
    values: tuple[Any, ...] = ()
    """The config value of each categorical choice."""
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    """(parameter, allowed values as Optuna sees them): the parameter exists only when all hold."""

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask `trial` for this parameter; returns the config value (decoded)."""
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return self.decode(trial.suggest_categorical(self.path, list(self.labels)))

    def decode(self, label: Any) -> Any:
        return self.values[self.labels.index(label)] if self.kind == "categorical" else label

    def active(self, labels: dict[str, Any]) -> bool:
        """Whether this parameter exists given the (Optuna-side) values of the ones before it."""
        return all(name in labels and labels[name] in allowed for name, allowed in self.when)

    def extremes(self) -> list[Any]:
        """The Optuna-side values that spec validation tries: the bounds, or every choice."""
        if self.kind == "categorical":
            return list(self.labels)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]

    def grid_count(self) -> int:
        """How many grid points this parameter has, counted without building them."""
        if self.kind == "categorical":
            return len(self.labels)
        if self.step is None and self.kind == "float":
            raise UsageError(f"space {self.path}: the grid sampler needs `step` on float parameters")
        return int(round((self.high - self.low) / (self.step or 1))) + 1

    def grid(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.labels)
        step = self.step or 1
        return [self.low + i * step if self.kind == "float" else int(self.low + i * step)
                for i in range(self.grid_count())]

    def contains(self, value: Any) -> bool:
        """Whether a config value (numeric parameters only) is a point of this parameter's range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high or (self.kind == "int" and value != int(value)):
            return False
        return self.step is None or math.isclose((value - self.low) / self.step,
                                                 round((value - self.low) / self.step), abs_tol=1e-9)


@dataclass(frozen=True)
class SearchSpec:
    name: str
    base: Config
    objective: Objective
    sampler: Choice
    pruner: Choice
    trials: int | None
    seeds: tuple[int, ...]
    """The paired seeds every trial trains (base train.seed + 0..seeds_per_trial-1)."""
    space: tuple[Param, ...]
    baseline: Config
    baseline_labels: dict[str, Any]
    """The baseline as Optuna parameters (enqueued as the first trial)."""
    confirm: Confirm | None
    raw: dict[str, Any]
    """The spec as written (JSON-able); stored on the study so workers rebuild the same spec."""
    description: str = ""

    def decode(self, labels: dict[str, Any]) -> dict[str, Any]:
        """Optuna parameters -> config values, in space order (inactive ones absent)."""
        by_path = {p.path: p for p in self.space}
        return {path: by_path[path].decode(labels[path]) for path in (p.path for p in self.space)
                if path in labels}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run: suggest each active parameter in order; returns the config values.

        A conditional parameter is asked for only when its condition holds, so Optuna never
        records a value that did not shape the recipe (importance and plots stay honest).
        """
        labels: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for param in self.space:
            if param.active(labels):
                values[param.path] = param.suggest(trial)
                labels[param.path] = trial.params[param.path]
        return values

    def config_for(self, values: dict[str, Any], where: str = "") -> Config:
        return apply_values(self.base, values, where)

    def fingerprint(self) -> dict[str, Any]:
        """What must not change while a study runs: it defines which recipes the trials trained."""
        return {"base": self.base.to_dict(), "objective": [self.objective.metrics, self.objective.at],
                "sampler": [self.sampler.name, self.sampler.options],
                "pruner": [self.pruner.name, self.pruner.options], "seeds": list(self.seeds),
                "space": self.raw.get("space"), "baseline": self.baseline.to_dict()}

    def changed_since(self, stored: dict[str, Any]) -> list[str]:
        """The fingerprint's keys that differ from the `stored` one (a study's record). Its recipes
        (base, baseline) are compared under today's schema (stored_config): a key added since the
        study ran, at its default, changes nothing."""
        stored = dict(stored)
        for key in FINGERPRINT_RECIPES:
            if isinstance(stored.get(key), dict):
                stored[key] = stored_config(stored[key], f"the {key} recipe of search {self.name!r}").to_dict()
        now = json.loads(json.dumps(self.fingerprint()))  # as the storage gives it back
        return [k for k, v in now.items() if stored.get(k) != v]

    def make_sampler(self, seed_offset: int = 0) -> BaseSampler:
        """A fresh sampler. A seeded spec seeds it with seed + `seed_offset` (the trial number):
        reproducible with one worker, and parallel workers given the same history do not draw
        the same point."""
        opts = dict(self.sampler.options)
        if opts.get("seed") is not None:
            opts["seed"] = opts["seed"] + seed_offset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.sampler.name == "tpe":
                # Multivariate + group: TPE models the joint density within each branch of a
                # conditional space instead of one parameter at a time.
                return TPESampler(multivariate=True, group=True, **opts)
            if self.sampler.name == "random":
                return RandomSampler(**opts)
            if self.sampler.name == "nsga2":
                return NSGAIISampler(**opts)
            return _GridSampler({p.path: p.grid() for p in self.space}, **opts)

    def make_pruner(self) -> BasePruner:
        opts = self.pruner.options
        if self.pruner.name == "median":
            return MedianPruner(**opts)
        if self.pruner.name == "hyperband":
            return HyperbandPruner(**opts)
        return NopPruner()

    def grid_size(self) -> int | None:
        return math.prod(p.grid_count() for p in self.space) if self.sampler.name == "grid" else None


class _GridSampler(GridSampler):
    """GridSampler without its study.stop() after the last point: stop() only works inside
    Study.optimize, and the harness ends a search by its own trial count."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        return None


# --- applying parameters -----------------------------------------------------------------------------

def apply_values(base: Config, values: dict[str, Any], where: str = "") -> Config:
    """`base` with each dotted path set to its value (harness.core.config.apply_overrides semantics),
    except that `schedule.name` switches the scheduler, keeping only the base's keys the new one
    accepts (warmup and interval; a step_size means nothing to cosine)."""
    tree = base.to_dict()
    for path, value in values.items():
        if path == "schedule.name":
            model = SCHEDULE_MODELS.get(value)
            kept = {k: v for k, v in tree["schedule"].items() if model and k in model.model_fields}
            tree["schedule"] = {**kept, "name": value}
        else:
            set_dotted(tree, path, value)
    return build_config(tree, where=where)


# --- parsing -------------------------------------------------------------------------------------------

def load_search_spec(path: str) -> SearchSpec:
    raw = read_yaml(path, what="spec")
    if not isinstance(raw, dict):
        raise UsageError(f"spec {path!r} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    return parse_search_spec(raw)


def parse_search_spec(raw: dict[str, Any]) -> SearchSpec:
    """Validate a search spec; raises one UsageError naming the key, the value and what is allowed."""
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise UsageError(f"spec key {unknown[0]!r} is not known; allowed: {', '.join(SPEC_KEYS)}")
    name = check_name(raw.get("name"))
    base_tree = raw.get("base") or {}
    if not isinstance(base_tree, dict):
        raise UsageError("base: must be a mapping of config sections (data, model, optim, ...)")
    base = build_config(base_tree, where="base: ")
    objective = _objective(raw.get("objective", "val_loss"))
    space = _space(raw.get("space"))
    sampler = _choice("sampler", raw.get("sampler", "tpe"), SAMPLER_OPTIONS)
    default_pruner = "none" if objective.multi else "median"
    pruner = _choice("pruner", raw.get("pruner", default_pruner), PRUNER_OPTIONS)
    if objective.multi and pruner.name != "none":
        raise UsageError(f"pruner={pruner.name!r}: Optuna prunes single-objective studies only; "
                         f"use pruner: none with objective [val_loss, gap]")
    if sampler.name == "grid" and any(p.when for p in space):
        raise UsageError("sampler='grid': a grid cannot take conditional (`when`) parameters; "
                         "use sampler tpe or random, or an ablation spec with design: factorial")
    trials = _positive_int("trials", raw.get("trials"), optional=True)
    k = _positive_int("seeds_per_trial", raw.get("seeds_per_trial", 1))
    seeds = tuple(base.train.seed + i for i in range(k))
    space_configs(base, space)  # validates every range
    overrides = raw.get("baseline") or {}
    if not isinstance(overrides, dict):
        raise UsageError("baseline: must map dotted config keys to values, e.g. {model.dropout: 0.0}")
    for path in overrides:
        check_path(path, "baseline: key")
    baseline = build_config(base.to_dict(), overrides, where="baseline: ")
    baseline_labels = _baseline_labels(base, baseline, space)
    spec = SearchSpec(name, base, objective, sampler, pruner, trials, seeds, space, baseline,
                      baseline_labels, _confirm(raw.get("confirm"), seeds), _jsonable(raw),
                      str(raw.get("description") or ""))
    size = spec.grid_size()
    if size is not None and size > MAX_GRID_POINTS:
        # Checked before the sampler is built: a tiny step would build the whole grid in memory.
        raise UsageError(f"sampler='grid': the space has {size:,} grid points; allowed: at most "
                         f"{MAX_GRID_POINTS:,} (use larger steps, fewer parameters, or sampler tpe)")
    _build_samplers(spec)
    return spec


def _jsonable(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(raw))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"spec: every value must be plain YAML data (numbers, strings, lists, "
                         f"mappings): {exc}") from None


def _positive_int(key: str, value: Any, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{key}={value!r}: must be a positive integer")
    return value


def _objective(raw: Any) -> Objective:
    at = "best"
    metrics = raw
    if isinstance(raw, dict):
        extra = sorted(set(raw) - {"metrics", "at"})
        if extra or "metrics" not in raw:
            raise UsageError(f"objective: a mapping takes metrics and at, e.g. "
                             f"{{metrics: [val_loss, gap], at: best}}; got {raw!r}")
        metrics, at = raw["metrics"], raw.get("at", "best")
    if at not in ("best", "final"):
        raise UsageError(f"objective.at={at!r}: allowed: best (the evaluation with the lowest "
                         f"val_loss), final (the last evaluation)")
    names = tuple([metrics] if isinstance(metrics, str) else metrics if isinstance(metrics, list) else [])
    if names not in OBJECTIVES:
        raise UsageError(f"objective={raw!r}: allowed: val_loss, or [val_loss, gap] for a Pareto front")
    return Objective(names, at)


def _choice(key: str, raw: Any, allowed: dict[str, tuple[str, ...]]) -> Choice:
    name, options = (raw, {}) if isinstance(raw, str) else (
        (raw.get("name"), {k: v for k, v in raw.items() if k != "name"}) if isinstance(raw, dict) else (raw, {}))
    if name not in allowed:
        raise UsageError(f"{key}={name!r}: unknown {key}; allowed: {', '.join(allowed)}")
    for option, value in options.items():
        if option not in allowed[name]:
            raise UsageError(f"{key} {name!r}: unknown option {option!r}; allowed: "
                             f"{', '.join(allowed[name]) or 'none'}")
        if not (isinstance(value, int) and not isinstance(value, bool)) and \
                not (option == "max_resource" and value == "auto"):
            raise UsageError(f"{key} {name!r}: {option}={value!r}: must be an integer")
    return Choice(name, options)


def _build_samplers(spec: SearchSpec) -> None:
    """Construct the sampler and pruner once, so a bad option value fails here."""
    try:
        spec.make_sampler()
        spec.make_pruner()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"sampler {spec.sampler.describe()} / pruner {spec.pruner.describe()}: "
                         f"{str(exc).splitlines()[0]}") from None


def _confirm(raw: Any, search_seeds: tuple[int, ...]) -> Confirm | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"top", "seeds"}:
        raise UsageError(f"confirm: expected {{top: 3, seeds: 5}} (seeds: a count or a list), got {raw!r}")
    top = _positive_int("confirm.top", raw["top"])
    seeds = raw["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        start = max(CONFIRM_SEED_START, max(search_seeds) + 1)
        seeds = list(range(start, start + _positive_int("confirm.seeds", seeds)))
    seeds = check_seeds(seeds)
    reused = sorted(set(seeds) & set(search_seeds))
    if reused:
        raise UsageError(f"confirm.seeds: seed {reused[0]} already trained every search trial; "
                         f"confirmation needs fresh seeds")
    return Confirm(top, tuple(seeds))


def _space(raw: Any) -> tuple[Param, ...]:
    if not isinstance(raw, dict) or not raw:
        raise UsageError("space: must map dotted config paths to ranges, e.g. "
                         "model.dropout: {float: [0.0, 0.5]}")
    params: list[Param] = []
    for path, body in raw.items():
        check_path(path, "space")
        if path == "train.seed":
            raise UsageError("space train.seed: seeds are not searched; set seeds_per_trial instead")
        params.append(_param(path, body, {p.path: p for p in params}))
    return tuple(params)


def _param(path: str, body: Any, before: dict[str, Param]) -> Param:
    kinds = [k for k in KINDS if isinstance(body, dict) and k in body]
    if len(kinds) != 1:
        raise UsageError(f"space {path}: give exactly one of float: [low, high], int: [low, high], "
                         f"categorical: [...]; got {body!r}")
    kind = kinds[0]
    extra = sorted(set(body) - PARAM_KEYS[kind])
    if extra:
        raise UsageError(f"space {path}: unknown key {extra[0]!r}; allowed: {', '.join(sorted(PARAM_KEYS[kind]))}")
    when = _when(path, body.get("when"), before)
    if kind == "categorical":
        labels, values = _choices(path, body["categorical"])
        return Param(path, kind, labels=labels, values=values, when=when)
    low, high = _bounds(path, kind, body[kind])
    log, step = body.get("log", False), body.get("step")
    if not isinstance(log, bool):
        raise UsageError(f"space {path}: log={log!r}: must be true or false")
    if log and low <= 0:
        raise UsageError(f"space {path}: log: true needs low > 0, got low={low!r}")
    if step is not None:
        if log:
            raise UsageError(f"space {path}: log and step cannot be combined")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0 or \
                (kind == "int" and not isinstance(step, int)):
            raise UsageError(f"space {path}: step={step!r}: must be a positive {kind}")
        span = (high - low) / step
        if not math.isclose(span, round(span), abs_tol=1e-9):
            raise UsageError(f"space {path}: step={step!r} does not divide [{low}, {high}]")
    return Param(path, kind, low=low, high=high, log=log, step=step, when=when)


def _bounds(path: str, kind: str, raw: Any) -> tuple[float, float]:
    number = int if kind == "int" else (int, float)
    if not (isinstance(raw, list) and len(raw) == 2 and
            all(isinstance(v, number) and not isinstance(v, bool) for v in raw)):
        raise UsageError(f"space {path}: {kind}: needs [low, high] as two {kind} numbers, got {raw!r}")
    low, high = raw
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UsageError(f"space {path}: {kind}: [{low}, {high}]: allowed: finite bounds")
    if low > high:
        raise UsageError(f"space {path}: low={low!r} is greater than high={high!r}")
    return (low, high) if kind == "int" else (float(low), float(high))


def _choices(path: str, raw: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"space {path}: categorical: needs a non-empty list of values, got {raw!r}")
    labels, values = [], []
    for choice in raw:
        if isinstance(choice, dict) and set(choice) == {"label", "value"}:
            label, value = str(choice["label"]), choice["value"]
        elif choice is None or isinstance(choice, (bool, int, float, str)):
            label, value = choice, choice  # a JSON primitive: Optuna stores it as it is
        else:
            label, value = format_value(choice), choice  # a mapping or list: Optuna sees a label
        if label in labels:
            raise UsageError(f"space {path}: choice {label!r} is listed twice")
        labels.append(label)
        values.append(value)
    return tuple(labels), tuple(values)


def _when(path: str, raw: Any, before: dict[str, Param]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"space {path}: when: must map parameters to values, e.g. when: {{schedule.name: step}}")
    out = []
    for name, allowed in raw.items():
        parent = before.get(name)
        if parent is None:
            raise UsageError(f"space {path}: when names {name!r}, which is not a parameter listed above "
                             f"{path!r}; parameters before it: {', '.join(before) or 'none'}")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        for value in allowed:
            ok = value in parent.labels if parent.kind == "categorical" else parent.contains(value)
            if not ok:
                what = ", ".join(map(repr, parent.labels)) if parent.kind == "categorical" else \
                    f"[{parent.low}, {parent.high}]"
                raise UsageError(f"space {path}: when {name}={value!r}: not a value of {name}; allowed: {what}")
        out.append((name, allowed))
    return tuple(out)


# --- validating the space against the config -------------------------------------------------------------

def _conditions(param: Param, by_path: dict[str, Param]) -> dict[str, Any] | None:
    """Optuna-side values that switch `param` on (its first allowed value up each `when`)."""
    labels: dict[str, Any] = {}
    for name, allowed in param.when:
        parent = by_path[name]
        upstream = _conditions(parent, by_path)
        if upstream is None:
            return None
        for key, value in {**upstream, name: allowed[0]}.items():
            if labels.setdefault(key, value) != value:
                return None  # two conditions want different values: never active
    return labels


def space_configs(base: Config, space: tuple[Param, ...]) -> dict[str, Config]:
    """The configs of every parameter's bounds or choices, alone and next to every choice of every
    categorical parameter it can meet, keyed by where they come from ("space PATH=VALUE: ").

    Building them validates the space's ranges, so a bad range fails now, not in trial 17; the
    driver preflights them too (corpus, device, prompt, model) before the study exists."""
    out: dict[str, Config] = {}
    by_path = {p.path: p for p in space}
    categoricals = [p for p in space if p.kind == "categorical"]
    for param in space:
        conditions = _conditions(param, by_path)
        if conditions is None:
            raise UsageError(f"space {param.path}: its `when` conditions can never all hold")
        partners: list[tuple[Param | None, Any]] = [(None, None)]
        partners += [(other, label) for other in categoricals if other.path != param.path
                     and _conditions(other, by_path) is not None for label in other.labels]
        for value, (other, label) in itertools.product(param.extremes(), partners):
            labels = {**conditions, param.path: value}
            if other is not None:
                labels = {**_conditions(other, by_path), other.path: label, **labels}
            if not all(by_path[path].active(labels) for path in labels):
                continue  # the two parameters never meet in one trial
            ordered = {p.path: p.decode(labels[p.path]) for p in space if p.path in labels}
            with_other = f" with {other.path}={label!r}" if other is not None else ""
            where = f"space {param.path}={value!r}{with_other}: "
            out[where] = apply_values(base, ordered, where=where)
    return out


def _baseline_labels(base: Config, baseline: Config, space: tuple[Param, ...]) -> dict[str, Any]:
    """The baseline as Optuna parameters; UsageError when it is not a point of the space (Optuna
    would record an out-of-range value, and TPE would learn from a value it cannot sample)."""
    tree = baseline.to_dict()
    labels: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for param in space:
        if not param.active(labels):
            continue
        current = _at(tree, param.path)
        if param.kind == "categorical":
            match = [label for label, value in zip(param.labels, param.values)
                     if _same(baseline, param.path, value)]
            if not match:
                raise UsageError(f"baseline: {param.path}={format_value(current)!r} is not a choice of the "
                                 f"space ({', '.join(format_value(v) for v in param.values)}); set "
                                 f"baseline: {{{param.path}: ...}} to one of them")
            labels[param.path] = match[0]
        else:
            if not param.contains(current):
                raise UsageError(f"baseline: {param.path}={current!r} is outside the space "
                                 f"[{param.low:g}, {param.high:g}]; set baseline: {{{param.path}: ...}} "
                                 f"to a value inside it")
            labels[param.path] = int(current) if param.kind == "int" else float(current)
        values[param.path] = param.decode(labels[param.path])
    rebuilt = apply_values(base, values)
    if rebuilt.hash() != baseline.hash():
        was, now = rebuilt.flat(), baseline.flat()
        keys = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
        raise UsageError(f"baseline: it sets {', '.join(keys[:3])}, which the space does not search; "
                         f"a baseline must be base + values of the searched parameters")
    return labels


def _same(config: Config, path: str, value: Any) -> bool:
    """Whether setting `path` to `value` leaves `config` as it is."""
    try:
        return apply_values(config, {path: value}).hash() == config.hash()
    except UsageError:
        return False


def _at(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node

