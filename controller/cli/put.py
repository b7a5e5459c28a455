"""Copy local files (and directories with -r) to every target at once.

    shoal put TARGETS LOCAL... REMOTE_PATH [-r [--delete] [--checksum] [--dry-run] [--mkdir]] [-p] [--owner]

REMOTE_PATH is absolute. A trailing `/`, or an existing directory on the host,
means "into that directory", keeping each LOCAL's name; with several LOCALs it must
be a directory.

With -r and a directory among the LOCALs, REMOTE_PATH is a directory (created if
missing; --mkdir creates its parents too) and rsync's trailing-slash rule applies:
`site/` copies the contents of site into it, `site` makes REMOTE_PATH/site, so
running the same put again converges. Files already there are not sent: with -p
when size and mtime match, with --checksum when the sha256 the agent computes
matches. --delete removes what the host has below the copy and the source lacks;
--dry-run prints what would be sent and deleted per host and changes nothing. A
source path the host holds as a symlink is refused: nothing is written through
links. Each file is written to a temporary file beside its destination,
checked against the sha256 of what was sent, and renamed over it only then, so a
host never sees half a file. The mode is kept; -p also keeps modification times,
--owner keeps uid/gid when the agent runs as root. Each local chunk is read once
and sent to every host; directories and small files go many to a request. With
-u NAME every step on the hosts, the listing and --delete included, is done with
NAME's rights.

Exit status: 0 when every host has the files; 1 when a host refused or failed the
transfer (no such directory, permission denied, disk full...) or a LOCAL cannot be
read; 255 when a host was unreachable or its connection was lost; 2 for bad usage.

--serial, --max-fail and --canary roll the hosts in waves as for `run`; hosts that
share one local read (a --fanout group) start together, so the budget is checked
before each group. A run they stopped exits with the largest status among the
hosts that ran, or 1 when all of those succeeded; skipped hosts are listed as
`host: skipped`.
"""

from __future__ import annotations

import argparse

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.fleet import FleetResult
from shoal.controller.cli.options import (
    add_connect_options,
    add_rolling_options,
    add_target_options,
    add_user_option,
    connect_options_from_args,
    run_with,
    targets_from_args,
    wave_policy_from_args,
)
from shoal.controller.put import PutOptions, put_fleet
from shoal.controller.transferplan import plan_put
from shoal.controller.targets import Target
from shoal.controller.term.transferprogress import TransferProgress, format_bytes
from shoal.controller.transferplan import PutPlan
from shoal.controller.tree import HostStats
from shoal.controller.treesync import SyncOptions, sync_fleet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("paths", nargs="+", metavar="LOCAL... REMOTE_PATH",
                        help="local files or directories, then the absolute path on the hosts")
    add_transfer_flags(parser)
    g = parser.add_argument_group("put")
    g.add_argument("-r", "--recursive", action="store_true",
                   help="copy directories, rsync's way: DIR/ sends the contents, DIR makes REMOTE_PATH/DIR "
                        "(symlinks and special files are skipped)")
    g.add_argument("--owner", action="store_true", help="keep owner and group (only when the agent runs as root)")
    g.add_argument("--checksum", action="store_true",
                   help="with -r: skip files whose sha256 matches the host's copy (else -p: size and mtime)")
    g.add_argument("--delete", action="store_true", help="with -r: remove what the host has that the source lacks")
    g.add_argument("-n", "--dry-run", action="store_true",
                   help="with -r: print what would be sent and deleted per host; change nothing")
    g.add_argument("--mkdir", action="store_true", help="with -r: create REMOTE_PATH's missing parents too")
    add_connect_options(parser)
    add_rolling_options(parser)


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
    sync_flags = [flag for flag, on in (("--checksum", args.checksum), ("--delete", args.delete),
                                         ("--dry-run", args.dry_run), ("--mkdir", args.mkdir)) if on]
    if sync_flags and not args.recursive:
        raise ConfigError(f"{sync_flags[0]} needs -r", "put")
    targets = targets_from_args(args)
    policy = wave_policy_from_args(args)
    plan = plan_put(sources, remote, args.recursive,
                    skipped=lambda path, why: display.warning(f"skipping {path}: {why}"))
    if args.recursive and any(item.is_dir for item in plan.items):
        return run_sync(args, targets, plan, sources, remote, display)
    progress = TransferProgress(display, len(targets))
    connect = connect_options_from_args(args)
    try:
        result = run_with(connect, put_fleet(
            targets, connect, plan, remote,
            options=PutOptions(preserve=args.preserve, owner=args.owner, user=args.user), fanout=args.fanout,
            progress=progress, policy=policy, on_wave=lambda n, count, hosts: progress.set_wave(n, count)))
    finally:
        progress.close()
    report(display, result, len(targets) > 1)
    return result.status


def run_sync(args: argparse.Namespace, targets: list[Target], plan: PutPlan, sources: list[str], remote: str,
             display: Display) -> int:
    """A recursive put: converge each host's copy, then say per host what moved."""
    options = SyncOptions(preserve=args.preserve, owner=args.owner, checksum=args.checksum,
                          delete=args.delete, dry_run=args.dry_run, mkdir=args.mkdir, user=args.user)
    progress = TransferProgress(display, len(targets))
    connect = connect_options_from_args(args)
    try:
        outcome = run_with(connect, sync_fleet(targets, connect, plan, sources, remote,
                                               options=options, fanout=args.fanout, progress=progress))
    finally:
        progress.close()
    report_stats(display, outcome.stats, args.dry_run)
    report(display, outcome.fleet, len(targets) > 1)
    return outcome.fleet.status


def report_stats(display: Display, stats: dict[str, HostStats], dry_run: bool) -> None:
    """Per host: the paths a dry run would touch (stdout), or counts of what moved (stderr)."""
    for host in sorted(stats):
        s = stats[host]
        if dry_run:
            for path in s.would_send:
                display.print(f"{host}: would send {path}")
            for path in s.would_delete:
                display.print(f"{host}: would delete {path}")
        else:
            deleted = f", {s.deleted} deleted" if s.deleted else ""
            display.message(f"{host}: {s.sent} sent, {s.skipped} skipped, {format_bytes(s.bytes)}{deleted}")


def report(display: Display, result: FleetResult, summary: bool) -> None:
    """One `host: reason` line per failed host, then the timed summary for several hosts."""
    from shoal.controller.term.summary import summary_line

    for r in sorted(result.results, key=lambda r: r.host):
        if r.error:
            display.error(f"{r.host}: {r.error}")
    if summary:
        display.message(summary_line(result.results, result.elapsed))
