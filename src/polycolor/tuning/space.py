"""tune.yaml: the search space of `polycolor tune`, parsed once into typed, validated dataclasses.

    study: tune                     # Optuna study name; trial n runs as DVC experiment <study>-<n>
    objective: {metric: net.val, direction: maximize}   # a key of a DVC metrics file
    trials: 12                      # trials in the whole study (a rerun continues up to this)
    parallel: 2                     # trials per batch = `dvc queue start -j`
    sampler: tpe                    # tpe | random
    seed: 0
    params:                         # params.yaml keys (dotted) -> a distribution
      train.lr: {type: float, low: 0.0005, high: 0.01, log: true}
      train.batch_size: {type: categorical, choices: [8, 16, 32]}
    fixed: {train.epochs: 2}        # set on every trial, not searched: the study's budget
    defaults_first: true            # trial 0 runs params.yaml's own values of the searched keys

Everything that can be refused before a trial is queued is refused here, in one line (ConfigError): an unknown key,
an empty range, an objective that no metrics file holds, and a space whose corner values params.yaml's rules
(polycolor.config.params.parse_config, what the check stage runs) would refuse. Optuna is imported only by
distribution().
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polycolor.config.base import flatten
from polycolor.config.params import parse_config
from polycolor.errors import ConfigError, first_line

DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random")
KINDS = ("float", "int", "categorical")
Scalar = str | int | float | bool
MAX_CORNERS = 4096  # corner combinations checked together; beyond this each key's corners are checked alone


@dataclass(frozen=True)
class Param:
    key: str                                # dotted params.yaml key, e.g. train.lr
    kind: str                               # float | int | categorical
    low: float | None = None                # float / int: inclusive bounds
    high: float | None = None
    log: bool = False                       # sample on a log scale (low > 0)
    step: float | None = None               # float / int: grid step (int default 1)
    choices: tuple[Scalar, ...] = ()        # categorical

    def corners(self) -> tuple[Scalar, ...]:
        """The values that bound what this distribution can propose: low and high, or every choice."""
        if self.kind == "categorical":
            return self.choices
        cast = int if self.kind == "int" else float
        return cast(self.low), cast(self.high)

    def holds(self, value: Any) -> bool:
        """Whether this distribution can propose `value`."""
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"categorical{list(self.choices)}"
        extra = " log" if self.log else (f" step {self.step:g}" if self.step else "")
        return f"{self.kind}[{self.low:g}, {self.high:g}]{extra}"

    def distribution(self) -> Any:
        """This parameter as an Optuna distribution."""
        import optuna.distributions as d

        if self.kind == "categorical":
            return d.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass(frozen=True)
class Objective:
    metric: str = "net.val"  # a key of a declared DVC metrics file (dotted, e.g. net.val of headline.json)
    direction: str = "maximize"    # maximize | minimize
    min_delta: float = 0.0  # a trial beats the defaults trial only by more than this (the seed spread, docs)


@dataclass(frozen=True)
class TuneConfig:
    study: str
    objective: Objective
    params: tuple[Param, ...]
    trials: int = 12        # trials in the whole study
    parallel: int = 2       # trials per batch, run by that many DVC queue workers
    sampler: str = "tpe"    # tpe | random
    seed: int = 0
    fixed: dict[str, Scalar] = field(default_factory=dict)     # params.yaml key -> value, on every trial
    defaults: dict[str, Scalar] = field(default_factory=dict)  # searched key -> params.yaml's value; {} = not run

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """What a trial sets with -S: the fixed values and the trial's own params."""
        return {**self.fixed, **params}

    def space(self) -> dict[str, str]:
        """{key: 'float[0.0005, 0.01] log', ...}: the search space as MLflow params."""
        return {p.key: p.describe() for p in self.params}


def _need(ok: bool, where: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"tune.yaml {where} {why}, got {value!r}")


def _number(value: Any, where: str) -> float:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool), where, "must be a number", value)
    return value


def _param(key: str, spec: Any, known: dict[str, Any]) -> Param:
    where = f"params.{key}"
    _need(key in known, where, "is not a params.yaml key (e.g. train.lr, loss.l2)", key)
    _need(isinstance(spec, dict), where, "must be a mapping like {type: float, low: 0.001, high: 0.01}", spec)
    extra = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    _need(not extra, where, "has unknown fields (type, low, high, log, step, choices)", sorted(extra))
    kind = spec.get("type")
    _need(kind in KINDS, f"{where}.type", f"must be one of {', '.join(KINDS)}", kind)
    if kind == "categorical":
        choices = spec.get("choices")
        _need(isinstance(choices, list) and len(choices) > 0, f"{where}.choices", "must be a non-empty list",
              choices)
        for c in choices:
            _flag_value(c, f"{where}.choices")
        _need(len(set(map(repr, choices))) == len(choices), f"{where}.choices", "must not repeat a value", choices)
        _need(set(spec) <= {"type", "choices"}, where, "categorical takes only choices", sorted(spec))
        return Param(key, kind, choices=tuple(choices))
    _need("choices" not in spec, where, f"{kind} takes low and high, not choices", spec)
    low, high = _number(spec.get("low"), f"{where}.low"), _number(spec.get("high"), f"{where}.high")
    _need(low < high, where, "has an empty range (low must be < high)", [low, high])
    log = spec.get("log", False)
    _need(isinstance(log, bool), f"{where}.log", "must be true or false", log)
    _need(not log or low > 0, f"{where}.low", "must be > 0 on a log scale", low)
    step = spec.get("step")
    if step is not None:
        _number(step, f"{where}.step")
        _need(step > 0 and not log, f"{where}.step", "must be > 0 and not combined with log", step)
    if kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            _need(v is None or float(v).is_integer(), f"{where}.{name}", "must be an integer for type int", v)
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _flag_value(value: Any, where: str) -> None:
    """A value a trial sets with `-S key=value`: a plain scalar, and no whitespace, which the queue's command line
    cannot carry."""
    _need(isinstance(value, (str, int, float, bool)), where, "must be plain values (text, numbers, true/false)", value)
    _need(not (isinstance(value, str) and re.search(r"\s", value)), where, "must not hold spaces", value)


def with_overrides(params: dict, values: dict[str, Any]) -> dict:
    """A deep copy of the params mapping with dotted `values` set in it (what `dvc exp run -S` does)."""
    out = copy.deepcopy(params)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def check_corners(params: tuple[Param, ...], base: dict) -> None:
    """Refuse a space that proposes params params.yaml's rules refuse: every combination of the corner values
    (each bound, each choice) must pass parse_config, or each key's corners alone when there are too many."""
    corners = [[(p.key, v) for v in p.corners()] for p in params]
    n = 1
    for c in corners:
        n *= len(c)
    combos = itertools.product(*corners) if n <= MAX_CORNERS else ([pair] for c in corners for pair in c)
    for combo in combos:
        values = dict(combo)
        try:
            parse_config(with_overrides(base, values))
        except ConfigError as e:
            raise ConfigError(f"tune.yaml proposes trials params.yaml's rules refuse ({values}): {e}") from None


def parse_tune(data: Any, base: dict, metric_names: set[str] | None) -> TuneConfig:
    """Build and validate a TuneConfig from tune.yaml's mapping. `base` is params.yaml's mapping; `metric_names`
    the keys the declared metrics files hold (None when none exists yet: the objective is then checked against
    the first finished trial)."""
    _need(isinstance(data, dict), "", "must be a mapping", data)
    fields = ("study", "objective", "params", "trials", "parallel", "sampler", "seed", "fixed", "defaults_first")
    unknown = set(data) - set(fields)
    _need(not unknown, "", f"has unknown keys ({', '.join(fields)})", sorted(unknown))
    study = data.get("study", "tune")
    _need(isinstance(study, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study or "") is not None, "study",
          "must be a name of letters, digits, '-', '_' or '.' (it names the DVC experiments)", study)
    obj = data.get("objective") or {}
    _need(isinstance(obj, dict) and set(obj) <= {"metric", "direction", "min_delta"}, "objective",
          "must be a mapping {metric: ..., direction: maximize|minimize, min_delta: >= 0}", obj)
    objective = Objective(**obj)
    _need(isinstance(objective.metric, str) and "." in objective.metric, "objective.metric",
          "must be a metrics key like net.val", objective.metric)
    _need(objective.direction in DIRECTIONS, "objective.direction", "must be maximize or minimize",
          objective.direction)
    _need(isinstance(objective.min_delta, (int, float)) and not isinstance(objective.min_delta, bool)
          and objective.min_delta >= 0, "objective.min_delta", "must be a number >= 0", objective.min_delta)
    if metric_names is not None:
        _need(objective.metric in metric_names, "objective.metric", "is not in any DVC metrics file "
              f"(e.g. {', '.join(sorted(metric_names)[:6])})", objective.metric)
    for name, lo in (("trials", 1), ("parallel", 1), ("seed", 0)):
        v = data.get(name, getattr(TuneConfig, name))
        _need(isinstance(v, int) and not isinstance(v, bool) and v >= lo, name, f"must be an integer >= {lo}", v)
    sampler = data.get("sampler", TuneConfig.sampler)
    _need(sampler in SAMPLERS, "sampler", f"must be one of {', '.join(SAMPLERS)}", sampler)
    raw = data.get("params")
    _need(isinstance(raw, dict) and len(raw) > 0, "params", "must map params.yaml keys to distributions", raw)
    known_keys = flatten(parse_config(base))
    params = tuple(_param(str(k), v, known_keys) for k, v in raw.items())
    fixed = _fixed(data.get("fixed") or {}, known_keys, {p.key for p in params})
    budget = with_overrides(base, fixed)  # params.yaml as every trial sees it before its own params
    try:
        parse_config(budget)
    except ConfigError as e:
        raise ConfigError(f"tune.yaml fixed values params.yaml's rules refuse ({fixed}): {e}") from None
    check_corners(params, budget)
    first = data.get("defaults_first", False)
    _need(isinstance(first, bool), "defaults_first", "must be true or false", first)
    defaults = {}
    if first:
        for p in params:
            value = known_keys[p.key]
            _need(p.holds(value), f"params.{p.key}", f"must hold params.yaml's value for defaults_first "
                  f"({p.describe()})", value)
            defaults[p.key] = value
    return TuneConfig(study=study, objective=objective, params=params, trials=data.get("trials", TuneConfig.trials),
                      parallel=data.get("parallel", TuneConfig.parallel), sampler=sampler,
                      seed=data.get("seed", TuneConfig.seed), fixed=fixed, defaults=defaults)


def _fixed(raw: Any, known: dict[str, Any], searched: set[str]) -> dict[str, Scalar]:
    """tune.yaml `fixed`: params.yaml keys set to one value on every trial (a study's budget, e.g. fewer epochs)."""
    _need(isinstance(raw, dict), "fixed", "must map params.yaml keys to values", raw)
    out = {}
    for key, value in raw.items():
        where = f"fixed.{key}"
        _need(key in known, where, "is not a params.yaml key (e.g. train.epochs)", key)
        _need(key not in searched, where, "is also searched in params", key)
        _flag_value(value, where)
        out[str(key)] = value
    return out


def load_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {first_line(e)}") from None


def load_tune(path: Path, params_path: Path, metric_names: set[str] | None) -> TuneConfig:
    """tune.yaml at `path`, checked against params.yaml at `params_path` and the metrics keys."""
    return parse_tune(load_yaml(path, "tune file"), load_yaml(params_path, "params file") or {}, metric_names)

