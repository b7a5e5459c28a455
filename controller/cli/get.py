"""Fetch a file from every target into a directory per host.

    shoal get TARGETS REMOTE_PATH LOCAL_DIR [-r] [-p]

Each host's copy lands in LOCAL_DIR/<host>/<basename of REMOTE_PATH>, so hosts
never overwrite each other (`/` and `%` in host names are escaped as %2F and %25).
A copy is written beside its final name and renamed into place only after its
sha256 matched the agent's; it keeps the remote mode, and -p keeps the mtime.

With -r REMOTE_PATH is a directory, fetched the rsync way: `/srv/www` into
LOCAL_DIR/<host>/www, `/srv/www/` into LOCAL_DIR/<host>. Every file is atomic and
checked as above; symlinks arrive as links (never followed), empty directories
are kept, FIFOs and devices are left out. With -u NAME the tree is listed and
read with NAME's rights: what NAME cannot read is not fetched.

Exit status: 0 when every host's file arrived; 1 when a host refused or failed
(no such file, is a directory, permission denied...); 255 when a host was
unreachable or its connection was lost; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os

from shoal.protocol.errors import ConfigError

from shoal.controller.cli.put import add_transfer_flags, report, report_stats
from shoal.controller.targets import Target
from shoal.controller.treeget import get_tree_fleet
from shoal.controller.term.display import Display
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, run_with, targets_from_args
from shoal.controller.get import get_fleet, host_directory_name
from shoal.controller.term.transferprogress import TransferProgress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("remote", metavar="REMOTE_PATH", help="absolute path of a file on the hosts")
    parser.add_argument("local_dir", metavar="LOCAL_DIR", help="directory receiving one subdirectory per host")
    add_transfer_flags(parser)
    parser.add_argument_group("get").add_argument("-r", "--recursive", action="store_true",
                                                  help="fetch a directory tree")
    add_connect_options(parser)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "get")
    if not args.remote.startswith("/"):
        raise ConfigError(f"remote path must be absolute: {args.remote}", "get")
    if os.path.exists(args.local_dir) and not os.path.isdir(args.local_dir):
        raise ConfigError(f"not a directory: {args.local_dir}", "get")
    targets = targets_from_args(args)
    if args.recursive:
        return run_tree(args, targets, display)
    progress = TransferProgress(display, len(targets))
    connect = connect_options_from_args(args)
    try:
        result = run_with(connect, get_fleet(
            targets, connect, args.remote, args.local_dir,
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


def run_tree(args: argparse.Namespace, targets: list[Target], display: Display) -> int:
    """get -r: one tree per host, then what each host sent."""
    progress = TransferProgress(display, len(targets))
    connect = connect_options_from_args(args)
    try:
        outcome = run_with(connect, get_tree_fleet(targets, connect, args.remote, args.local_dir,
                                                   preserve=args.preserve, fanout=args.fanout, progress=progress,
                                                   user=args.user))
    finally:
        progress.close()
    report_stats(display, outcome.stats, False)
    report(display, outcome.fleet, len(targets) > 1)
    return outcome.fleet.status
