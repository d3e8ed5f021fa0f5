"""Dataclass trees to and from plain dicts, YAML files and `key=value` overrides.

Every job config is a tree of dataclasses. The same tree comes from Python, a YAML file,
and command-line overrides such as `model.query.num_queries=64`; an unknown key or a
value of the wrong type raises `ConfigError` naming the field, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config: the message names the field."""


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build `cls` from a dict; missing keys keep their defaults, unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown field; "
                          f"known fields of {where or 'config'}: {sorted(names)}")
    kwargs = {k: coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    return cls(**kwargs)


def merge(obj: Any, data: dict, where: str = "") -> Any:
    """A copy of the dataclass `obj` with the (nested, partial) dict `data` applied."""
    full = to_dict(obj)
    _deep_update(full, data)
    return from_dict(type(obj), full, where)


def _deep_update(base: dict, data: dict) -> None:
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check (and gently convert) `value` to the annotated type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        return _coerce_seq(origin, args, value, where)
    if origin is dict or tp is dict:
        return _coerce_dict(value, where)
    if tp is Any:
        return value
    return _coerce_scalar(tp, value, where)


def _coerce_union(args: tuple, value: Any, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return coerce(arg, value, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")


def _coerce_seq(origin: type, args: tuple, value: Any, where: str) -> Any:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    item = args[0] if args else Any
    return origin(coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))


def _coerce_dict(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return dict(value)


def _coerce_scalar(tp: type, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        return _float(value, where)  # YAML 1.1 reads "3e-3" as a string
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # e.g. a path or name that YAML read as a number
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")


def _float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected float, got {text!r}") from None


def parse_overrides(items: list[str]) -> dict:
    """`["a.b=1", "c=[1, 2]"]` -> {"a": {"b": 1}, "c": [1, 2]}; values are parsed as YAML."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def load_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return data


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def save_config(cfg: Any, output_dir: str | Path) -> Path:
    """The resolved job config, written as `config.yaml` next to the job's output."""
    path = Path(output_dir) / "config.yaml"
    save_yaml(cfg, path)
    return path
