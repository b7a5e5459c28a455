"""Find agents on the network: those started with `shoal-agent --discovery`.

    shoal discover [--subnet CIDR | --broadcast | --multicast [GROUP]] [options]

Sends a probe to each local network's broadcast address (the default), to
every address of `--subnet` (IPv4 or IPv6, e.g. `::1/128`; paced at `--rate`
probes per second), or to a multicast group (default 239.255.84.70; for IPv6,
e.g. `ff02::8470:8470%eth0`, the group agents join on every interface, with
the interface to send it on), then lists the agents that answered:
name, address, TCP port, version and key id. It listens for `--timeout`
seconds after the last probe, less when every probed address has answered or
`--expect N` agents have.

With `--key-file` the probes are authenticated and only replies MAC'd with the
same key over this run's nonces are listed, so forged or replayed replies are
dropped (`-v` says which and why). Without a key, agents answer with name,
port and version only, and nothing they say is verified (KEY shows "-").

Exit status: 0 at least one agent answered; 1 none did; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket

from shoal.protocol.discovery import DEFAULT_GROUP, DEFAULT_GROUP6, DEFAULT_PORT
from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey

from shoal.controller.probe import DiscoveryResult, FoundAgent, broadcast_addresses, discover, subnet_addresses
from shoal.controller.term.display import Display
from shoal.controller.escape import escape_text
from shoal.controller.metricsview import host_order_key

__all__ = ["add_arguments", "run", "format_found"]

_HEADER = ("NAME", "ADDRESS", "PORT", "VERSION", "KEY")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--subnet", metavar="CIDR",
                       help="probe every address of an IPv4 or IPv6 block, e.g. 10.0.0.0/24 or ::1/128")
    where.add_argument("--broadcast", action="store_true",
                       help="probe each local network's broadcast address (the default)")
    where.add_argument("--multicast", nargs="?", const=DEFAULT_GROUP, metavar="GROUP",
                       help=f"probe a multicast group (default {DEFAULT_GROUP}); IPv6 ones name the "
                       f"interface, e.g. {DEFAULT_GROUP6}%%eth0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="PORT",
                        help=f"the agents' discovery UDP port (default {DEFAULT_PORT})")
    parser.add_argument("--timeout", dest="wait", type=float, default=2.0, metavar="SECS",
                        help="wait this long for replies after the last probe (default 2)")
    parser.add_argument("--rate", type=float, default=200.0, metavar="N",
                        help="send at most N probes per second (default 200)")
    parser.add_argument("--expect", type=int, metavar="N",
                        help="stop listening as soon as N agents have answered")
    parser.add_argument("--key-file", metavar="PATH", help="authenticate probes and replies with this key")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per agent per line")
    out.add_argument("--targets", action="store_true",
                     help="print only a comma-separated target list for other shoal commands")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="also report dropped replies and why")


def _destinations(args: argparse.Namespace) -> tuple[list[str], bool]:
    """Where to send probes, and whether they go to many hosts at once."""
    if args.subnet:
        return subnet_addresses(args.subnet), False
    if args.multicast:
        return [_multicast_group(args.multicast)], True
    found = broadcast_addresses()
    if not found:
        raise ConfigError("no local IPv4 network with a broadcast address; use --subnet", "--broadcast")
    return found, True


def _multicast_group(text: str) -> str:
    """A multicast group to probe; an IPv6 one with a link-local scope must name its interface."""
    try:
        group = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"bad multicast group {text!r}", "--multicast") from None
    if not group.is_multicast:
        raise ConfigError(f"{text} is not a multicast address", "--multicast")
    if isinstance(group, ipaddress.IPv6Address):
        scope = group.scope_id
        if scope is None and (group.packed[1] & 0x0F) <= 2:
            raise ConfigError(f"{text} is link-local: name the interface to probe on, e.g. "
                              f"{text}%eth0", "--multicast")
        if scope is not None and not _interface_exists(scope):
            raise ConfigError(f"no network interface {scope!r} for {text}", "--multicast")
    return str(group)


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _key(path: str | None) -> SharedKey | None:
    from shoal.hostio.keyfile import load_key_file

    return load_key_file(os.path.expanduser(path)) if path else None


def _ordered(found: list[FoundAgent]) -> list[FoundAgent]:
    return sorted(found, key=lambda f: (host_order_key(f.name), f.address, f.port))


def format_found(found: list[FoundAgent]) -> str:
    """An aligned table, one agent per row."""
    rows = [[f.name, f.address, str(f.port), f.version, f.key_id or "-"] for f in _ordered(found)]
    rows = [[escape_text(cell) for cell in row] for row in rows]  # names and versions come off the network
    widths = [max(len(r[i]) for r in [list(_HEADER), *rows]) for i in range(len(_HEADER))]
    lines = ["  ".join(c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in [list(_HEADER), *rows]]
    return "".join(line + "\n" for line in lines)


def _render(args: argparse.Namespace, found: list[FoundAgent]) -> str:
    if args.targets:
        return ",".join(f.target for f in _ordered(found)) + "\n" if found else ""
    if args.json:
        return "".join(json.dumps({"name": f.name, "address": f.address, "port": f.port, "version": f.version,
                                   "key_id": f.key_id}, separators=(",", ":")) + "\n" for f in _ordered(found))
    return format_found(found)


def _report(display: Display, result: DiscoveryResult, verbose: bool) -> None:
    if verbose:
        for source, reason in result.ignored:
            display.message(f"shoal: ignored a reply from {source}: {reason}")
    n = len(result.found)
    display.message(f"shoal: {n} agent{'s' if n != 1 else ''} answered {result.probes_sent} "
                    f"probe{'s' if result.probes_sent != 1 else ''}")


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "discover")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"port must be 1-65535, got {args.port}", "--port")
    if args.wait < 0:
        raise ConfigError(f"the timeout cannot be negative, got {args.wait:g}", "--timeout")
    destinations, many = _destinations(args)
    key = _key(args.key_file)
    result = asyncio.run(discover(destinations, args.port, key=key, timeout=args.wait, rate=args.rate,
                                  many=many, expect=args.expect))
    display.out(_render(args, result.found).encode("utf-8", "replace"))
    _report(display, result, args.verbose)
    return 0 if result.found else 1
