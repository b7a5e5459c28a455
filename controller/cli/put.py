"""Copy local files (and directories with -r) to every target at once.

    shoal put TARGETS LOCAL... REMOTE_PATH [-r] [-p] [--owner]

REMOTE_PATH is absolute. A trailing `/`, or an existing directory on the host,
means "into that directory", keeping each LOCAL's name; with several LOCALs it must
be a directory. Each file is written to a temporary file beside its destination,
checked against the sha256 of what was sent, and renamed over it only then, so a
host never sees half a file. The mode is kept; -p also keeps modification times,
--owner keeps uid/gid when the agent runs as root. Each local chunk is read once
and sent to every host.

Exit status: 0 when every host has the files; 1 when a host refused or failed the
transfer (no such directory, permission denied, disk full...) or a LOCAL cannot be
read; 255 when a host was unreachable or its connection was lost; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.fleet import FleetResult
from shoal.controller.cli.options import (
    add_connect_options,
    add_target_options,
    add_user_option,
    connect_options_from_args,
    targets_from_args,
)
from shoal.controller.transfer import PutOptions, put_fleet
from shoal.controller.transferplan import plan_put
from shoal.controller.term.transferprogress import TransferProgress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("paths", nargs="+", metavar="LOCAL... REMOTE_PATH",
                        help="local files or directories, then the absolute path on the hosts")
    add_transfer_flags(parser)
    g = parser.add_argument_group("put")
    g.add_argument("-r", "--recursive", action="store_true",
                   help="copy directories and their contents (symlinks and special files are skipped)")
    g.add_argument("--owner", action="store_true", help="keep owner and group (only when the agent runs as root)")
    add_connect_options(parser)


def add_transfer_flags(parser: argparse.ArgumentParser) -> None:
    """Flags put and get spell the same way."""
    g = parser.add_argument_group("transfer")
    g.add_argument("-p", "--preserve", action="store_true", help="keep modification times (modes are always kept)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or summary; errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")
    add_user_option(g)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    paths = list(args.paths) + list(words)
    if len(paths) < 2:
        raise ConfigError("give at least one LOCAL path and the REMOTE_PATH", "put")
    *sources, remote = paths
    if not remote.startswith("/"):
        raise ConfigError(f"remote path must be absolute: {remote}", "put")
    targets = targets_from_args(args)
    plan = plan_put(sources, remote, args.recursive,
                    skipped=lambda path, why: display.warning(f"skipping {path}: {why}"))
    progress = TransferProgress(display, len(targets))
    try:
        result = asyncio.run(put_fleet(
            targets, connect_options_from_args(args), plan, remote,
            options=PutOptions(preserve=args.preserve, owner=args.owner, user=args.user), fanout=args.fanout,
            progress=progress))
    finally:
        progress.close()
    report(display, result, len(targets) > 1)
    return result.status


def report(display: Display, result: FleetResult, summary: bool) -> None:
    """One `host: reason` line per failed host, then the timed summary for several hosts."""
    from shoal.controller.term.summary import summary_line

    for r in sorted(result.results, key=lambda r: r.host):
        if r.error:
            display.error(f"{r.host}: {r.error}")
    if summary:
        display.message(summary_line(result.results, result.elapsed))
