"""hub.toml: the hub's settings, each the default of the `shoal hub` flag of the same name.

    socket = "/run/shoal/hub.sock"       # local clients' socket (mode 0600)
    listen = ["0.0.0.0:8472"]            # where agents dial in (HOST[:PORT]; port default 8472)
    key_file = "/etc/shoal/admin.key"    # agents must prove it; the hub proves it to them
    tls_cert, tls_key, tls_ca            # the hub's TLS: for inventory targets and every listen port
    targets = "@all"                     # inventory targets to keep connected
    inventory = "/etc/shoal/inventory.toml"
    metrics_listen = "127.0.0.1:9472"    # Prometheus endpoint (host default 127.0.0.1)
    audit_log = "/var/log/shoal/hub-audit.log"
    fanout = 64                          # inventory connects in flight
    connect_timeout = 10
    drain_grace = 10                     # seconds SIGTERM waits for requests in flight
    forget_after = 86400                 # seconds a dial-in name that left is scraped as down (0: none)
    insecure = false                     # allow a non-loopback listen without a key
    log_level = "info"

Paths are taken relative to the file. The schema is closed: an unknown key or a bad
value is a ConfigError naming `path:line`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from shoal.protocol.defaults import HUB_PORT
from shoal.protocol.errors import ConfigError

from shoal.controller.tomlfile import TomlLocator, read_toml

__all__ = ["HUB_SETTINGS", "load_hub_config", "parse_address"]

_PATHS = ("socket", "key_file", "tls_cert", "tls_key", "tls_ca", "inventory", "audit_log")
_TEXT = ("targets", "metrics_listen", "log_level")
_NUMBERS = ("fanout", "connect_timeout", "drain_grace", "forget_after")
_ZERO_OK = ("drain_grace", "forget_after")  # 0: stop at once; remember no departed name
HUB_SETTINGS = (*_PATHS, *_TEXT, *_NUMBERS, "listen", "insecure")
LOG_LEVELS = ("debug", "info", "warning", "error")


def load_hub_config(path: str) -> dict[str, Any]:
    """The settings in `path`, checked; ConfigError (`path:line`) for anything wrong."""
    file = Path(path).expanduser()
    found = read_toml(file, "hub config", missing_ok=False)
    assert found is not None
    data, text = found
    locator = TomlLocator(file, text)
    locator.check_keys(data, HUB_SETTINGS, ())
    return {key: _checked(locator, key, value) for key, value in data.items()}


def _checked(locator: TomlLocator, key: str, value: Any) -> Any:
    if key in _PATHS:
        return locator.path(key, value, (key,))
    if key == "listen":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise locator.error("listen must be a list of addresses (HOST[:PORT])", (key,))
        for item in value:
            _located(locator, key, lambda: parse_address(item, HUB_PORT))
        return list(value)
    if key == "insecure":
        if not isinstance(value, bool):
            raise locator.error("insecure must be true or false", (key,))
        return value
    if key in _TEXT:
        if not isinstance(value, str) or not value:
            raise locator.error(f"{key} must be a non-empty string", (key,))
        if key == "log_level" and value not in LOG_LEVELS:
            raise locator.error(f"log_level must be one of {', '.join(LOG_LEVELS)}", (key,))
        if key == "metrics_listen":
            _located(locator, key, lambda: parse_address(value, None))
        return value
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if key in _ZERO_OK and number and value == 0:
        return value
    if not number or not value > 0 or (key == "fanout" and not isinstance(value, int)):  # NaN too
        least = "0 or more" if key in _ZERO_OK else "above 0"
        raise locator.error(f"{key} must be a number {least}, not {value!r}", (key,))
    return value


def _located(locator: TomlLocator, key: str, check: Any) -> None:
    try:
        check()
    except ConfigError as exc:
        raise locator.error(exc.reason, (key,)) from None


def parse_address(text: str, default_port: int | None) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, or with a default port `HOST`/`[IPv6]`; `PORT` alone means 127.0.0.1."""
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad address {text!r} (expected HOST:PORT or [IPv6]:PORT)")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ConfigError(f"bad address {text!r}: IPv6 addresses need brackets")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"bad address {text!r}: no port")
        return _host(host, text), default_port
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"bad address {text!r}: port {port_text!r} is not a number from 0 to 65535")
    return _host(host, text), int(port_text)


def _host(host: str, text: str) -> str:
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"bad address {text!r}: no host (use 0.0.0.0 or [::] for every interface)")
    if ":" in host:
        ipaddress.IPv6Address(host)  # ValueError is caught by the caller's check
    return host
