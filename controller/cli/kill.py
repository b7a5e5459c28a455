"""End a job's whole process tree on every host.

    shoal kill TARGETS JOB [--signal SIG]

The agent sends SIG (default TERM) to every process of the job's tree (its
descendants, its process group and whatever carries its marker) and SIGKILL to
what is left after its kill grace (`[limits] kill_grace`). Prints `HOST: killed
job JOB (N processes)` per host.

Exit status: 0 every host signalled the job; 255 unreachable, or no such job
for this key (`unknown_job`); 2 bad usage.
"""

from __future__ import annotations

import argparse

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.jobs import kill_jobs, kill_report, parse_signal
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, run_with, targets_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("job", metavar="JOB", help="the job id (shoal jobs lists them)")
    parser.add_argument("-s", "--signal", default="TERM", metavar="SIG",
                        help="first signal to the tree: a name (TERM, INT, KILL, SIGHUP) or number (default TERM)")
    add_connect_options(parser)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "kill")
    sig = parse_signal(args.signal)
    options = connect_options_from_args(args)
    answers = run_with(options, kill_jobs(targets_from_args(args), options, args.fanout, args.job, sig))
    for a in answers:
        if a.error is not None:
            display.error(f"{a.host}: {kill_report(a, args.job)}")
        else:
            display.out(f"{a.host}: {kill_report(a, args.job)}\n".encode("utf-8", "replace"))
    return max((a.status for a in answers), default=0)
