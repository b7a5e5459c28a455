"""Listen addresses: `host:port`, `[v6]:port` or `unix:/path`, parsed once for the agent and its checks."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Literal

from shoal.protocol.defaults import HUB_PORT
from shoal.protocol.errors import ConfigError
from shoal.agent.config.checks import _kind

__all__ = ["DEFAULT_PORT", "ListenAddress", "is_loopback", "parse_connect", "parse_listen"]

DEFAULT_PORT = 8470
# Longest AF_UNIX socket path Linux accepts (sun_path is 108 bytes with the NUL).
_MAX_UNIX_PATH = 107


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where the agent listens: a TCP host and port, or a unix socket path."""

    kind: Literal["tcp", "unix"]
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


def parse_listen(addr: str) -> ListenAddress:
    """Parse `HOST:PORT`, `[IPv6]:PORT` or `unix:/path`.

    Port 0 asks the system for a free port (tests use it). Raises ConfigError
    (where="listen") saying what is wrong and what form was expected.
    """
    if not isinstance(addr, str):
        raise ConfigError(f"expected a listen address string, got {_kind(addr)}", "listen")
    if addr.startswith("unix:"):
        return _parse_unix(addr, addr[5:])
    host, port = _split_host_port(addr)
    return ListenAddress("tcp", host=host, port=port)


def parse_connect(addr: str) -> tuple[str, int]:
    """Parse a hub to dial: `HOST`, `HOST:PORT`, `[IPv6]` or `[IPv6]:PORT` (port default HUB_PORT).

    Raises ConfigError (where="connect") saying what is wrong.
    """
    if not isinstance(addr, str) or not addr.strip():
        raise ConfigError(f"expected a hub address HOST[:PORT], got {_kind(addr)}", "connect")
    text = addr
    if addr.startswith("[") and addr.endswith("]"):
        text = f"{addr}:{HUB_PORT}"
    elif not addr.startswith("[") and addr.count(":") != 1:
        if ":" in addr:
            raise ConfigError(f"bad hub address {addr!r}: IPv6 addresses need brackets", "connect")
        text = f"{addr}:{HUB_PORT}"
    try:
        host, port = _split_host_port(text)
    except ConfigError as exc:
        raise ConfigError(exc.reason.replace("listen address", "hub address")
                          .replace("(expected HOST:PORT, [IPv6]:PORT or unix:/path)", "(expected HOST[:PORT])"),
                          "connect") from None
    if port == 0:
        raise ConfigError(f"bad hub address {addr!r}: port 0", "connect")
    return host, port


def _parse_unix(addr: str, path: str) -> ListenAddress:
    if not path:
        raise ConfigError(f"bad listen address {addr!r}: no socket path after 'unix:'", "listen")
    if path.startswith("@") or "\0" in path:
        raise ConfigError(f"bad listen address {addr!r}: abstract sockets are not supported", "listen")
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ConfigError(f"bad listen address {addr!r}: socket path longer than "
                          f"{_MAX_UNIX_PATH} bytes", "listen")
    return ListenAddress("unix", path=path)


def _split_host_port(addr: str) -> tuple[str, int]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad listen address {addr!r}: {why} "
                           "(expected HOST:PORT, [IPv6]:PORT or unix:/path)", "listen")

    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise bad("unclosed '[' or no ':PORT' after ']'")
        if not _is_ipv6(host):
            raise bad(f"{host!r} is not an IPv6 address")
        port_text = rest[1:]
    else:
        host, sep, port_text = addr.rpartition(":")
        if not sep:
            raise bad("no port")
        if ":" in host:
            raise bad("IPv6 addresses need brackets")
        if not host or any(c.isspace() for c in host):
            raise bad("no host (use 0.0.0.0 or [::] for every interface)" if not host else "space in host")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise bad(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) stays on this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
