"""How one EXEC becomes a running command or job, or a typed, audited refusal.

Kept apart from the session, which only drives the connection: every check an
EXEC must pass (fields, policy, user, limits, cwd) and the spawn it leads to read
top to bottom here, in the order the agent applies them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from shoal.protocol.errors import BadRequestError, ErrorCode
from shoal.protocol.fields import check_request, unknown_requirements
from shoal.protocol.messages import Exec, JobStarted

from shoal.agent import runas
from shoal.agent.childenv import base_env, default_cwd, login_entry
from shoal.agent.commands import CommandRequest, build_argv
from shoal.agent.jobs import JobLimits
from shoal.agent.process import spawn_error
from shoal.agent.restrict import restricted_env

if TYPE_CHECKING:
    from shoal.agent.session import AgentSession

__all__ = ["start_exec"]


def start_exec(session: AgentSession, msg: Exec) -> None:
    """Answer one EXEC: refuse it (typed, audited), or run it as a command or a detached job."""
    rid = msg.request_id
    if rid in session.requests:
        return session.request_error(rid, ErrorCode.DUPLICATE_REQUEST, f"request id {rid} is already in use", 255)
    unknown = unknown_requirements(msg)
    if unknown:
        return session.request_error(rid, ErrorCode.UNSUPPORTED, f"this agent does not support "
                                  f"{', '.join(unknown)}: nothing was run (upgrade the agent)", 126)
    try:
        check_request(msg)
    except BadRequestError as exc:
        return session.request_error(rid, exc.code, f"bad EXEC: {exc}", 2)
    reason = _refusal(session, msg)
    if reason is not None:
        return session.request_error(rid, *reason)
    run_as, warning = None, None
    if msg.user is not None:
        try:
            run_as = runas.lookup(msg.user)
        except runas.UnknownUser:
            session.agent.audit.record("exec_failed", peer=session.peer, key_id=session.key_id, request=rid,
                                    argv=build_argv(msg.argv, msg.shell), user=msg.user, error="no such user")
            return session.request_error(rid, ErrorCode.EXEC_FAILED, f"no such user {msg.user!r}", 126)
    argv = build_argv(msg.argv, msg.shell)
    user = run_as.name if run_as else runas.agent_user()
    audit = {"peer": session.peer, "key_id": session.key_id, "request": rid, "argv": argv, "cwd": msg.cwd,
             "user": user}
    if session.agent.config.audit_required and not session.agent.audit.record("exec_request", **audit):
        return session.request_error(rid, ErrorCode.AUDIT_UNAVAILABLE,
                                  "refused: the agent cannot write its audit log (audit_required)", 255)
    entry = login_entry()
    base = base_env(session.agent.child_env, entry)
    if run_as is not None:
        base.update(runas.user_env(run_as))
    env = restricted_env(base, msg.env) if _restricted(session) else {**base, **msg.env}
    if msg.cwd is not None:
        cwd = msg.cwd
    elif run_as is not None:
        cwd, warning = runas.home_cwd(run_as)
    else:
        cwd = default_cwd(entry)
    grace = msg.kill_grace if msg.kill_grace is not None else session.limits.kill_grace
    if msg.detach:
        return _start_job(session, msg, argv, env, cwd, grace, audit, run_as, warning)
    pty_size = (msg.rows, msg.cols) if msg.pty else None
    try:
        req = CommandRequest(session, rid, argv, env, cwd, msg.stdin, msg.window, msg.timeout, grace,
                             idle_timeout=msg.idle_timeout, run_as=run_as, pty_size=pty_size,
                             user=user)
    except OSError as exc:
        err = spawn_error(exc, argv[0], cwd)
        session.agent.audit.record("exec_failed", **audit, error=err.reason)
        return session.request_error(rid, err.code, err.reason, err.status)
    session.requests[rid] = req
    session.agent.running.started(req)
    session.agent.audit.record("exec", **audit, pid=req.child.pid, detach=msg.detach)
    session.log.debug("started pid %d: %s", req.child.pid, argv, req=rid)
    if warning is not None:
        req.notice(warning)


def _start_job(session: AgentSession, msg: Exec, argv: list[str], env: dict[str, str], cwd: str, grace: float,
               audit: dict[str, Any], run_as: runas.RunAs | None, warning: str | None) -> None:
    """A detached EXEC: start it as a job (shoal.agent.jobs) and end the request with its id.

    It runs as `run_as` exactly as a command would (checked by `_refuse_exec`), with
    its timeouts kept by the job, since no connection watches it."""
    limits = JobLimits(grace, msg.timeout, msg.idle_timeout)
    try:
        job = session.agent.jobs.start(session.key_id, argv, env, cwd, limits, run_as)
    except OSError as exc:
        err = spawn_error(exc, argv[0], cwd)
        session.agent.audit.record("exec_failed", **audit, error=err.reason)
        return session.request_error(msg.request_id, err.code, err.reason, err.status)
    session.agent.audit.record("job_start", **audit, pid=job.child.pid, job=job.id)
    session.send(JobStarted(msg.request_id, job=job.id, pid=job.child.pid))
    if warning is not None:
        job.notice(warning)


def _refusal(session: AgentSession, msg: Exec) -> tuple[str, str, int] | None:
    """Why this EXEC must not run (code, message, status), or None."""
    if msg.argv is not None and (not msg.argv or msg.argv[0] == "") or msg.shell is not None and not msg.shell.strip():
        return (ErrorCode.EMPTY_COMMAND, "empty command", 2)
    if session.policy is not None and not session.policy.allows_command(msg.argv, msg.shell):
        return _deny(session, msg, "command not allowed")
    if session.policy is not None:
        why = session.policy.refuse_request(msg.argv, msg.shell, msg.env, msg.cwd)
        if why is not None:
            return _deny(session, msg, why)
    if msg.user is not None:
        policy = session.policy
        why = runas.refusal(msg.user, policy.users if policy else None, policy is None or policy.allow_all)
        if why is not None:
            return _deny(session, msg, why)
    if msg.pty and msg.detach:
        return (ErrorCode.BAD_REQUEST, "bad EXEC: pty: a detached command has no terminal", 2)
    if session.command_count() >= session.limits.max_commands_per_connection:
        return (ErrorCode.LIMIT,
                f"too many commands on this connection (limit {session.limits.max_commands_per_connection})", 255)
    if session.agent.running.count >= session.limits.max_commands:
        return (ErrorCode.LIMIT, f"too many commands on this agent (limit {session.limits.max_commands})", 255)
    if msg.cwd is not None and not os.path.isdir(msg.cwd):
        return (ErrorCode.BAD_CWD, f"cannot change directory to {msg.cwd}: no such directory", 126)
    return None


def _deny(session: AgentSession, msg: Exec, why: str) -> tuple[str, str, int]:
    """Audit a refused EXEC and say why: the policy forbids it, nothing runs."""
    session.agent.audit.record("denied", peer=session.peer, key_id=session.key_id, request=msg.request_id,
                            what="exec", argv=build_argv(msg.argv, msg.shell), cwd=msg.cwd, reason=why,
                            user=msg.user if msg.user is not None else runas.agent_user())
    return (ErrorCode.PERMISSION_DENIED, f"permission denied for key {session.key_id}: {why}", 126)


def _restricted(session: AgentSession) -> bool:
    return session.policy is not None and not session.policy.allow_all
