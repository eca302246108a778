"""Reading a `Config`: YAML files and named configs, `--set key=value` overrides, type checks per field, then
`validate`. Every error is a `ConfigError` naming the dotted field, raised before Ray starts."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vpace.config.schema import Config
from vpace.config.validation import ConfigError, validate


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check/convert a YAML value to the annotated type; error names the field."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError:
                pass  # try the next member; the error below names the whole union
        raise ConfigError(name, f"expected {tp}, got {value!r}")
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(name, f"expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, name): _coerce(v, value_tp, f"{name}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(name, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-2` (no dot) as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(name, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(name, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. `paces: 1` or `speeds: 2`
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    raise ConfigError(name, f"unsupported type {tp}")  # pragma: no cover - schema bug


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys by their dotted name."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}", f"unknown field (valid: {', '.join(sorted(names))})")
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value, dotted = hints[f.name], data[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(dotted, f"expected a mapping, got {value!r}")
            kwargs[f.name] = from_dict(tp, value, f"{dotted}.")
        else:
            kwargs[f.name] = _coerce(value, tp, dotted)
    return cls(**kwargs)


def _set_value(key: str, raw: str) -> Any:
    """The YAML value of `--set key=raw`; a bad one is a one-line error naming the field."""
    if not raw.strip():  # e.g. `--set pace.paces=""`: the shell ate the quotes
        raise ConfigError(key, f"no value after '{key}=' (to clear an optional field write {key}=null)")
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(key, f"--set value {raw!r} is not valid YAML ({problem}); quote it to mean a "
                               "string") from None


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b=value` override (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(assignment, "override must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(key, "override must look like key.sub=value")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{p}' is not a section")
    node[parts[-1]] = _set_value(key, raw)


def named_configs() -> dict[str, Path]:
    """Configs shipped in vpace/configs/*.yaml, by name."""
    root = resources.files("vpace") / "configs"
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = Path(str(entry))
    return dict(sorted(out.items()))


def resolve_config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        return p
    named = named_configs()
    if str(name_or_path) not in named:
        known = ", ".join(named)
        raise FileNotFoundError(f"no config file or named config '{name_or_path}' (named: {known})")
    return named[str(name_or_path)]


def yaml_mapping(path: Path, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The YAML file at `path` as a mapping (empty file: {}); `error(str(path), why)` when it is not one."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(str(path), f"not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise error(str(path), "top level must be a mapping")
    return raw


def load_config(
    name_or_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    data: dict[str, Any] | None = None,
) -> Config:
    """Load a named config or YAML path (or a dict), apply `key=value` overrides, validate."""
    raw = yaml_mapping(resolve_config_path(name_or_path)) if name_or_path is not None else {}
    if data is not None:
        raw = deep_merge(raw, data)
    for ov in overrides:
        set_dotted(raw, ov)
    cfg = from_dict(Config, raw)
    validate(cfg)
    return cfg


def _known_fields(tp: Any, data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the keys the dataclass `tp` (and its nested config dataclasses) no longer has."""
    fields = {f.name: f for f in dataclasses.fields(tp)}
    hints = typing.get_type_hints(tp)
    out = {}
    for k, v in data.items():
        if k not in fields:
            continue
        sub = hints[k]
        out[k] = _known_fields(sub, v) if dataclasses.is_dataclass(sub) and isinstance(v, dict) else v
    return out


def stored_config(data: dict[str, Any]) -> Config:
    """The config a checkpoint stored (its `to_dict()`), read by this version: fields an earlier vpace had and
    this one dropped are ignored (the checkpoint stays readable); every field this one knows is validated."""
    return load_config(data=_known_fields(Config, data))


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
