"""Run a file of commands on many hosts, in order, one connection per host.

    shoal batch TARGETS FILE [options]

FILE (`-` for standard input) holds one command per line; blank lines and `#`
comments are skipped and a trailing backslash continues a line. Each command
runs in its own /bin/sh -c, so `cd`, variables and `set` do not carry over to
the next line: write `cd /srv && make` on one line, or use --cwd.
Each host runs the commands in order, hosts in parallel up to --fanout. A host
stops at its first failing command (its later ones are "skipped") unless
--keep-going. A table on stderr ends the run: per command, the hosts that
succeeded, failed and were skipped.

--outdir DIR also keeps each command's per-host output in files,
DIR/NN-SLUG/HOST.out and .err: NN numbers the commands in file order (at
least two digits), SLUG is the command text cut to letters, digits, `.`, `_`
and `-` (`test -z "$X"` -> 01-test-z-X), HOST as for `run --outdir`.
--failed-only shows, for each command, only the output of hosts where it failed
(non-zero, unreachable, lost, timed out), each host's at once when its command
ends; the table still counts every host.

--serial, --max-fail and --canary roll the hosts in waves as for `run`; a host
fails when any of its commands does. Hosts a stopped run never started are
skipped for every command (the table's SKIPPED column); with -o json or
--failed-only they are reported with command 1 (JSON `wave` events also carry
`"command": 1`).

Exit status: the largest per-host status (255 unreachable or lost), 2 for a bad
batch file or options, 130 when interrupted. A run that --max-fail or --canary
stopped exits with the largest status among the hosts that ran, or 1 when all of
those succeeded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shoal.controller.batch import BatchLine, BatchReport, BatchRunner, read_batch, summary_table
from shoal.controller.term.batchoutput import FailedOutputFilter, command_directories
from shoal.controller.remote import Command
from shoal.controller.term.display import Display
from shoal.controller.fdlimit import raise_open_files_limit
from shoal.controller.fleet import ConnectOptions, Handler
from shoal.controller.term.interrupt import run_interruptible
from shoal.controller.cli.options import (
    add_connect_options,
    add_idle_timeout_option,
    add_outdir_failed_options,
    add_rolling_options,
    add_target_options,
    add_user_option,
    connect_options_from_args,
    run_with,
    parse_env,
    targets_from_args,
    wave_policy_from_args,
)
from shoal.controller.term.outdir import OutdirTee
from shoal.controller.term.output import GatherHandler, JsonHandler, StreamHandler
from shoal.controller.targets import Target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("file", metavar="FILE", help="commands, one per line; - reads standard input")
    g = parser.add_argument_group("batch")
    g.add_argument("-k", "--keep-going", action="store_true",
                   help="run every command on every host even after one fails")
    g.add_argument("-t", "--timeout", type=float, metavar="SECS",
                   help="kill each command's process tree after SECS (per command)")
    add_idle_timeout_option(g)
    g.add_argument("--kill-grace", type=float, metavar="SECS", help="seconds between SIGTERM and SIGKILL")
    g.add_argument("--cwd", metavar="DIR", help="working directory on the hosts")
    g.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="environment variable for every command (repeatable)")
    add_user_option(g)
    add_connect_options(parser)
    add_rolling_options(parser)
    o = parser.add_argument_group("output")
    o.add_argument("-o", "--output", choices=("stream", "gather", "json"), default="stream",
                   help="stream prefixed lines as they come (default), gather identical output per command, "
                        "or JSON events (as `run -o json`, each with its 1-based `command`)")
    add_outdir_failed_options(o, outdir_help="also write each command's output per host to "
                                             "DIR/NN-COMMAND/HOST.out and HOST.err (NN: its number in FILE)",
                              failed_only_help="per command, show output only of hosts where it failed, "
                                               "each when it ends (the table still counts all)")
    o.add_argument("-q", "--quiet", action="store_true", help="no summary table; errors only")
    o.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    lines = read_batch(args.file, sys.stdin.buffer)
    targets = targets_from_args(args)
    base = Command(env=parse_env(args.env), cwd=args.cwd, timeout=args.timeout, kill_grace=args.kill_grace,
                   idle_timeout=args.idle_timeout, user=args.user)
    commands = [replace(base, shell=line.text) for line in lines]
    options = connect_options_from_args(args)
    return run_with(options, run_batch(targets, lines, commands, options, args, display))


async def run_batch(targets: list[Target], lines: list[BatchLine], commands: list[Command],
                    options: ConnectOptions, args: argparse.Namespace, display: Display) -> int:
    """Run the batch with Ctrl-C handling: first cancels and starts nothing more, second stops waiting."""
    from shoal.controller.term.waveview import wave_reporter

    policy = wave_policy_from_args(args)
    raise_open_files_limit(min(len(targets), args.fanout))
    runner = BatchRunner(targets, options, fanout=args.fanout, keep_going=args.keep_going)
    handlers, finish = _handlers(args, display, [t.name for t in targets], lines)
    batch = runner.run(lines, commands, handlers.__getitem__, policy=policy,
                       on_wave=wave_reporter(display, handlers[0]))
    report, interrupts = await run_interruptible(batch, display,
                                                 lambda: runner.cancel(args.kill_grace), runner.kill)
    if report is None:
        return 130
    finish()
    _report(display, report)
    return 130 if interrupts else report.status


def _handlers(args: argparse.Namespace, display: Display, hosts: list[str],
              lines: list[BatchLine]) -> tuple[list[Handler], Callable[[], None]]:
    """One handler per command: the mode's, inside --failed-only's filter, inside --outdir's tee.

    The tee sits outermost so the files get every host's output, shown or not.
    """
    chain: list[Any] = _mode_handlers(args.output, display, hosts, len(lines))
    filters = [FailedOutputFilter(h) for h in chain] if args.failed_only else []
    if filters:
        chain = list(filters)
    if args.outdir is not None:
        chain = [OutdirTee(h, d) for h, d in zip(chain, command_directories(args.outdir, lines))]

    def finish() -> None:
        for i, (line, handler) in enumerate(zip(lines, chain)):
            if args.output == "gather" and (not filters or filters[i].shown):
                display.print(f"=== {i + 1}: {line.text}", style="1")
            handler.close()

    return chain, finish


def _mode_handlers(mode: str, display: Display, hosts: list[str], count: int) -> list[Any]:
    """Stream: one handler shared by every command (closing it does nothing). Gather and JSON: one each."""
    if mode == "stream":
        return [StreamHandler(display, hosts)] * count
    if mode == "json":
        return [CommandJsonHandler(display, i + 1) for i in range(count)]
    return [GatherHandler(display) for _ in range(count)]


class CommandJsonHandler(JsonHandler):
    """JSON events of one batch command: every object also carries `command` (1-based)."""

    def __init__(self, display: Display, command: int) -> None:
        super().__init__(display)
        self.command = command

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        super().emit(event, {"command": self.command, **fields})


def _report(display: Display, report: BatchReport) -> None:
    """The per-command table on stderr, unless --quiet."""
    for row in summary_table(report):
        display.message(row)

