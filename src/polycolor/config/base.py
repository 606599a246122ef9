"""The parsing machinery every section shares: reading params.yaml, typed building, one-line checks, flattening.

Validation errors are one line that names the key and the value (`train.lr must be > 0, got -1.0`), raised as
ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from polycolor.errors import ConfigError, first_line


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {why}, got {value!r}")


def _range(pair: tuple, key: str, lo: float, hi: float) -> None:
    _check(len(pair) == 2, key, pair, "must be a [low, high] pair")
    _check(lo <= pair[0] <= pair[1] <= hi, key, list(pair), f"must satisfy {lo} <= low <= high <= {hi}")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert lists to tuples; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .inf / .nan pass every `>` check; no param can use them
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML and `dvc exp run -S train.amp=true` give a bool for "true"
            return "true" if value else "false"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if isinstance(data, str) and hasattr(cls, "SHORTHAND"):  # `name: value` stands for `name: {SHORTHAND: value}`
        data = {cls.SHORTHAND: data}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where} is not a known key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field (no default) is missing
        raise ConfigError(f"{prefix}: {e}") from None


class StageParams:
    """A stage's part of params.yaml, as a frozen dataclass whose fields are top-level keys (`seed`, `train`, ...):
    the stage reads and validates only those, so the code of the other sections is not among its dependencies."""

    def validate(self) -> None:
        validate_sections(self)

    @classmethod
    def parse(cls, data: Any) -> Any:
        """Build and validate from a params mapping (the content of params.yaml), other sections left out."""
        if not isinstance(data, dict):
            raise ConfigError(f"params must be a mapping, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = _build(cls, {k: v for k, v in data.items() if k in names}, "")
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path = "params.yaml") -> Any:
        """Read a params file; a missing file, bad YAML or a bad value is a one-line ConfigError."""
        return cls.parse(read_params(path))


def validate_sections(cfg: Any) -> None:
    """Validate each section of a params dataclass that has its own rules."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if hasattr(v, "validate"):
            v.validate()


def read_params(path: str | Path) -> Any:
    """The content of a params file; a missing file or bad YAML is a one-line ConfigError."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read params file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {first_line(e)}") from None
    return data


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Config as flat dotted keys (for MLflow params and model cards): {"train.lr": 0.003, ...}."""
    out: dict[str, Any] = {}
    items = dataclasses.asdict(cfg).items() if dataclasses.is_dataclass(cfg) else cfg.items()
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out
