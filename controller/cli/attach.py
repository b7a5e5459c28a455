"""Follow a job: replay the output its agent kept, then stream it live until the end.

    shoal attach [options] TARGETS JOB

Output goes through the same modes as `shoal run` (stream, gather, json, raw,
--outdir), and the exit status is the job's own (128+N when a signal ended it),
as if the command had been run in the foreground. A job that already ended
replays its kept output and exits with its status at once. Ctrl-C stops
following and ends the job (as for `shoal run`); to leave it running, kill the
`shoal attach` process instead, or close its terminal.

Exit status: the job's status, the largest across hosts; 255 when a host was
unreachable or has no such job for this key (`unknown_job`); 2 bad usage.
"""

from __future__ import annotations

import argparse

from shoal.protocol.errors import ConfigError

from shoal.controller.remote import Command
from shoal.controller.term.display import Display
from shoal.controller.cli.options import (
    add_connect_options,
    add_output_options,
    add_target_options,
    connect_options_from_args,
    run_with,
    targets_from_args,
)
from shoal.controller.cli.run import run_fleet

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("job", metavar="JOB", help="the job id `shoal run --detach` printed (shoal jobs lists them)")
    add_connect_options(parser)
    add_output_options(parser)
    parser.set_defaults(serial=None, serial_wait=0.0, max_fail=None, canary=0)  # one job: no rolling waves


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "attach")
    options = connect_options_from_args(args)
    return run_with(options, run_fleet(targets_from_args(args), Command(attach=args.job), options, args, display, False))
