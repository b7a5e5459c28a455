"""Refresh a metrics table in place until Ctrl-C.

    shoal top TARGETS [-d SECS] [-n N] [--sort cpu|mem|load|disk]

The options are top(1)'s: every SECS seconds (-d, default 2) each host is asked for a snapshot over a
connection kept open between refreshes; a host that cannot be reached is shown
as such and retried on the next refresh. On a terminal the table is redrawn in
place; otherwise one table per refresh is printed, separated by a blank line,
so `shoal top ... > log` records a history.

Exit status: 0 after Ctrl-C or -n N refreshes; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Awaitable

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.metricsview import SORT_KEYS, format_table
from shoal.controller.monitor import FleetMonitor, MetricsRound
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, targets_from_args

__all__ = ["add_arguments", "run", "frame"]

# Cursor home, then clear the screen: the redraw replaces the last table.
_REDRAW = "\x1b[H\x1b[2J"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    g = parser.add_argument_group("display")
    g.add_argument("-d", "--delay", dest="interval", type=float, default=2.0, metavar="SECS",
                   help="seconds between refreshes, as top -d (default 2)")
    g.add_argument("-n", "--iterations", dest="count", type=int, metavar="N",
                   help="stop after N refreshes, as top -n (default: until Ctrl-C)")
    g.add_argument("--sort", choices=tuple(SORT_KEYS), help="rows by this metric, highest first")
    add_connect_options(parser)


def frame(result: MetricsRound, interval: float, sort: str | None, now: float | None = None) -> str:
    """One refresh: a title line with the time and counts, then the table."""
    hosts = len(result.snapshots)
    down = len(result.unreachable)
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    title = f"shoal top - {stamp} - {hosts} host{'s' if hosts != 1 else ''}"
    title += f", {down} unreachable" if down else ""
    title += f" - every {interval:g}s, Ctrl-C to quit\n"
    return title + format_table(result.for_table(), sort=sort)


async def _unless_stopped(round_: Awaitable[MetricsRound], stop: asyncio.Event) -> MetricsRound | None:
    """The round's result, or None when Ctrl-C came first (the round is abandoned)."""
    task = asyncio.ensure_future(round_)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def _refresh_loop(monitor: FleetMonitor, args: argparse.Namespace, display: Display,
                        stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    done = 0
    while not stop.is_set() and (args.count is None or done < args.count):
        started = loop.time()
        result = await _unless_stopped(monitor.metrics(), stop)
        if result is None:
            break
        text = frame(result, args.interval, args.sort)
        display.out((_REDRAW + text if display.stdout_tty else "\n" + text if done else text).encode())
        done += 1
        if args.count is not None and done >= args.count:
            break
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, started + args.interval - loop.time()))
        except asyncio.TimeoutError:
            pass


async def _top(args: argparse.Namespace, display: Display) -> None:
    options = connect_options_from_args(args)
    monitor = FleetMonitor(targets_from_args(args), options, args.fanout,
                           request_timeout=max(args.interval, args.connect_timeout))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        async with options, monitor:
            await _refresh_loop(monitor, args, display, stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "top")
    if not args.interval > 0:
        raise ConfigError(f"the interval must be positive, got {args.interval:g}", "--delay")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"-n must be at least 1, got {args.count}", "--iterations")
    asyncio.run(_top(args, display))
    return 0
