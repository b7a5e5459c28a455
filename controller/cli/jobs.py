"""List the jobs (detached commands) each host's agent keeps.

    shoal jobs TARGETS [--json]

One line per job: host, job id, state (running, exited, killed), exit status, user,
start time, output size (bytes the job printed; with `kept` when the agent kept
less, `[limits] job_output_size`) and command. A key sees only the jobs it started,
unless it is an `allow = "all"` key. `--json` prints one object per job per line,
the agent's fields plus `host`; a host that could not answer gets `{"host", "error"}`.

Exit status: 0 every host answered; 255 a host was unreachable; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import time

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.jobs import JobsAnswer, gather_jobs
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, targets_from_args

__all__ = ["add_arguments", "run", "format_jobs"]


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


def format_jobs(answers: list[JobsAnswer], *, as_json: bool = False) -> str:
    """The listing: a table (or JSON lines), hosts in target order, jobs oldest first."""
    if as_json:
        lines = [json.dumps({"host": a.host, "error": a.error}) for a in answers if a.error is not None]
        lines += [json.dumps({"host": a.host, **job}) for a in answers for job in a.jobs]
        return "".join(line + "\n" for line in lines)
    rows = [("HOST", "JOB", "STATE", "STATUS", "USER", "STARTED", "OUTPUT", "COMMAND")]
    for a in answers:
        if a.error is not None:
            rows.append((a.host, "-", "error", "-", "-", "-", "-", a.error))
        rows += [(a.host, *_row(job)) for job in a.jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n" for r in rows)


def _row(job: dict[str, object]) -> tuple[str, ...]:
    status = "-" if job.get("status") is None else str(job["status"])
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(job.get("started", 0))))  # type: ignore[arg-type]
    size, kept = job.get("output_bytes", 0), job.get("kept_bytes", 0)
    output = f"{size}" if size == kept else f"{size} (kept {kept})"
    argv = job.get("argv") or []
    command = shlex.join(str(a) for a in argv) if isinstance(argv, list) else str(argv)
    return (str(job.get("job")), str(job.get("state")), status, str(job.get("user")), started, output, command)
