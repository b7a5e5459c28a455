"""Show the hosts a target pattern expands to, without connecting to any of them.

    shoal hosts PATTERN [-x PATTERN] [--inventory PATH] [--json | --count | --fold]

Prints one target name per line, in the order `shoal run` would use. `--json` prints
one JSON object per line with the connection settings each target would use:
{"name", "host", "port", "path", "key_file", "tls_cert", "tls_key", "tls_ca", "via"}
(null when unset; `host` is null and `path` set for unix sockets; `via` lists the
gateways the host is reached through, first hop first, `[]` when direct). `--count` prints
how many hosts there are; `--fold` prints them as one folded pattern (`web[01-20]`).
A bad pattern, an unknown group or an inventory error exits 2 with one line naming it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace

from shoal.controller.term.display import Display
from shoal.controller.nodeset import NodeSet
from shoal.controller.targets import Target
from shoal.controller.cli.options import add_target_options, targets_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
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
