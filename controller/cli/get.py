"""Fetch a file from every target into a directory per host.

    shoal get TARGETS REMOTE_PATH LOCAL_DIR [-p]

Each host's copy lands in LOCAL_DIR/<host>/<basename of REMOTE_PATH>, so hosts
never overwrite each other (`/` and `%` in host names are escaped as %2F and %25).
A copy is written beside its final name and renamed into place only after its
sha256 matched the agent's; it keeps the remote mode, and -p keeps the mtime.

Exit status: 0 when every host's file arrived; 1 when a host refused or failed
(no such file, is a directory, permission denied...); 255 when a host was
unreachable or its connection was lost; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from shoal.protocol.errors import ConfigError

from shoal.controller.cli.put import add_transfer_flags, report
from shoal.controller.term.display import Display
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, targets_from_args
from shoal.controller.transfer import get_fleet, host_directory_name
from shoal.controller.term.transferprogress import TransferProgress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("remote", metavar="REMOTE_PATH", help="absolute path of a file on the hosts")
    parser.add_argument("local_dir", metavar="LOCAL_DIR", help="directory receiving one subdirectory per host")
    add_transfer_flags(parser)
    add_connect_options(parser)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "get")
    if not args.remote.startswith("/"):
        raise ConfigError(f"remote path must be absolute: {args.remote}", "get")
    if os.path.exists(args.local_dir) and not os.path.isdir(args.local_dir):
        raise ConfigError(f"not a directory: {args.local_dir}", "get")
    targets = targets_from_args(args)
    progress = TransferProgress(display, len(targets))
    try:
        result = asyncio.run(get_fleet(
            targets, connect_options_from_args(args), args.remote, args.local_dir,
            preserve=args.preserve, fanout=args.fanout, progress=progress, user=args.user))
    finally:
        progress.close()
    if args.verbose:
        name = os.path.basename(args.remote.rstrip("/"))
        for r in sorted(result.results, key=lambda r: r.host):
            if r.ok:
                display.message(f"{r.host}: {os.path.join(args.local_dir, host_directory_name(r.host), name)}")
    report(display, result, len(targets) > 1)
    return result.status
