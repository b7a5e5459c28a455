"""TOML files whose every error names `path:line`: the inventory and the user config.

tomllib keeps no positions for a valid document, so a light scan of table headers and
`key =` lines finds where each key lives; a TomlLocator turns a key path into
`path:line` for the ConfigError the schema check raises. Both controller files are read
here so they report errors the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoal.protocol.errors import ConfigError

__all__ = ["TomlLocator", "config_home", "read_toml"]

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)|\s*\(at end of document\)")
_HEADER = re.compile(r"""\s*\[\[?\s*((?:[^\]"'#]|"(?:[^"\\]|\\.)*"|'[^']*')+?)\s*\]\]?\s*(?:#.*)?$""")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_KEY = re.compile(rf"\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def config_home() -> Path:
    """Return the directory of the controller's files: `$XDG_CONFIG_HOME/shoal`.

    A relative or empty XDG_CONFIG_HOME is ignored, as the XDG spec asks, in favour of
    `~/.config`.
    """
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "shoal"


def read_toml(file: Path, what: str, *, missing_ok: bool) -> tuple[dict[str, Any], str] | None:
    """Read and parse a TOML file: (the document, its text for a TomlLocator).

    Args:
        file: the file.
        what: what it is, for messages ("inventory", "config").
        missing_ok: return None when the file does not exist, instead of raising.

    Raises:
        ConfigError: missing file (unless missing_ok), unreadable file, bad UTF-8 or
            bad TOML; `where` is the path, or `path:line` when a line is known.
    """
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(f"{what} file not found", str(file)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", str(file)) from exc
    text = _decode(raw, file, what)
    return _parse_toml(text, file), text


def _decode(raw: bytes, file: Path, what: str) -> str:
    """Decode the file as UTF-8 (TOML requires it), pointing at the first bad line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{what} is not valid UTF-8", f"{file}:{line}") from None


def _parse_toml(text: str, file: Path) -> dict[str, Any]:
    """Parse TOML, moving tomllib's "(at line N, column M)" into `where`."""
    import tomllib  # only when there is a file: keeps `shoal run` quick to start

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_POSITION.search(message)
        if found and found.group(1):
            line = int(found.group(1))
        else:
            line = text.count("\n") + 1
        reason = _TOML_POSITION.sub("", message)
        raise ConfigError(f"bad TOML: {reason}", f"{file}:{line}") from None


def _key_path(raw: str) -> tuple[str, ...] | None:
    """Decode a dotted TOML key such as `hosts."web01"` by letting tomllib read it."""
    import tomllib

    try:
        node: Any = tomllib.loads(f"{raw} = 0")
    except tomllib.TOMLDecodeError:
        return None
    parts: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        parts.append(key)
    return tuple(parts)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every table and key path to the line that first mentions it.

    It only serves error messages: a line it cannot place falls back to the nearest
    enclosing table.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        match = header or _KEY.match(line)
        found = _key_path(match.group(1)) if match else None
        if found is None:
            continue
        path = found if header else table + found
        if header:
            table = path
        for end in range(1, len(path) + 1):
            lines.setdefault(path[:end], number)
    return lines


class TomlLocator:
    """Locate keys of one parsed TOML file and build the errors that name them."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.text_lines = text.splitlines()
        self.lines = _key_lines(text)

    def where(self, keys: tuple[str, ...], value: str | None = None) -> str:
        """Return `path:line` of the key path (or of `value` listed under it)."""
        line = 1
        for end in range(len(keys), 0, -1):
            if keys[:end] in self.lines:
                line = self.lines[keys[:end]]
                break
        if value is not None:
            line = self._value_line(line, value)
        return f"{self.file}:{line}"

    def _value_line(self, start: int, value: str) -> int:
        """Find the line, at or after `start`, holding `value` as a string literal."""
        quoted = (f'"{value}"', f"'{value}'")
        for number in range(start, len(self.text_lines) + 1):
            if any(q in self.text_lines[number - 1] for q in quoted):
                return number
        return start

    def error(self, reason: str, keys: tuple[str, ...], value: str | None = None) -> ConfigError:
        """Build a located ConfigError."""
        return ConfigError(reason, self.where(keys, value))

    def table(self, parent: Mapping[str, Any], key: str, keys: tuple[str, ...]) -> dict[str, Any]:
        """Return sub-table `key` of `parent` (empty if absent), insisting it is a table."""
        value = parent.get(key, {})
        if not isinstance(value, dict):
            raise self.error(f"{'.'.join(keys + (key,))} must be a table", keys + (key,))
        return value

    def check_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...],
                   keys: tuple[str, ...]) -> None:
        """Refuse any key the schema does not know, naming the ones it does."""
        for key in table:
            if key not in allowed:
                place = ".".join(keys) or "top level"
                raise self.error(f"unknown key {key!r} in {place} (allowed: {', '.join(allowed)})",
                                 keys + (key,))

    def path(self, name: str, value: Any, keys: tuple[str, ...]) -> str:
        """Check a file-path setting; a relative path is taken from the file's directory."""
        if not isinstance(value, str) or not value:
            raise self.error(f"{name} must be a non-empty string (a file path)", keys)
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.file.parent / path)
