"""Value checks the config dataclasses share, each raising ConfigError that names the field.

The underscore names are private to shoal.agent.config: its modules import them, nothing else does.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from shoal.protocol.errors import ConfigError

def _integer(name: str, value: object, low: int, high: int) -> int:
    """An int (not a bool, which Python counts as one) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {_kind(value)}", name)
    if not low <= value <= high:
        raise ConfigError(f"{value} is out of range ({low} to {high})", name)
    return value


def _seconds(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number of seconds within the range, stored as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number of seconds, got {_kind(value)}", name)
    number = float(value)
    too_low = number <= low if low_open else number < low
    if not math.isfinite(number) or too_low or number > high:
        bound = f"more than {low:g}" if low_open else f"at least {low:g}"
        raise ConfigError(f"{value} is out of range ({bound} and at most {high:g})", name)
    return number


def _boolean(name: str, value: object) -> bool:
    """True or false, never a truthy stand-in such as 1 or "yes"."""
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {_kind(value)}", name)
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {_kind(value)}", name)
    if "\0" in value:
        raise ConfigError("NUL character in string", name)
    return value


def _absolute_path(name: str, value: object) -> str:
    """An absolute path: the service runs from /, so a relative one would mislead."""
    path = _text(name, value)
    if not os.path.isabs(path):
        raise ConfigError(f"path {path!r} must be absolute", name)
    return path


def _strings(name: str, value: object, check: Any = _text) -> tuple[str, ...]:
    """A list or tuple of strings, each passed through `check`, as a tuple."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"expected a list of strings, got {_kind(value)}", name)
    return tuple(check(f"{name}[{index}]", item) for index, item in enumerate(value))


def _kind(value: object) -> str:
    """Name a value's type the way a TOML author would."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", tuple: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _store(obj: object, name: str, value: object) -> None:
    """Normalise a field of a frozen dataclass during __post_init__ (list to tuple...)."""
    object.__setattr__(obj, name, value)


def _instance(name: str, value: object, cls: type, optional: bool = False) -> None:
    if not isinstance(value, cls) and not (optional and value is None):
        raise ConfigError(f"expected {cls.__name__}, got {type(value).__name__}", name)


def _reject_unknown(table: Mapping[str, Any], cls: type, prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for name in table:
        if name not in known:
            raise ConfigError(f"unknown key '{name}'", _join(prefix, name))


def _join(prefix: str, name: str | None) -> str:
    if not name:
        return prefix
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"
