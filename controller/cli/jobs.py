"""List the jobs (detached commands) each host's agent keeps.

    shoal jobs TARGETS [--json]

One line per job: host, job id, state (`running`, or once it ended its outcome:
ok, failed, signal, timed_out, idle_timeout, cancelled), exit status, user, start
time, output size (bytes the job printed; with `kept` when the agent kept less,
`[limits] job_output_size`) and command. A key sees only the jobs it started,
unless it is an `allow = "all"` key. `--json` prints one object per job per line,
the agent's fields plus `host` and `outcome` (null while running); a host that
could not answer gets `{"host", "error"}`.

Exit status: 0 every host answered; 255 a host was unreachable; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.jobs import format_jobs, gather_jobs
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, targets_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per job per line")
    add_connect_options(parser)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "jobs")
    answers = asyncio.run(gather_jobs(targets_from_args(args), connect_options_from_args(args), args.fanout))
    display.out(format_jobs(answers, as_json=args.json).encode("utf-8", "replace"))
    return max((a.status for a in answers), default=0)
