"""The controller's own defaults: `$XDG_CONFIG_HOME/shoal/config.toml`, or a file named
with `--config PATH`.

Every key is the default of the command-line option of the same name, so a flag given
on the command line always wins::

    key_file = "admin.key"       # relative to this file; tls_cert, tls_key, tls_ca too (all three)
    fanout = 128                 # hosts at once
    connect_timeout = 5.0        # seconds to connect and authenticate
    timeout = 600                # seconds before a command's process tree is killed
    output = "gather"            # stream, gather or json
    color = "never"              # auto, always or never
    hub = "/run/shoal/hub.sock"  # reach hosts through this hub (shoal hub); relative to this file

The schema is closed, like the inventory's: an unknown key or a bad value is a
ConfigError naming `path:line`, because a misspelt key silently ignored would leave the
user running with settings they did not choose. The default file may be absent; a
file named explicitly may not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.controller.tomlfile import TomlLocator, config_home, read_toml

__all__ = ["COLOR_MODES", "OUTPUT_MODES", "UserConfig", "default_config_path", "load_user_config"]

OUTPUT_MODES = ("stream", "gather", "json")
COLOR_MODES = ("auto", "always", "never")
_TLS = ("tls_cert", "tls_key", "tls_ca")
_PATHS = ("key_file", *_TLS, "hub")
_CHOICES = {"output": OUTPUT_MODES, "color": COLOR_MODES}
_SECONDS = ("connect_timeout", "timeout")
_KEYS = (*_PATHS, "fanout", *_SECONDS, *_CHOICES)


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A loaded config file: `defaults` maps option names (`connect_timeout`) to values."""

    path: Path | None = None
    defaults: Mapping[str, str | int | float] = field(default_factory=dict)


def default_config_path() -> Path:
    """Return `$XDG_CONFIG_HOME/shoal/config.toml` (`~/.config/shoal/config.toml`)."""
    return config_home() / "config.toml"


def load_user_config(path: str | os.PathLike[str] | None = None) -> UserConfig:
    """Read and validate the controller's config file.

    Args:
        path: the file; None means `default_config_path()`, whose absence is fine.

    Raises:
        ConfigError: missing explicit file, unreadable file, bad TOML, unknown key or
            bad value; `where` is `path:line`.
    """
    file = Path(path).expanduser() if path is not None else default_config_path()
    found = read_toml(file, "config", missing_ok=path is None)
    if found is None:
        return UserConfig()
    data, text = found
    locator = TomlLocator(file, text)
    locator.check_keys(data, _KEYS, ())
    tls = [key for key in _TLS if key in data]
    if tls and len(tls) < len(_TLS):
        raise locator.error(f"tls_cert, tls_key and tls_ca go together (only {', '.join(tls)} given)", (tls[0],))
    return UserConfig(file, {key: _checked(locator, key, value) for key, value in data.items()})


def _checked(locator: TomlLocator, key: str, value: Any) -> str | int | float:
    """Validate one value, as the option of the same name would."""
    if key in _PATHS:
        return locator.path(key, value, (key,))
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise locator.error(f"{key} must be one of {', '.join(_CHOICES[key])}, not {value!r}", (key,))
        return str(value)
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if key == "fanout":
        if not number or not isinstance(value, int) or value < 1:
            raise locator.error(f"fanout must be a whole number of hosts, at least 1, not {value!r}", (key,))
        return value
    if not number or value <= 0:
        raise locator.error(f"{key} must be a number of seconds above 0, not {value!r}", (key,))
    return float(value)
