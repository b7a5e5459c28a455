"""Run a file of commands on many hosts, in order, one connection per host.

    shoal batch TARGETS FILE [options]

FILE (`-` for standard input) holds one command per line for /bin/sh; blank
lines and `#` comments are skipped and a trailing backslash continues a line.
Each host runs the commands in order, hosts in parallel up to --fanout. A host
stops at its first failing command (its later ones are "skipped") unless
--keep-going. A table on stderr ends the run: per command, the hosts that
succeeded, failed and were skipped.

Exit status: the largest per-host status (255 unreachable or lost), 2 for a bad
batch file or options, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .batch import BatchLine, BatchReport, BatchRunner, read_batch, summary_table
from .client import Command
from .display import Display
from .fleet import ConnectOptions, Handler
from .interrupt import run_interruptible
from .options import add_connect_options, add_target_options, connect_options_from_args, parse_env, targets_from_args
from .output import GatherHandler, JsonHandler, StreamHandler
from .targets import Target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("file", metavar="FILE", help="commands, one per line; - reads standard input")
    g = parser.add_argument_group("batch")
    g.add_argument("-k", "--keep-going", action="store_true",
                   help="run every command on every host even after one fails")
    g.add_argument("-t", "--timeout", type=float, metavar="SECS",
                   help="kill each command's process tree after SECS (per command)")
    g.add_argument("--kill-grace", type=float, metavar="SECS", help="seconds between SIGTERM and SIGKILL")
    g.add_argument("--cwd", metavar="DIR", help="working directory on the hosts")
    g.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="environment variable for every command (repeatable)")
    add_connect_options(parser)
    o = parser.add_argument_group("output")
    o.add_argument("-o", "--output", choices=("stream", "gather", "json"), default="stream",
                   help="stream prefixed lines as they come (default), gather identical output per command, "
                        "or JSON events (as `run -o json`, each with its 1-based `command`)")
    o.add_argument("-q", "--quiet", action="store_true", help="no summary table; errors only")
    o.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    lines = read_batch(args.file, sys.stdin.buffer)
    targets = targets_from_args(args)
    base = Command(env=parse_env(args.env), cwd=args.cwd, timeout=args.timeout, kill_grace=args.kill_grace)
    commands = [replace(base, shell=line.text) for line in lines]
    return asyncio.run(run_batch(targets, lines, commands, connect_options_from_args(args), args, display))


async def run_batch(targets: list[Target], lines: list[BatchLine], commands: list[Command],
                    options: ConnectOptions, args: argparse.Namespace, display: Display) -> int:
    """Run the batch with Ctrl-C handling: first cancels and starts nothing more, second stops waiting."""
    runner = BatchRunner(targets, options, fanout=args.fanout, keep_going=args.keep_going)
    handler_for, finish = _handlers(args.output, display, [t.name for t in targets], lines)
    report, interrupts = await run_interruptible(runner.run(lines, commands, handler_for), display,
                                                 lambda: runner.cancel(args.kill_grace), runner.kill)
    if report is None:
        return 130
    finish()
    _report(display, report)
    return 130 if interrupts else report.status


def _handlers(mode: str, display: Display, hosts: list[str],
              lines: list[BatchLine]) -> tuple[Callable[[int], Handler], Callable[[], None]]:
    """Stream: one handler for all commands. Gather and JSON: one per command."""
    if mode == "stream":
        stream = StreamHandler(display, hosts)
        return (lambda i: stream), stream.close
    if mode == "json":
        numbered = [CommandJsonHandler(display, i + 1) for i in range(len(lines))]

        def summaries() -> None:
            for handler in numbered:
                handler.close()

        return numbered.__getitem__, summaries
    gatherers = [GatherHandler(display) for _ in lines]

    def finish() -> None:
        for i, (line, gatherer) in enumerate(zip(lines, gatherers)):
            display.print(display.paint(f"=== {i + 1}: {line.text}", "1"))
            gatherer.close()

    return gatherers.__getitem__, finish


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

