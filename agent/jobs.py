"""Jobs: detached commands, kept by the agent with their output after the controller left.

A detached EXEC becomes a `Job` (PROTOCOL.md §3 Jobs): the agent reads its pipes
itself, never pausing, and keeps the output in memory up to `limits.job_output_size`
(the first half and the last half; the middle is dropped and counted). A finished
job is kept `limits.job_retention` seconds. Jobs belong to the agent, not to a
connection, so a controller's disconnect and a SIGHUP leave them alone; the agent's
shutdown ends them, and a new agent process knows none.

A job is seen (listed, attached, killed) only by the key that started it and by
`allow = "all"` keys. Attaching (`JobAttach`) is a command request's stream: STARTED,
the kept output, live output, EXIT, under the output window like an EXEC. Listing
and killing are answered at once, each stepped through its table (`AgentSession.answer`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.protocol.connection import Role
from shoal.protocol.defaults import DATA_CHUNK
from shoal.protocol.errors import ErrorCode
from shoal.protocol.messages import (
    Error,
    Exit,
    JobAttach,
    JobKill,
    JobKilled,
    JobsList,
    JobsReply,
    MessageType,
    Started,
)
from shoal.protocol.request import RequestChannel, RequestKind

from shoal.agent import proctree, runas
from shoal.agent.commands import IdleClock
from shoal.agent.handlers import HandlerTable
from shoal.agent.process import STDERR, STDOUT, Child, ChildResult
from shoal.agent.runas import RunAs

if TYPE_CHECKING:
    from shoal.agent.config import KeyPolicy
    from shoal.agent.server import Agent
    from shoal.agent.session import AgentSession

__all__ = ["Job", "JobLimits", "JobOutput", "JobTable", "AttachRequest", "job_handlers"]

Chunk = tuple[int, bytes]  # (STDOUT or STDERR, bytes)
_NOTE = 0  # an attacher's own stderr line about output it dropped, not the job's


class JobOutput:
    """A job's output, in order, capped at `limit` bytes: the head and the tail are kept."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head: list[Chunk] = []
        self.tail: deque[Chunk] = deque()
        self.head_bytes = 0
        self.tail_bytes = 0
        self.dropped = 0  # bytes between head and tail that were not kept

    @property
    def kept(self) -> int:
        return self.head_bytes + self.tail_bytes

    def add(self, stream: int, data: bytes) -> None:
        room = self.head_limit - self.head_bytes
        if room > 0 and not self.tail:
            self.head.append((stream, data[:room]))
            self.head_bytes += min(room, len(data))
            data = data[room:]
        if not data:
            return
        self.tail.append((stream, data))
        self.tail_bytes += len(data)
        while self.tail_bytes > self.tail_limit:
            first_stream, first = self.tail[0]
            excess = self.tail_bytes - self.tail_limit
            cut = min(excess, len(first))
            if cut == len(first):
                self.tail.popleft()
            else:
                self.tail[0] = (first_stream, first[cut:])
            self.tail_bytes -= cut
            self.dropped += cut

    def replay(self) -> list[Chunk]:
        """Everything kept, in order; a one-line note on stderr where bytes were dropped."""
        gap = [(2, f"[shoal: {self.dropped} bytes of this job's output were not kept]\n".encode())]
        return [*self.head, *(gap if self.dropped else []), *self.tail]


@dataclass(frozen=True, slots=True)
class JobLimits:
    """What ends a job besides its own exit: the EXEC's `timeout` and `idle_timeout`
    (each ends the whole tree), and the grace between SIGTERM and SIGKILL."""

    grace: float
    timeout: float | None = None
    idle_timeout: float | None = None


class Job:
    """One detached command and what it printed."""

    def __init__(self, table: JobTable, key_id: str | None, argv: list[str], env: dict[str, str],
                 cwd: str | None, limits: JobLimits, run_as: RunAs | None = None) -> None:
        self.table = table
        self.id = table.new_id()
        self.key_id = key_id
        self.argv = argv
        self.user = run_as.name if run_as is not None else runas.agent_user() or str(os.getuid())
        self.started = time.time()
        self.grace = limits.grace
        self.output = JobOutput(table.agent.config.limits.job_output_size)
        self.bytes = {1: 0, 2: 0}
        self.result: ChildResult | None = None
        self.killed_by: int | None = None  # the signal `shoal kill` (or a revocation) sent
        self.timed_out = False
        self.idle_timed_out = False
        self.attachers: set[AttachRequest] = set()
        self.child = Child(argv, env, cwd, False, self._on_data, self._on_done,
                           linger=table.agent.config.limits.output_linger, run_as=run_as)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(limits.timeout, self._on_timeout) if limits.timeout else None
        self._idle = IdleClock(limits.idle_timeout, self.child, self._on_idle) if limits.idle_timeout else None

    @property
    def state(self) -> str:
        if self.result is None:
            return "running"
        return "killed" if self.killed_by is not None or self.timed_out or self.idle_timed_out else "exited"

    def describe(self) -> dict[str, Any]:
        """The job as JOBS_REPLY lists it."""
        r = self.result
        return {
            "job": self.id, "argv": self.argv, "user": self.user, "key_id": self.key_id or "",
            "started": round(self.started, 6), "state": self.state, "pid": self.child.pid,
            "status": None if r is None else r.status, "code": None if r is None else r.code,
            "signal": None if r is None else r.signal, "duration": None if r is None else round(r.duration, 6),
            "timed_out": self.timed_out, "idle_timed_out": self.idle_timed_out,
            "cancelled": self.killed_by is not None,
            "output_bytes": self.bytes[1] + self.bytes[2], "kept_bytes": self.output.kept,
        }

    def notice(self, text: str) -> None:
        """A line from the agent itself on the job's stderr (no home directory, say)."""
        self._on_data(STDERR, text.encode("utf-8", "replace"))

    def _on_data(self, stream: int, data: bytes) -> None:
        self.bytes[stream] += len(data)
        if self._idle is not None:
            self._idle.heard()
        self.output.add(stream, data)
        for attach in list(self.attachers):
            attach.live(stream, data)

    def _on_done(self, result: ChildResult) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._idle is not None:
            self._idle.stop()
        self.result = result
        if self.child.output_cut:  # leftovers held the pipes past the linger: end them
            self.kill(signal.SIGTERM)
        self.child.close()
        self.table.finished(self)
        for attach in list(self.attachers):
            attach.pump()

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.kill(signal.SIGTERM)

    def _on_idle(self) -> None:
        """Printed nothing for its idle timeout: end the whole tree, as a timeout does."""
        self.idle_timed_out = True
        self.kill(signal.SIGTERM)

    def kill(self, sig: int, grace: float | None = None) -> int:
        """Send `sig` to the whole tree, SIGKILL what is left after the grace; how many it held."""
        count = len(proctree.find_tree(self.child.pid, self.child.token))
        g = self.grace if grace is None else grace
        self.table.agent.tasks.spawn(proctree.kill_tree(self.child.pid, self.child.token, sig, g),
                                     name=f"job-kill-{self.child.pid}")
        return count

    def exit_message(self, request_id: int) -> Exit:
        assert self.result is not None
        r = self.result
        return Exit(request_id, status=r.status, code=r.code, signal=r.signal, timed_out=self.timed_out,
                    cancelled=self.killed_by is not None, duration=round(r.duration, 6),
                    stdout_bytes=self.bytes[1], stderr_bytes=self.bytes[2], idle_timed_out=self.idle_timed_out)


class JobTable:
    """Every job of this agent, running or kept after its end, by id."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.jobs: dict[str, Job] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    def new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(4)
            if job_id not in self.jobs:
                return job_id

    def start(self, key_id: str | None, argv: list[str], env: dict[str, str], cwd: str | None,
              limits: JobLimits, run_as: RunAs | None = None) -> Job:
        """Start a job (as `run_as` when given); OSError when it cannot be spawned."""
        job = Job(self, key_id, argv, env, cwd, limits, run_as)
        self.jobs[job.id] = job
        self.agent.running.started(job)
        return job

    def finished(self, job: Job) -> None:
        self.agent.running.finished(job)
        assert job.result is not None
        self.agent.audit.record("job_exit", job=job.id, key_id=job.key_id, argv=job.argv, user=job.user,
                                status=job.result.status, timed_out=job.timed_out,
                                idle_timed_out=job.idle_timed_out, stdout_bytes=job.bytes[1],
                                stderr_bytes=job.bytes[2])
        retention = self.agent.config.limits.job_retention
        self._expiry[job.id] = asyncio.get_running_loop().call_later(retention, self._forget, job.id)

    def _forget(self, job_id: str) -> None:
        self._expiry.pop(job_id, None)
        job = self.jobs.get(job_id)
        if job is not None and not job.attachers:
            del self.jobs[job_id]
        elif job is not None:  # someone still reads it: look again later
            self._expiry[job_id] = asyncio.get_running_loop().call_later(1.0, self._forget, job_id)

    def revoke(self, accepts: Callable[[str | None], bool]) -> None:
        """A reload removed keys: end the whole tree of every running job they started.

        SIGTERM now and SIGKILL after the job's kill grace, audited as `job_revoked`;
        the job is then `killed`, kept (for allow-all keys to see) like any other.
        """
        for job in self.jobs.values():
            if job.result is None and not accepts(job.key_id):
                job.killed_by = signal.SIGTERM
                count = job.kill(signal.SIGTERM)
                self.agent.audit.record("job_revoked", job=job.id, key_id=job.key_id, argv=job.argv, user=job.user,
                                        processes=count)

    def visible(self, key_id: str | None, policy: KeyPolicy | None) -> list[Job]:
        """The jobs this key may see: its own, or all with `allow = "all"` (or no policy)."""
        everything = policy is None or policy.allow_all
        return [j for j in self.jobs.values() if everything or j.key_id == key_id]

    def find(self, job_id: str, key_id: str | None, policy: KeyPolicy | None) -> Job | None:
        return next((j for j in self.visible(key_id, policy) if j.id == job_id), None)

    def close(self) -> None:
        """Agent shutdown: end every running job's tree and forget them all."""
        for job in self.jobs.values():
            if job.result is None:
                job.kill(signal.SIGTERM, 0.5)
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()


class AttachRequest:
    """A JOB_ATTACH: the job's kept output, then live output, then EXIT, within the window."""

    def __init__(self, session: AgentSession, msg: JobAttach, job: Job) -> None:
        self.session = session
        self.request_id = msg.request_id
        self.job = job
        self.child = job.child  # SIGNAL and STDIN_EOF act on the job, as for an EXEC
        self.channel = RequestChannel(Role.AGENT, msg.request_id)
        self.channel.receive(msg)
        self._queue: deque[Chunk] = deque(job.output.replay())
        # What waits for this attacher's window is bounded like the job's own copy:
        # past `job_output_size` the oldest waiting bytes are dropped, and said so.
        self._limit = session.agent.config.limits.job_output_size
        self._queued = sum(len(d) for _, d in self._queue)
        self._behind = 0
        self._max_chunk = min(DATA_CHUNK, session.conn.peer_max_frame)
        started = Started(msg.request_id, pid=job.child.pid, stdin_window=0)
        self.channel.send(started)
        session.send(started)
        job.attachers.add(self)
        self.pump()

    def live(self, stream: int, data: bytes) -> None:
        self._queue.append((stream, data))
        self._queued += len(data)
        self.pump()
        if self._queued > self._limit:
            self._fall_behind()

    def _fall_behind(self) -> None:
        """Drop the oldest waiting output down to the limit; `pump` says how much, in order."""
        while self._queued > self._limit and len(self._queue) > 1:
            stream, data = self._queue.popleft()
            self._queued -= len(data)
            if stream != _NOTE:  # a note cut short is superseded by the next one
                self._behind += len(data)

    def grant(self, increment: int) -> None:
        if increment:
            self.channel.receive_data(MessageType.WINDOW, increment)
        self.pump()

    def stdin(self, data: bytes) -> None:
        self.channel.receive_data(MessageType.STDIN, len(data))  # no stdin window: window_exceeded

    def cancel(self, grace: float | None) -> None:
        """CANCEL under an attach ends the job, as it would end an EXEC's command."""
        self.job.killed_by = signal.SIGINT
        self.session.agent.tasks.spawn(proctree.escalate(self.job.child.pid, self.job.child.token,
                                                         grace=self.job.grace if grace is None else grace),
                                       name=f"job-cancel-{self.job.child.pid}")

    def pump(self) -> None:
        """Send what the window and the socket allow; EXIT once the job ended and all is sent."""
        if self.channel.done or self.session.closed:
            return
        while self._queue and self.channel.output_credit > 0 and not self.session.writing_paused:
            if self._behind:
                note = f"[shoal: {self._behind} bytes of this job's output were dropped: the attach fell behind]\n"
                self._queue.appendleft((_NOTE, note.encode()))
                self._queued += len(note)
                self._behind = 0
            stream, data = self._queue[0]
            n = min(len(data), self.channel.output_credit, self._max_chunk)
            kind = MessageType.STDOUT if stream == STDOUT else MessageType.STDERR  # a note goes to stderr
            self.channel.send_data(kind, n)
            self.session.send_data(kind, self.request_id, data[:n])
            if n == len(data):
                self._queue.popleft()
            else:
                self._queue[0] = (stream, data[n:])
            self._queued -= n
        if not self._queue and self.job.result is not None:
            self.session.send(self.job.exit_message(self.request_id))
            self.channel.send_data(MessageType.EXIT, 0)
            self.abort()

    def abort(self) -> None:
        """The request is over (or its connection is gone): stop following the job."""
        self.job.attachers.discard(self)
        if self.session.requests.get(self.request_id) is self:
            del self.session.requests[self.request_id]


def job_handlers(session: AgentSession) -> HandlerTable:
    """The message handlers jobs add to a session (for `Agent.handlers`)."""
    table = HandlerTable()
    table.add(JobsList, lambda msg: _on_list(session, msg))
    table.add(JobAttach, lambda msg: _on_attach(session, msg))
    table.add(JobKill, lambda msg: _on_kill(session, msg))
    return table


def _jobs(session: AgentSession) -> JobTable:
    return session.agent.jobs


def _unknown(session: AgentSession, request_id: int, job_id: str) -> Error:
    return Error(request_id, code=ErrorCode.UNKNOWN_JOB, message=f"no job {job_id!r} for key {session.key_id}",
                 status=255)


def _on_list(session: AgentSession, msg: JobsList) -> None:
    session.answer(msg, RequestKind.JOBS, lambda: _list(session, msg))


def _list(session: AgentSession, msg: JobsList) -> JobsReply:
    jobs = _jobs(session).visible(session.key_id, session.policy)
    session.agent.audit.record("jobs", peer=session.peer, key_id=session.key_id, request=msg.request_id)
    return JobsReply(msg.request_id, jobs=[j.describe() for j in sorted(jobs, key=lambda j: j.started)])


def _on_attach(session: AgentSession, msg: JobAttach) -> None:
    rid = msg.request_id
    if rid in session.requests:
        return session.request_error(rid, ErrorCode.DUPLICATE_REQUEST, f"request id {rid} is already in use", 255)
    job = _jobs(session).find(msg.job, session.key_id, session.policy)
    if job is None:
        return session.send(_unknown(session, rid, msg.job))
    session.agent.audit.record("job_attach", peer=session.peer, key_id=session.key_id, request=rid, job=job.id)
    attach = AttachRequest(session, msg, job)
    if not attach.channel.done:  # an ended job whose output fit the window is done already
        session.requests[rid] = attach


def _on_kill(session: AgentSession, msg: JobKill) -> None:
    session.answer(msg, RequestKind.KILL, lambda: _kill(session, msg))


def _kill(session: AgentSession, msg: JobKill) -> Error | JobKilled:
    job = _jobs(session).find(msg.job, session.key_id, session.policy)
    if job is None:
        return _unknown(session, msg.request_id, msg.job)
    if job.result is None:
        job.killed_by = msg.signal
    count = job.kill(msg.signal)
    session.agent.audit.record("job_kill", peer=session.peer, key_id=session.key_id, request=msg.request_id,
                               job=job.id, signal=msg.signal, processes=count)
    return JobKilled(msg.request_id, job=job.id, processes=count)
