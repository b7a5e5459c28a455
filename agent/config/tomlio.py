"""agent.toml in and out: `load_config` with errors at `path:line`, `dump_config` writing it back."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from shoal.protocol.errors import ConfigError
from shoal.agent.config.checks import _join, _kind, _reject_unknown
from shoal.agent.config.policy import KeyPolicy
from shoal.agent.config.settings import AgentConfig, DiscoveryConfig, Limits, TlsConfig

__all__ = ["DEFAULT_CONFIG_PATH", "config_from_table", "dump_config", "load_config", "locate_option"]

DEFAULT_CONFIG_PATH = "/etc/shoal/agent.toml"


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and check an agent configuration file.

    Raises ConfigError with where="path:line" (or just the path when the file cannot
    be read) for syntax errors, unknown keys, wrong types and invalid values.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            text = stream.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, exc, text) from None
    try:
        return config_from_table(data)
    except ConfigError as exc:
        raise ConfigError(exc.reason, _Locator(text).where(path, exc.where)) from None


def locate_option(path: str | os.PathLike[str], option: str) -> str:
    """`path:line` where a dotted option (`keys[1].file`) is set, or just the path.

    For messages about a value that was valid as text but turned out wrong later,
    such as a key file that cannot be loaded, so they point at the same line a
    `load_config` error would.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            text = stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return path
    return _Locator(text).where(path, option)


def _syntax_error(path: str, exc: tomllib.TOMLDecodeError, text: str) -> ConfigError:
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
    if found is not None:
        return ConfigError(f"TOML syntax error: {message[:found.start()]}", f"{path}:{found.group(1)}")
    # An unclosed array or table runs to the end: name the last line, where it was cut.
    found = re.search(r"\s*\(at end of document\)$", message)
    if found is not None:
        return ConfigError(f"TOML syntax error: {message[:found.start()]} at end of file",
                           f"{path}:{max(1, len(text.splitlines()))}")
    return ConfigError(f"TOML syntax error: {message}", path)


def config_from_table(data: Mapping[str, Any]) -> AgentConfig:
    """Build an AgentConfig from parsed TOML; errors name the option as a dotted path."""
    _reject_unknown(data, AgentConfig, "")
    options = dict(data)
    if "connect" in data and "listen" not in data:
        options["listen"] = ()  # an agent that dials its hubs listens only where told to
    if "tls" in data:
        options["tls"] = _tls_from_table(data["tls"])
    options["limits"] = _section(Limits, data.get("limits", {}), "limits")
    options["discovery"] = _section(DiscoveryConfig, data.get("discovery", {}), "discovery")
    keys = data.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(item, dict) for item in keys):
        raise ConfigError("expected [[keys]] tables", "keys")
    options["keys"] = tuple(_policy_from_table(item, f"keys[{i}]") for i, item in enumerate(keys))
    return AgentConfig(**options)


def _section(cls: type, table: object, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"expected a table, got {_kind(table)}", prefix)
    _reject_unknown(table, cls, prefix)
    try:
        return cls(**table)
    except ConfigError as exc:
        raise ConfigError(exc.reason, _join(prefix, exc.where)) from None


def _tls_from_table(table: object) -> TlsConfig:
    if isinstance(table, dict):
        missing = [name for name in ("cert", "key", "ca") if name not in table]
        if missing:
            raise ConfigError("tls needs cert, key and ca together; missing "
                              + ", ".join(f"'{name}'" for name in missing), "tls")
    tls: TlsConfig = _section(TlsConfig, table, "tls")
    return tls


def _policy_from_table(table: dict[str, Any], prefix: str) -> KeyPolicy:
    """Translate a [[keys]] table (`allow = "all"|"listed"`) into a KeyPolicy."""
    options = dict(table)
    allow = options.pop("allow", "listed")
    if allow not in ("all", "listed"):
        raise ConfigError(f"allow must be \"all\" or \"listed\", got {allow!r}", f"{prefix}.allow")
    for name in ("name", "file"):
        if name not in options:
            raise ConfigError(f"key needs '{name}'", prefix)
    if "allow_all" in options:
        raise ConfigError("unknown key 'allow_all' (use allow = \"all\")", f"{prefix}.allow_all")
    if allow == "all":
        for name in ("commands", "metrics", "files", "file_roots", "env", "cwd"):
            if name in options:
                raise ConfigError(f"'{name}' only applies to allow = \"listed\" keys "
                                  "(allow = \"all\" permits everything)", f"{prefix}.{name}")
    policy: KeyPolicy = _section(KeyPolicy, {**options, "allow_all": allow == "all"}, prefix)
    return policy


class _Locator:
    """Find the line where a dotted option (`keys[1].name`) is set in TOML text.

    tomllib keeps no positions, so we scan the lines: table headers set the
    current table (counting `[[array]]` entries), `key = value` lines name keys
    relative to it. Lines inside multi-line strings are skipped. An option not
    found falls back to its table, then to no line at all.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _ASSIGN = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                         r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        table = ""
        counts: dict[str, int] = {}
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                in_string = None if line.count(in_string) % 2 else in_string
                continue
            table = self._scan_line(line, number, table, counts)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2:
                    in_string = quote

    def _scan_line(self, line: str, number: int, table: str, counts: dict[str, int]) -> str:
        header = self._HEADER.match(line)
        if header:
            name = _dotted(header.group(2))
            if header.group(1) == "[[":
                index = counts[name] = counts.get(name, -1) + 1
                name = f"{name}[{index}]"
            self.lines.setdefault(name, number)
            return name
        assign = self._ASSIGN.match(line)
        if assign:
            self.lines.setdefault(_join(table, _dotted(assign.group(1))), number)
        return table

    def where(self, path: str, option: str | None) -> str:
        while option:
            if option in self.lines:
                return f"{path}:{self.lines[option]}"
            option = re.sub(r"(\[\d+\]|\.[^.\[]*|^[^.\[]*)$", "", option)
        return path


def _dotted(key: str) -> str:
    """Normalise a TOML key (`a . "b"`) to our dotted form (`a.b`)."""
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return ".".join(part.strip("\"'") for part in parts)


# -- writing -----------------------------------------------------------------------

def dump_config(config: AgentConfig) -> str:
    """TOML text that `load_config` reads back into an equal AgentConfig."""
    lines = [f"listen = {_toml(list(config.listen))}",
             f"insecure = {_toml(config.insecure)}",
             f"log_level = {_toml(config.log_level)}"]
    if config.audit_log is not None:
        lines.append(f"audit_log = {_toml(config.audit_log)}")
        lines.append(f"audit_required = {_toml(config.audit_required)}")
    lines.append(f"state_dir = {_toml(config.state_dir)}")
    if config.connect:
        lines.append(f"connect = {_toml(list(config.connect))}")
    if config.name:
        lines.append(f"name = {_toml(config.name)}")
    if config.tls is not None:
        lines += _table("[tls]", _fields(config.tls))
    lines += _table("[limits]", _fields(config.limits))
    lines += _table("[discovery]", _fields(config.discovery))
    for policy in config.keys:
        lines += _table("[[keys]]", _policy_fields(policy))
    return "\n".join(lines) + "\n"


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _policy_fields(policy: KeyPolicy) -> dict[str, Any]:
    options: dict[str, Any] = {"name": policy.name, "file": policy.file,
                               "allow": "all" if policy.allow_all else "listed"}
    if not policy.allow_all:
        options.update(commands=list(policy.commands), metrics=policy.metrics, files=policy.files)
        if policy.file_roots is not None:
            options["file_roots"] = list(policy.file_roots)
        options.update(env=list(policy.env), cwd=policy.cwd)
    if policy.users is not None:  # issue 17
        options["users"] = list(policy.users)
    if policy.relay is not None:  # issue 19
        options["relay"] = list(policy.relay)
    return options


def _table(header: str, options: dict[str, Any]) -> list[str]:
    return ["", header] + [f"{name} = {_toml(value)}" for name, value in options.items()]


def _toml(value: object) -> str:
    """One TOML value: the types this schema uses, nothing more."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # finite by validation; repr keeps '.0' or an exponent
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_char(char: str) -> str:
    """Escape a character for a TOML basic string (quotes, backslash, controls)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    if char in escapes:
        return escapes[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char
