"""Jobs on many hosts: list them, signal them (PROTOCOL.md §3 Jobs).

Attaching is a fleet run whose `Command` has `attach` set (shoal.controller.fleet),
so it gets every output mode and the job's real exit status. Listing and killing
are one request and one reply per host, fanned out like metrics; a host's failure
(unreachable, unknown job) is its `JobsAnswer`, never an exception.
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.protocol.errors import ConfigError, LocalProtocolError, ShoalConnectionError, ShoalError
from shoal.protocol.messages import Exit, JobKill, JobKilled, JobsList, JobsReply
from shoal.protocol.request import RequestKind

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out, per_gateway
from shoal.controller.fleet import ConnectOptions
from shoal.controller.remote import result_from_exit
from shoal.controller.result import failure_result
from shoal.controller.targets import Target

__all__ = ["JobsAnswer", "Action", "list_jobs", "kill_job", "listing", "killing", "ask", "gather_jobs", "kill_jobs",
           "kill_report", "parse_signal", "format_jobs", "job_outcome"]


@dataclass(slots=True)
class JobsAnswer:
    """One host's answer: its jobs (list), the processes signalled (kill), or why not."""

    host: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    processes: int | None = None
    error: str | None = None
    error_code: str | None = None
    status: int = 0


async def list_jobs(client: AgentClient) -> list[dict[str, Any]]:
    """The jobs this connection's key may see on the agent, oldest first."""
    reply = await client.request_reply(JobsList, RequestKind.JOBS)
    assert isinstance(reply, JobsReply)  # the table admits no other reply
    return list(reply.jobs)


async def kill_job(client: AgentClient, job: str, sig: int) -> int:
    """Signal job `job`'s whole tree (SIGKILL after the agent's kill grace); how many processes it held.

    Raises RemoteCommandError (`unknown_job`) when the key may not see such a job.
    """
    reply = await client.request_reply(lambda rid: JobKill(rid, job=job, signal=sig), RequestKind.KILL)
    assert isinstance(reply, JobKilled)  # the table admits no other reply
    return reply.processes


# One host's part of a listing or a kill, on an open connection.
Action = Callable[[AgentClient, JobsAnswer], Awaitable[JobsAnswer]]


def listing() -> Action:
    """The action that lists a host's jobs into its answer."""
    async def one(client: AgentClient, answer: JobsAnswer) -> JobsAnswer:
        answer.jobs = await list_jobs(client)
        return answer
    return one


def killing(job: str, sig: int) -> Action:
    """The action that signals job `job`'s tree and counts its processes in the answer."""
    async def one(client: AgentClient, answer: JobsAnswer) -> JobsAnswer:
        answer.processes = await kill_job(client, job, sig)
        return answer
    return one


async def ask(host: str, client: AgentClient | None, action: Action) -> JobsAnswer:
    """Run `action` on a connection already open (None: not connected); a failure is the answer."""
    try:
        if client is None:
            raise ShoalConnectionError(host, "not connected")
        return await action(client, JobsAnswer(host))
    except ShoalError as exc:
        return _failed(host, exc)


def _failed(host: str, exc: ShoalError) -> JobsAnswer:
    r = failure_result(host, exc)
    return JobsAnswer(host, error=r.error, error_code=r.error_code, status=r.status)


async def _per_host(target: Target, options: ConnectOptions, action: Action) -> JobsAnswer:
    try:
        client = await options.connect(target)
    except ShoalError as exc:
        return _failed(target.name, exc)
    try:
        return await ask(target.name, client, action)
    finally:
        await client.close()


async def gather_jobs(targets: list[Target], options: ConnectOptions, fanout: int) -> list[JobsAnswer]:
    """Every host's job list, in target order."""
    return await fan_out(targets, lambda t: _per_host(t, options, listing()),
                         limit=per_gateway(fanout, lambda t: t))


async def kill_jobs(targets: list[Target], options: ConnectOptions, fanout: int, job: str,
                    sig: int) -> list[JobsAnswer]:
    """Signal job `job` on every host, in target order."""
    return await fan_out(targets, lambda t: _per_host(t, options, killing(job, sig)),
                         limit=per_gateway(fanout, lambda t: t))


def kill_report(answer: JobsAnswer, job: str) -> str:
    """What a kill did on one host: `killed job J (3 processes)`, or why not."""
    if answer.error is not None:
        return answer.error
    noun = "process" if answer.processes == 1 else "processes"
    return f"killed job {job} ({answer.processes} {noun})"


def parse_signal(text: str, where: str = "--signal") -> int:
    """`TERM`, `SIGTERM`, `term` or `15`; ConfigError (naming `where`) otherwise."""
    name = text.strip().upper()
    if name.isdigit() and 1 <= int(name) <= 64:
        return int(name)
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise ConfigError(f"unknown signal {text!r}", where) from None


def format_jobs(answers: list[JobsAnswer], *, as_json: bool = False) -> str:
    """The listing: a table (or JSON lines), hosts in target order, jobs oldest first."""
    if as_json:
        lines = [json.dumps({"host": a.host, "error": a.error}) for a in answers if a.error is not None]
        lines += [json.dumps({"host": a.host, **job, "outcome": job_outcome(job)}) for a in answers for job in a.jobs]
        return "".join(line + "\n" for line in lines)
    rows: list[tuple[str, ...]] = [("HOST", "JOB", "STATE", "STATUS", "USER", "STARTED", "OUTPUT", "COMMAND")]
    for a in answers:
        if a.error is not None:
            rows.append((a.host, "-", "error", "-", "-", "-", "-", a.error))
        rows += [(a.host, *_row(job)) for job in a.jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n" for r in rows)


def job_outcome(job: dict[str, Any]) -> str | None:
    """A finished job's outcome, in the one vocabulary, as `shoal attach` would report it; None while it runs.

    The listing carries the fields of the EXIT an attach would get, so it goes
    through the same translation (`result_from_exit`)."""
    if job.get("status") is None:
        return None
    sig = job.get("signal")
    code = job.get("code", None if sig else job["status"])  # agents before job timeouts send no code
    try:
        ended = Exit(0, status=int(job["status"]), code=code, signal=sig,
                     timed_out=bool(job.get("timed_out")), idle_timed_out=bool(job.get("idle_timed_out")),
                     cancelled=bool(job.get("cancelled", job.get("state") == "killed")))
    except (LocalProtocolError, TypeError, ValueError, OverflowError):  # this one job's entry, not the listing
        return f"bad status {str(job['status'])[:20]!r}"
    return str(result_from_exit("", ended, None, None).outcome)


def _started(job: dict[str, Any]) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(job.get("started", 0))))
    except (TypeError, ValueError, OverflowError, OSError):  # not a time: this one job's entry, not the listing
        return "?"


def _row(job: dict[str, Any]) -> tuple[str, ...]:
    status = "-" if job.get("status") is None else str(job["status"])
    started = _started(job)
    size, kept = job.get("output_bytes", 0), job.get("kept_bytes", 0)
    output = f"{size}" if size == kept else f"{size} (kept {kept})"
    argv = job.get("argv") or []
    command = shlex.join(str(a) for a in argv) if isinstance(argv, list) else str(argv)
    return (str(job.get("job")), job_outcome(job) or "running", status, str(job.get("user")), started, output, command)
