"""Show the hosts a target pattern expands to, without connecting to any of them;
or, with --hub, the agents a hub holds connections to.

    shoal hosts PATTERN [-x PATTERN] [--inventory PATH] [--json | --count | --fold]

Prints one target name per line, in the order `shoal run` would use. `--json` prints
one JSON object per line with the connection settings each target would use:
{"name", "host", "port", "path", "key_file", "tls_cert", "tls_key", "tls_ca", "via"}
(null when unset; `host` is null and `path` set for unix sockets; `via` lists the
gateways the host is reached through, first hop first, `[]` when direct). `--count` prints
how many hosts there are; `--fold` prints them as one folded pattern (`web[01-20]`).
A bad pattern, an unknown group or an inventory error exits 2 with one line naming it.

    shoal hosts --hub [PATH] [PATTERN] [--json | --count | --fold]

lists the agents connected to the hub (PATH, else the config file's `hub`): name,
address, connected since, agent version and last seen, one per line; PATTERN keeps
the names it matches (groups from the inventory too) and `-x PATTERN` drops those it
matches. A lone word after --hub that has no `/` and names no file is
the PATTERN (`shoal hosts --hub 'web[1-4]'` with the hub in the config file). `--json` gives those as `name`, `address`, `kind` (`dialin`
or `direct`), `since`, `version`, `last_seen` (epoch seconds). Exit 1 when a PATTERN
was given and no connected agent matches it (one line says so; `shoal ping --hub`
names each host of a list that is not connected); 255 when the hub is not running.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace

from shoal.protocol.errors import ConfigError

from shoal.controller.escape import escape_text
from shoal.controller.term.display import Display
from shoal.controller.nodeset import NodeSet
from shoal.controller.targets import Target
from shoal.controller.cli.options import add_target_options, targets_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser, optional=True)
    parser.add_argument("--hub", dest="hub_query", nargs="?", const="", metavar="PATH",
                        help="list the agents connected to this hub (default: the config file's hub)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="one JSON object per host, with its settings")
    shown.add_argument("--count", action="store_true", help="print only the number of hosts")
    shown.add_argument("--fold", action="store_true", help="print the hosts as one folded pattern")


def _settings(target: Target) -> dict[str, object]:
    """A target's settings for --json, its gateways by name, first hop first."""
    chain: list[str] = []
    hop = target.via
    while hop is not None:
        chain.insert(0, hop.name)
        hop = hop.via
    return {**asdict(replace(target, via=None)), "via": chain}


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if args.hub_query is not None:
        return _hub_hosts(args, display)
    if args.targets is None:
        raise ConfigError("give a target pattern (or --hub to list a hub's agents)", "hosts")
    targets = targets_from_args(args)
    if args.count:
        display.print(str(len(targets)))
    elif args.fold:
        display.print(str(NodeSet(t.name for t in targets)))
    elif args.json:
        display.out(b"".join(json.dumps(_settings(t)).encode() + b"\n" for t in targets))
    else:
        display.out(b"".join(t.name.encode() + b"\n" for t in targets))
    return 0


def _hub_hosts(args: argparse.Namespace, display: Display) -> int:
    import asyncio
    import os

    from shoal.controller.hub.client import HubAccess
    from shoal.controller.userconfig import load_user_config

    path, pattern = args.hub_query, args.targets
    if path and pattern is None and "/" not in path and not os.path.exists(path):
        path, pattern = "", path  # `--hub web1`: a pattern, for the config file's hub
    path = path or str(load_user_config(args.config).defaults.get("hub", ""))
    if not path:
        raise ConfigError("no hub named (give --hub PATH, or hub in the config file)", "--hub")

    async def listing() -> list[dict[str, object]]:
        access = HubAccess(os.path.expanduser(path))
        try:
            return await (await access.open()).hosts()
        finally:
            await access.close()

    wanted, unwanted = _names(args, pattern), _names(args, args.exclude)  # a bad pattern before connecting
    hosts = asyncio.run(listing())
    hosts = [h for h in hosts if (wanted is None or str(h["name"]).casefold() in wanted)
             and str(h["name"]).casefold() not in (unwanted or ())]
    if args.count:
        display.print(str(len(hosts)))
    elif args.fold:
        display.print(str(NodeSet(str(h["name"]) for h in hosts)))
    elif args.json:
        display.out(b"".join(json.dumps(h).encode() + b"\n" for h in hosts))
    else:
        display.out("".join(_hub_line(h) for h in hosts).encode())
    if wanted is not None and not hosts:  # as `grep` finding nothing: a script can read it from the status
        display.error(f"no agent connected to the hub matches {pattern}")
        return 1
    return 0


def _names(args: argparse.Namespace, pattern: str | None) -> set[str] | None:
    """The names `pattern` stands for, as `shoal run` reads it (inventory groups too); None without one."""
    if not pattern:
        return None
    from shoal.controller.inventory import load_inventory
    from shoal.controller.targets import parse_targets

    targets = parse_targets(pattern, inventory=load_inventory(args.inventory), allow_large=args.yes)
    return {t.name.casefold() for t in targets}


def _hub_line(host: dict[str, object]) -> str:
    import time

    def when(value: object) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value))) if isinstance(value, (int, float)) else "?"

    return (f"{escape_text(str(host['name']))}\t{escape_text(str(host['address']))}\tsince {when(host['since'])}"
            f"\t{escape_text(str(host['version']))}\tlast seen {when(host['last_seen'])}\n")
