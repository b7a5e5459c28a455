"""Turn what the user typed (`web[01-20],@db,10.0.0.0/28,[::1]:8471`) into connect targets.

The text is a set expression (`nodeset.py`): elements joined by `,` (union), `!`
(difference), `&` (intersection) and `^` (symmetric difference), left to right. Each
element is one of: a name or address with optional bracket ranges and `:port`;
`[v6addr]` with optional `:port`; a bare IPv6 address; `unix:/path`; a CIDR block; or
`@group` from the inventory. Nothing is resolved here: names go to DNS at
connect time, so a typo'd host fails as that host's own result, not the whole run.

A target's `name` is what output headers show and what de-duplicates the list (host
names without regard to case, first spelling kept), so it is normalised (IPv6
compressed) and carries the port only when one was typed and it is not the default:
`web01`, `web01:9000`, `[::1]:8471`, `unix:/run/a.sock`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from shoal.controller.nodeset import MAX_NAMES, expand, split_expression
from shoal.protocol.errors import ConfigError

if TYPE_CHECKING:
    from shoal.controller.inventory import Inventory

__all__ = ["DEFAULT_PORT", "LARGE_TARGET_COUNT", "Target", "cidr_block", "parse_targets"]

DEFAULT_PORT = 8470
# A CIDR block is the easiest way to address far more hosts than intended (/16 is 65534
# of them), so blocks above this size need the user's explicit --yes.
LARGE_TARGET_COUNT = 4096

_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_BRACKETED = re.compile(r"\[([^\[\]]+)\](?::(.*))?")
_BRACKET_BODIES = re.compile(r"\[[^\[\]]*\]")
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
    via: Target | None = None  # the gateway this target is reached through (itself a Target, maybe relayed)

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


def parse_targets(spec: str, *, exclude: str | None = None, inventory: Inventory | None = None,
                  allow_large: bool = False, via: str | None = None) -> list[Target]:
    """Evaluate a target expression into de-duplicated Targets in order of first appearance.

    One pass: the expression is split into operands and operators, each `@group` is
    looked up in the inventory once however often it is named, the set algebra runs on
    the resulting host sets left to right (`,` union, `!` difference, `&` intersection,
    `^` symmetric difference), and the targets are built once at the end. Names are
    compared without regard to case; the first spelling is kept.

    On the right of `!` and `&` (and in `exclude`), an element without a port stands for
    that host on every port, and a CIDR block for every address in it (network and
    broadcast included, any size), so `10.0.0.0/24!10.0.0.0/30` needs no enumeration.

    Args:
        spec: the expression (commas and operators inside `[...]` do not split).
        exclude: targets to drop, same syntax: `spec` minus this whole expression.
        inventory: source of `@group` and per-host settings; a typed `:port` wins.
        allow_large: accept CIDR blocks of more than LARGE_TARGET_COUNT hosts.
        via: the gateways to reach every target through (`gw1` or a chain `gw1,gw2`;
            "" for none), instead of each host's inventory `via`.

    Raises:
        ConfigError: bad syntax, bad port, unknown group, a block too large, or a
            bad or looping gateway chain.
    """
    if not spec.strip():
        raise ConfigError("no targets given")
    resolver = _Resolver(inventory, allow_large)
    chosen = resolver.expression(spec)
    if exclude and exclude.strip():
        chosen = resolver.combine("!", chosen, resolver.expression(exclude))
    chains = _Chains(inventory)
    return [_target(address, inventory, chains, via) for address in resolver.addresses(chosen)]


_Item = _Address | _Network


@dataclass(frozen=True, slots=True)
class _Hosts:
    """An operand or partial result: addresses and CIDR blocks, blocks not yet enumerated."""

    items: tuple[_Item, ...]

    def matcher(self) -> Callable[[_Address], bool]:
        """Return a test for "named here": by name, by port-less host, or by block."""
        named = [item for item in self.items if isinstance(item, _Address)]
        blocks = [item for item in self.items if not isinstance(item, _Address)]
        keys = {_key(a) for a in named}
        anywhere = {_anywhere_key(a) for a in named if a.port is None}

        def holds(address: _Address) -> bool:
            return (_key(address) in keys or _anywhere_key(address) in anywhere
                    or any(_inside(address, block) for block in blocks))

        return holds


class _Resolver:
    """Evaluate expressions for one `parse_targets` call, remembering resolved groups."""

    def __init__(self, inventory: Inventory | None, allow_large: bool) -> None:
        self.inventory = inventory
        self.allow_large = allow_large
        self.groups: dict[str, _Hosts] = {}

    def expression(self, text: str, group: str | None = None) -> _Hosts:
        """Fold the expression's operands left to right with its operators."""
        result = _Hosts(())
        for op, piece in split_expression(text):
            result = self.combine(op, result, self.operand(piece, group))
        return result

    def combine(self, op: str, left: _Hosts, right: _Hosts) -> _Hosts:
        """Apply one set operator; only `^` needs its right side enumerated."""
        if op == ",":
            return _Hosts(left.items + right.items)
        if op == "^":
            ours, theirs = self.addresses(left), self.addresses(right)
            keys, their_keys = {_key(a) for a in ours}, {_key(a) for a in theirs}
            return _Hosts(tuple(a for a in ours if _key(a) not in their_keys)
                          + tuple(a for a in theirs if _key(a) not in keys))
        keep, holds = op == "&", right.matcher()
        return _Hosts(tuple(a for a in self.addresses(left) if holds(a) == keep))

    def addresses(self, hosts: _Hosts) -> list[_Address]:
        """Enumerate blocks and drop repeats, keeping each name's first spelling."""
        seen: dict[str, _Address] = {}
        for item in hosts.items:
            for address in (item,) if isinstance(item, _Address) else _cidr_addresses(item, self.allow_large):
                seen.setdefault(_key(address), address)
        return list(seen.values())

    def operand(self, element: str, group: str | None) -> _Hosts:
        """Parse one element: `@group`, CIDR block, `[v6]:port`, or a range pattern."""
        if element.startswith("@"):
            return self.group(element, group)
        block = cidr_block(element)
        if block is not None:
            return _Hosts((block,))
        if _BRACKETED.fullmatch(element) and ":" in element.partition("]")[0]:
            return _Hosts((_bracketed(element),))
        return _Hosts(tuple(_address(name) for name in expand(element)))

    def group(self, element: str, within: str | None) -> _Hosts:
        """Resolve `@group` once per call; groups nest in the inventory, not via '@'."""
        if within is not None:
            raise ConfigError(f"group {within!r} lists {element!r}; nest groups with groups = [...]")
        if self.inventory is None:
            raise ConfigError(f"{element}: no inventory to look groups up in")
        name = element[1:]
        if name not in self.groups:
            parts = [self.expression(p, name) for p in self.inventory.group_patterns(name)]
            self.groups[name] = _Hosts(tuple(item for part in parts for item in part.items))
        return self.groups[name]


def _key(address: _Address) -> str:
    """Identity for de-duplication: host names ignore case, socket paths do not."""
    return address.name if address.path is not None else address.name.lower()


def _anywhere_key(address: _Address) -> tuple[str | None, str | None]:
    """Identity of the host or socket, whatever the port."""
    return (address.host.lower() if address.host else None), address.path


def cidr_block(element: str) -> _Network | None:
    """Return the network if the element is a CIDR block, else None (it is a name).

    A block has a '/' outside brackets (inside, `web[1-9/2]`, it is a range step) and is
    not a `unix:` path. Host bits are allowed: `10.0.0.5/24` means its network.

    Raises:
        ConfigError: it is written as a block but is not a valid one.
    """
    if element.startswith("unix:") or "/" not in _BRACKET_BODIES.sub("", element):
        return None
    try:
        return ipaddress.ip_network(element, strict=False)
    except ValueError as exc:
        raise ConfigError(f"bad CIDR block {element!r}: {exc}") from None


def _inside(address: _Address, block: _Network) -> bool:
    """Tell whether the address is an IP literal inside the block."""
    if address.host is None:
        return False
    try:
        return ipaddress.ip_address(address.host) in block
    except ValueError:
        return False


def _cidr_addresses(network: _Network, allow_large: bool) -> Iterator[_Address]:
    """Yield the host addresses of a CIDR block, refusing surprisingly large ones.

    Network and broadcast addresses are left out, as nothing listens there, except in
    /31 and /32 (IPv6: /127, /128) blocks, whose every address is a host (RFC 3021).
    """
    element = str(network)
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


def _target(address: _Address, inventory: Inventory | None, chains: _Chains, via: str | None) -> Target:
    """Combine an address with inventory settings; a typed port beats the inventory's,
    `via` (when given) the inventory's gateways."""
    settings = inventory.settings_for(address.lookup) if inventory else {}
    chain = via if via is not None else str(settings.get("via", ""))
    target = _with_settings(address, settings, None)
    gateway = chains.resolve(chain) if chain else None
    return replace(target, via=_reach(target, gateway)) if gateway is not None else target


def _with_settings(address: _Address, settings: dict[str, str | int], via: Target | None) -> Target:
    port = address.port if address.port is not None else settings.get("port", DEFAULT_PORT)

    def text(key: str) -> str | None:
        value = settings.get(key)
        return None if value is None else str(value)

    return Target(address.name, address.host, int(port), address.path,
                  text("key_file"), text("tls_cert"), text("tls_key"), text("tls_ca"), via)


def _reach(target: Target, gateway: Target) -> Target | None:
    """The gateway to reach `target` through: never itself, so a gateway named among
    the targets is reached the way its chain reaches it."""
    here = _place(target)
    hop: Target | None = gateway
    while hop is not None:
        if _place(hop) == here:
            return hop.via
        hop = hop.via
    return gateway


_Place = tuple[str | None, int, str | None]


def _place(target: Target) -> _Place:
    """Where a target is, whatever it is called: host (any case) and port, or socket path."""
    return (target.host.lower() if target.host else None), target.port, target.path


class _Chains:
    """Gateway chains by their text (`gw1` or `gw1,gw2`), each built once.

    In a chain each gateway is reached through the one before it; the first one the
    way the inventory says (its own `via`), so `via = "gw2"` for a host and
    `via = "gw1"` for gw2 reach the host through gw1, then gw2. A gateway is never
    reached through itself: its own `via` is cut where it names it, so `[defaults]
    via = "gw1"` reaches gw1 directly and everything else through it. Loops are refused.
    """

    def __init__(self, inventory: Inventory | None) -> None:
        self.inventory = inventory
        self.built: dict[str, Target] = {}

    def resolve(self, text: str, trail: tuple[tuple[_Place, str], ...] = ()) -> Target:
        """The last gateway of chain `text`, its `via` leading back through the others."""
        if text in self.built:
            return self.built[text]
        gateway: Target | None = None
        for index, name in enumerate(part.strip() for part in text.split(",")):
            here, own = self.hop(name, text)
            if any(place == _place(here) for place, _ in trail):
                raise ConfigError(f"gateways loop: {' -> '.join([*(n for _, n in trail), name])}", "via")
            trail = (*trail, (_place(here), name))
            route = self.route(own, here) if index == 0 else ""
            if route:
                gateway = self.resolve(route, trail)
            gateway = replace(here, via=gateway)
        assert gateway is not None
        self.built[text] = gateway
        return gateway

    def hop(self, name: str, chain: str) -> tuple[Target, str]:
        """One gateway with its inventory settings (not yet its route), and its own `via`."""
        address = _gateway_address(name, chain)
        settings = self.inventory.settings_for(address.lookup) if self.inventory else {}
        return _with_settings(address, settings, None), str(settings.get("via", ""))

    def route(self, via: str, gateway: Target) -> str:
        """`via` up to where it names `gateway` itself."""
        names = [part.strip() for part in via.split(",")] if via else []
        for index, name in enumerate(names):
            if _place(self.hop(name, via)[0]) == _place(gateway):
                return ",".join(names[:index])
        return via


def _gateway_address(name: str, chain: str) -> _Address:
    """One gateway of a chain: a single host (`gw1`, `gw1:9000`, `[v6]:port`, `unix:/path`)."""
    try:
        if not name:
            raise ConfigError("empty gateway name")
        if name.startswith("@") or cidr_block(name) is not None or _BRACKET_BODIES.search(name) and ":" not in name:
            raise ConfigError("a gateway is one host, not a group, block or range")
        return _address(name)
    except ConfigError as exc:
        raise ConfigError(f"bad gateway {name!r} in {chain!r}: {exc.reason}", "via") from None
