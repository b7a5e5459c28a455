"""Jobs on many hosts: list them, signal them (PROTOCOL.md §3 Jobs).

Attaching is a fleet run whose `Command` has `attach` set (shoal.controller.fleet),
so it gets every output mode and the job's real exit status. Listing and killing
are one request and one reply per host, fanned out like metrics; a host's failure
(unreachable, unknown job) is its `JobsAnswer`, never an exception.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from shoal.protocol.errors import RemoteCommandError, ShoalConnectionError, ShoalError
from shoal.protocol.messages import JobKill, JobKilled, JobsList, JobsReply

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out
from shoal.controller.fleet import ConnectOptions
from shoal.controller.result import failure_result
from shoal.controller.targets import Target

__all__ = ["JobsAnswer", "list_jobs", "kill_job", "gather_jobs", "kill_jobs", "format_jobs"]


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
    reply = await client.request_reply(JobsList)
    if not isinstance(reply, JobsReply):
        client.protocol_violation(f"agent answered JOBS_LIST with {reply.TYPE.name}")
        raise ShoalConnectionError(client.name, "agent broke the protocol")
    return list(reply.jobs)


async def kill_job(client: AgentClient, job: str, sig: int) -> int:
    """Signal job `job`'s whole tree (SIGKILL after the agent's kill grace); how many processes it held.

    Raises RemoteCommandError (`unknown_job`) when the key may not see such a job.
    """
    reply = await client.request_reply(lambda rid: JobKill(rid, job=job, signal=sig))
    if not isinstance(reply, JobKilled):
        client.protocol_violation(f"agent answered JOB_KILL with {reply.TYPE.name}")
        raise ShoalConnectionError(client.name, "agent broke the protocol")
    return reply.processes


async def _per_host(target: Target, options: ConnectOptions, action: Any) -> JobsAnswer:
    client: AgentClient | None = None
    try:
        client = await options.connect(target)
        return await action(client, JobsAnswer(target.name))  # type: ignore[no-any-return]
    except ShoalError as exc:
        r = failure_result(target.name, exc)
        return JobsAnswer(target.name, error=r.error, error_code=r.error_code, status=r.status)
    finally:
        if client is not None:
            await client.close()


async def gather_jobs(targets: list[Target], options: ConnectOptions, fanout: int) -> list[JobsAnswer]:
    """Every host's job list, in target order."""
    async def one(client: AgentClient, answer: JobsAnswer) -> JobsAnswer:
        answer.jobs = await list_jobs(client)
        return answer

    return await fan_out(targets, lambda t: _per_host(t, options, one), limit=fanout)


async def kill_jobs(targets: list[Target], options: ConnectOptions, fanout: int, job: str,
                    sig: int) -> list[JobsAnswer]:
    """Signal job `job` on every host, in target order."""
    async def one(client: AgentClient, answer: JobsAnswer) -> JobsAnswer:
        answer.processes = await kill_job(client, job, sig)
        return answer

    return await fan_out(targets, lambda t: _per_host(t, options, one), limit=fanout)


def format_jobs(answers: list[JobsAnswer], *, as_json: bool = False) -> str:
    """The listing: a table (or JSON lines), hosts in target order, jobs oldest first."""
    if as_json:
        lines = [json.dumps({"host": a.host, "error": a.error}) for a in answers if a.error is not None]
        lines += [json.dumps({"host": a.host, **job}) for a in answers for job in a.jobs]
        return "".join(line + "\n" for line in lines)
    rows: list[tuple[str, ...]] = [("HOST", "JOB", "STATE", "STATUS", "USER", "STARTED", "OUTPUT", "COMMAND")]
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
