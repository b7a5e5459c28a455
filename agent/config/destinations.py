"""Where a key may relay to: CIDR blocks with optional ports, and unix sockets.

A key's `relay` list (agent.toml `[[keys]]`) names the destinations a controller
holding it may ask this agent to open a stream to. Each entry is one of:

    10.1.0.0/16            any port of any address in the block (a bare address is a /32)
    10.1.0.0/16:8470       that port only
    10.1.0.0/16:8470-8479  a range of ports
    [fd00::/8]:8470        IPv6, the block in brackets when a port follows (fd00::/8 alone: any port)
    unix:/run/shoal.sock   that unix socket path, exactly

The gateway resolves a host name first and checks the addresses it would connect
to, so a name cannot smuggle a destination past the list.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from shoal.protocol.errors import ConfigError

__all__ = ["Destination", "parse_destination"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Destination:
    """One entry of a key's relay list: a block and port range, or a socket path."""

    network: _Network | None = None
    ports: tuple[int, int] | None = None  # inclusive; None: every port
    path: str | None = None

    def allows(self, address: str | None, port: int, path: str | None) -> bool:
        """Whether a stream to `address`:`port` (an IP literal) or to `path` is within this entry."""
        if path is not None or self.path is not None:
            return path is not None and path == self.path
        if address is None or self.network is None:
            return False
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        in_range = self.ports is None or self.ports[0] <= port <= self.ports[1]
        return ip.version == self.network.version and ip in self.network and in_range

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        assert self.network is not None
        if self.ports is None:
            return str(self.network)
        ports = str(self.ports[0]) if self.ports[0] == self.ports[1] else f"{self.ports[0]}-{self.ports[1]}"
        block = f"[{self.network}]" if self.network.version == 6 else str(self.network)
        return f"{block}:{ports}"


def parse_destination(name: str, text: object) -> Destination:
    """Parse one relay list entry; ConfigError naming `name` when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("expected a destination such as \"10.0.0.0/8:8470\" or \"unix:/path\"", name)
    if text.startswith("unix:"):
        path = text[5:]
        if not os.path.isabs(path) or "\0" in path or os.path.normpath(path) != path:
            raise ConfigError(f"{text!r}: a unix socket needs a plain absolute path", name)
        return Destination(path=path)
    block, ports = _split(text, name)
    try:
        network = ipaddress.ip_network(block, strict=False)
    except ValueError:
        raise ConfigError(f"{text!r}: {block!r} is not an address or CIDR block", name) from None
    return Destination(network=network, ports=_ports(ports, text, name) if ports is not None else None)


def _split(text: str, name: str) -> tuple[str, str | None]:
    """The block and the port text (None when no port was given)."""
    if text.startswith("["):
        block, bracket, rest = text[1:].partition("]")
        if not bracket or rest and not rest.startswith(":"):
            raise ConfigError(f"{text!r}: expected [IPv6 block] or [IPv6 block]:PORTS", name)
        return block, rest[1:] if rest else None
    if text.count(":") > 1:  # a bare IPv6 block: no port can follow
        return text, None
    block, colon, ports = text.partition(":")
    return block, ports if colon else None


def _ports(text: str, whole: str, name: str) -> tuple[int, int]:
    low, dash, high = text.partition("-")
    try:
        first, last = int(low), int(high) if dash else int(low)
    except ValueError:
        raise ConfigError(f"{whole!r}: bad port {text!r} (PORT or FIRST-LAST)", name) from None
    if not 0 < first <= last < 65536:
        raise ConfigError(f"{whole!r}: ports must be 1-65535, first not above last", name)
    return first, last
