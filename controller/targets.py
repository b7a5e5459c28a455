"""Turn what the user typed (`web[01-20],@db,10.0.0.0/28,[::1]:8471`) into connect targets.

Each comma-separated element is one of: a name or address with optional bracket ranges
and `:port`; `[v6addr]` with optional `:port`; a bare IPv6 address; `unix:/path`; a CIDR
block; or `@group` from the inventory. Nothing is resolved here: names go to DNS at
connect time, so a typo'd host fails as that host's own result, not the whole run.

A target's `name` is what output headers show and what de-duplicates the list, so it is
normalised (IPv6 compressed) and carries the port only when one was typed and it is not
the default: `web01`, `web01:9000`, `[::1]:8471`, `unix:/run/a.sock`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.controller.nodeset import MAX_NAMES, expand, split_patterns
from shoal.protocol.errors import ConfigError

if TYPE_CHECKING:
    from shoal.controller.inventory import Inventory

__all__ = ["DEFAULT_PORT", "LARGE_TARGET_COUNT", "Target", "parse_targets"]

DEFAULT_PORT = 8470
# A CIDR block is the easiest way to address far more hosts than intended (/16 is 65534
# of them), so blocks above this size need the user's explicit --yes.
LARGE_TARGET_COUNT = 4096

_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_BRACKETED = re.compile(r"\[([^\[\]]+)\](?::(.*))?")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Target:
    """One place to connect to, with the settings to use there."""

    name: str                 # display name and identity: "web01", "web01:9000", "[::1]:8471"
    host: str | None          # hostname or IP literal (IPv6 without brackets); None for unix
    port: int                 # DEFAULT_PORT unless typed or set in the inventory
    path: str | None = None   # unix socket path
    key_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None

    def __post_init__(self) -> None:
        if (self.host is None) == (self.path is None):
            raise ConfigError(f"target {self.name!r} needs exactly one of host and path")
        if not 0 < self.port < 65536:
            raise ConfigError(f"target {self.name!r}: port {self.port} is out of range")


@dataclass(frozen=True, slots=True)
class _Address:
    """A parsed element before settings: where to go and whether a port was typed."""

    name: str             # display name
    lookup: str           # key for inventory settings: the name without a typed port
    host: str | None
    path: str | None
    port: int | None      # typed port, if any


def parse_targets(spec: str, *, exclude: str | None = None,
                  inventory: Inventory | None = None, allow_large: bool = False) -> list[Target]:
    """Parse a target list into de-duplicated Targets in order of first appearance.

    Args:
        spec: comma-separated targets (commas inside `[...]` do not split).
        exclude: targets to drop, same syntax; an element without a port drops that
            host on every port, one with a port drops only that name, and a CIDR block
            drops every address in it (network and broadcast included, any size).
        inventory: source of `@group` and per-host settings; a typed `:port` wins.
        allow_large: accept CIDR blocks of more than LARGE_TARGET_COUNT hosts.

    Raises:
        ConfigError: bad syntax, bad port, unknown group, or a block too large.
    """
    if not spec.strip():
        raise ConfigError("no targets given")
    chosen = _unique(_addresses(spec, inventory, allow_large))
    if exclude and exclude.strip():
        chosen = _without(chosen, exclude, inventory)
    return [_target(address, inventory) for address in chosen]


def _without(chosen: list[_Address], exclude: str, inventory: Inventory | None) -> list[_Address]:
    """Drop the addresses that `exclude` names."""
    blocks: list[_Network] = []
    dropped = list(_addresses(exclude, inventory, True, blocks=blocks))
    names = {address.name for address in dropped}
    anywhere = {(a.host, a.path) for a in dropped if a.port is None}
    return [a for a in chosen
            if a.name not in names and (a.host, a.path) not in anywhere and not _inside(a, blocks)]


def _inside(address: _Address, blocks: list[_Network]) -> bool:
    """Tell whether the address is an IP literal inside one of the blocks."""
    if not blocks or address.host is None:
        return False
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return False
    return any(ip in block for block in blocks)


def _unique(addresses: Iterator[_Address]) -> list[_Address]:
    """Keep the first address of each name."""
    seen: dict[str, _Address] = {}
    for address in addresses:
        seen.setdefault(address.name, address)
    return list(seen.values())


def _addresses(spec: str, inventory: Inventory | None, allow_large: bool,
               group: str | None = None, blocks: list[_Network] | None = None) -> Iterator[_Address]:
    """Yield the address of every element of `spec`, expanding groups and ranges.

    With `blocks`, CIDR elements are collected there whole instead of enumerated.
    """
    for element in split_patterns(spec):
        if not element:
            raise ConfigError(f"empty element in target list {spec!r}")
        if element.startswith("@"):
            yield from _group_addresses(element, inventory, allow_large, group, blocks)
        elif "/" in element and not element.startswith("unix:"):
            if blocks is None:
                yield from _cidr_addresses(element, allow_large)
            else:
                blocks.append(_network(element))
        elif _BRACKETED.fullmatch(element) and ":" in element.partition("]")[0]:
            yield _bracketed(element)
        else:
            for name in expand(element):
                yield _address(name)


def _group_addresses(element: str, inventory: Inventory | None, allow_large: bool,
                     group: str | None, blocks: list[_Network] | None) -> Iterator[_Address]:
    """Yield the addresses of `@group`; groups nest in the inventory, not via '@'."""
    if group is not None:
        raise ConfigError(f"group {group!r} lists {element!r}; nest groups with groups = [...]")
    if inventory is None:
        raise ConfigError(f"{element}: no inventory to look groups up in")
    for pattern in inventory.group_patterns(element[1:]):
        yield from _addresses(pattern, inventory, allow_large, element[1:], blocks)


def _network(element: str) -> _Network:
    """Parse a CIDR block; host bits are allowed (`10.0.0.5/24` means its network)."""
    try:
        return ipaddress.ip_network(element, strict=False)
    except ValueError as exc:
        raise ConfigError(f"bad CIDR block {element!r}: {exc}") from None


def _cidr_addresses(element: str, allow_large: bool) -> Iterator[_Address]:
    """Yield the host addresses of a CIDR block, refusing surprisingly large ones.

    Network and broadcast addresses are left out, as nothing listens there, except in
    /31 and /32 (IPv6: /127, /128) blocks, whose every address is a host (RFC 3021).
    """
    network = _network(element)
    whole = network.prefixlen >= network.max_prefixlen - 1
    count = network.num_addresses - (0 if whole else 2 if network.version == 4 else 1)
    if count > MAX_NAMES:
        raise ConfigError(f"{element} holds {count} addresses; at most {MAX_NAMES} can be targeted")
    if count > LARGE_TARGET_COUNT and not allow_large:
        raise ConfigError(f"{element} holds {count} addresses, more than {LARGE_TARGET_COUNT};"
                          " pass --yes to target them all")
    for ip in network if whole else network.hosts():
        yield _address(str(ip))


def _address(name: str) -> _Address:
    """Classify one expanded name: unix socket, IPv6 (bracketed or bare), or host[:port]."""
    if name.startswith("unix:"):
        if name == "unix:":
            raise ConfigError("target 'unix:' has no socket path")
        return _Address(name, name, None, name[5:], None)
    if name.startswith("["):
        return _bracketed(name)
    if name.count(":") > 1:
        host = _ipv6(name, name)
        return _Address(host, host, host, None, None)
    host, colon, port_text = name.partition(":")
    port = _port(port_text, name) if colon else None
    if not _HOSTNAME.fullmatch(host):
        raise ConfigError(f"bad target {name!r}: {host!r} is not a host name or IPv4 address")
    return _Address(_display(host, port), host, host, None, port)


def _bracketed(name: str) -> _Address:
    """Parse `[v6addr]` or `[v6addr]:port`."""
    match = _BRACKETED.fullmatch(name)
    if match is None:
        raise ConfigError(f"bad target {name!r}: expected [IPv6 address] or [IPv6 address]:port")
    host = _ipv6(match.group(1), name)
    port = _port(match.group(2), name) if match.group(2) is not None else None
    return _Address(_display(host, port), host, host, None, port)


def _ipv6(text: str, name: str) -> str:
    """Validate and normalise an IPv6 literal (zone id kept), naming the target if bad."""
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ConfigError(f"bad target {name!r}: {text!r} is not an IPv6 address") from None


def _port(text: str, name: str) -> int:
    """Parse a typed port, 1-65535."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"bad port in target {name!r}: {text!r} is not a number from 1 to 65535")
    return int(text)


def _display(host: str, port: int | None) -> str:
    """Name a host for display: with the port only when a non-default one was typed."""
    if port is None or port == DEFAULT_PORT:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _target(address: _Address, inventory: Inventory | None) -> Target:
    """Combine an address with inventory settings; a typed port beats the inventory's."""
    settings = inventory.settings_for(address.lookup) if inventory else {}
    port = address.port if address.port is not None else settings.get("port", DEFAULT_PORT)

    def text(key: str) -> str | None:
        value = settings.get(key)
        return None if value is None else str(value)

    return Target(address.name, address.host, int(port), address.path,
                  text("key_file"), text("tls_cert"), text("tls_key"), text("tls_ca"))
