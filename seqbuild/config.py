"""Typed configs with one source of defaults: dataclasses, merged as defaults < TOML < flags.

Each stage owns a dataclass (``seqbuild/<stage>/config.py``) whose field defaults are the defaults;
range limits and choices sit in the field metadata. Unknown keys are errors that name the key. The
merged config is saved next to the outputs and hashed, so a re-run with another config is noticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

from .errors import ConfigError

C = TypeVar("C")


def option(
    default: Any,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple | None = None,
    affects_output: bool = True,
    part: str = "",
    per_item_of: str = "",
    remember: bool = True,
) -> Any:
    """A config field with its default, a help line, and optional range or choices (checked on build).

    ``affects_output=False`` marks an option that says where or how fast to work (device, workers, batch
    sizes, inputs), not what to compute: it is left out of every output hash, so changing it never
    re-runs work. ``part`` names the step of a stage the option belongs to, for stages whose steps are
    hashed separately (clean's per-video filters and its cross-video rerun index). ``per_item_of`` names
    the list option this one gives a value per item of (thresholds per gallery): the value a run
    remembers is not used when that list is given anew without it. ``remember=False`` marks a one-off
    request (retry what failed) that a run's memory (RUN/config.toml) does not carry to later commands.
    """
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    meta.update(affects_output=affects_output, part=part, per_item_of=per_item_of, remember=remember)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item is str:
            value = [value] if not isinstance(value, str) or "," not in value else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type[C], *layers: dict[str, Any] | None, section: str = "") -> C:
    """Build ``cls`` from its defaults overlaid by each layer in turn; unknown keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    prefix = f"{section}." if section else ""
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"unknown config key '{prefix}{key}' (known keys: {known})")
            values[key] = _check_type(prefix + key, value, hints[key])
    cfg = cls(**values)
    validate(cfg, section)
    return cfg


def validate(cfg: Any, section: str = "") -> None:
    """Check every field of ``cfg`` against the range and choices in its metadata."""
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
        items = value if isinstance(value, list) else [value]
        for v in items:
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{prefix}{f.name}: expected a finite number, got {v!r}")
            if choices is not None and v not in choices:
                raise ConfigError(f"{prefix}{f.name}: {v!r} is not one of {', '.join(map(str, choices))}")
            if lo is not None and isinstance(v, (int, float)) and v < lo:
                raise ConfigError(f"{prefix}{f.name}: {v} is below the minimum {lo}")
            if hi is not None and isinstance(v, (int, float)) and v > hi:
                raise ConfigError(f"{prefix}{f.name}: {v} is above the maximum {hi}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (nested dataclasses become dicts)."""
    return dataclasses.asdict(cfg)


def config_hash(data: Any) -> str:
    """A short stable hash of a dict of values (or of every field of a config dataclass)."""
    data = data if isinstance(data, dict) else to_dict(data)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def output_values(cfg: Any, part: str | None = None) -> dict[str, Any]:
    """The values of ``cfg``'s options that change its stage's output (those of one ``part`` if given)."""
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.metadata.get("affects_output", True) and (part is None or f.metadata.get("part", "") == part)
    }


def output_hash(cfg: Any, part: str | None = None, **upstream: Any) -> str:
    """Hash of what an output depends on: ``cfg``'s output options plus named upstream hashes."""
    return config_hash({**output_values(cfg, part), **upstream})


def default_of(cls: type, name: str) -> Any:
    """The default of option ``name`` of config class ``cls`` (the one place defaults live)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{cls.__name__} has no option {name!r}")


def runtime_keys(cfg_class: type) -> tuple[str, ...]:
    """Names of the options of a config class marked ``affects_output=False``."""
    return tuple(f.name for f in dataclasses.fields(cfg_class) if not f.metadata.get("affects_output", True))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, with a one-line error naming the file when it is missing or malformed."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ConfigError(f"{path}: not a regular file")  # a named pipe would block the read
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); TOML files are UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Turn ``--set section.key=value`` items into nested dicts (values parsed as TOML, else strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section.replace("-", "_"), {})[name.replace("-", "_")] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return '""'
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(sections: dict[str, dict[str, Any]]) -> str:
    """Write ``{section: {key: value}}`` as TOML (None values are left out: they mean 'default')."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
