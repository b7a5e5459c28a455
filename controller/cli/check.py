"""Health check with Nagios/Icinga exit codes, for a monitoring system or cron.

    shoal check TARGETS --warn 'cpu>80,disk>85' --crit 'disk>95,mem>95'

Metrics: cpu, mem, swap, disk (the fullest filesystem), load1, load5, load15,
procs; operators >, >=, <, <=. The first line is the plugin status line,
`SHOAL STATE - problems | perfdata`; one line per host follows, worst first.

Perfdata names every checked metric of every host ("U" when unknown), so
graphs keep their series; what does not fit the 8 KiB first line follows the
long output after a "|".

Exit status (the plugin convention): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
An unreachable host is CRITICAL, or UNKNOWN with --unreachable-unknown, and so
is every host when the hub (--hub) is not running, on one status line. Any
usage error (a bad option, threshold or target pattern) is UNKNOWN (3).
"""

from __future__ import annotations

import argparse

from shoal.protocol.errors import ConfigError, ShoalConnectionError, ShoalTimeoutError

from shoal.controller.checks import CheckResult, State, evaluate, parse_thresholds
from shoal.controller.term.display import Display
from shoal.controller.monitor import gather_metrics
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, run_with, targets_from_args

__all__ = ["USAGE_STATUS", "add_arguments", "run", "report"]

#: What a usage error exits with: UNKNOWN, since 2 would page someone as CRITICAL.
USAGE_STATUS = int(State.UNKNOWN)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    g = parser.add_argument_group("thresholds")
    g.add_argument("-w", "--warn", "--warning", dest="warn", default="", metavar="LIST",
                   help="WARNING when any holds, e.g. 'cpu>80,disk>85'")
    g.add_argument("-c", "--crit", "--critical", dest="crit", default="", metavar="LIST",
                   help="CRITICAL when any holds, e.g. 'disk>95,mem>95'")
    g.add_argument("--unreachable-unknown", action="store_true",
                   help="report an unreachable host as UNKNOWN (3) instead of CRITICAL (2)")
    add_connect_options(parser)


def report(display: Display, result: CheckResult) -> int:
    """Print the status line and the per-host long output; return the exit status."""
    for line in result.output():
        display.print(line)
    return int(result.status)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    try:
        if words:
            raise ConfigError(f"unexpected arguments: {' '.join(words)}", "check")
        warn = parse_thresholds(args.warn, "--warn")
        crit = parse_thresholds(args.crit, "--crit")
        if not warn and not crit:
            raise ConfigError("give at least one threshold with --warn or --crit", "check")
        targets = targets_from_args(args)
        options = connect_options_from_args(args)
    except ConfigError as exc:
        display.print(f"SHOAL UNKNOWN - {' '.join(str(exc).split())}".replace("|", "/"))
        return int(State.UNKNOWN)
    unreachable = State.UNKNOWN if args.unreachable_unknown else State.CRITICAL
    try:
        snapshots = run_with(options, gather_metrics(targets, options, args.fanout)).snapshots
    except (ShoalConnectionError, ShoalTimeoutError) as exc:  # the hub (--hub), not a host: every host unreachable
        display.print(f"SHOAL {unreachable.name} - {' '.join(str(exc).split())}".replace("|", "/"))
        return int(unreachable)
    return report(display, evaluate(snapshots, warn, crit, unreachable_state=unreachable))
