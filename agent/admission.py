"""Admission: which new connections the agent takes, and which handshakes it sheds.

Every open connection counts against `max_connections`; those still in the
handshake also count as startups, per source and overall, like sshd's
MaxStartups, so a flood of idle unauthenticated sockets cannot lock out a real
controller.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from shoal.protocol.errors import ErrorCode

from shoal.agent.audit import Audit
from shoal.agent.config import Limits

if TYPE_CHECKING:
    from shoal.agent.session import AgentSession

__all__ = ["Admission", "STARTUP_GRACE"]

log = logging.getLogger("shoal.agent")

# Seconds a connection may take to authenticate before a new one may shed it when
# the startup caps are full: a handshake is a few round trips, so one still open
# after this is more likely a flood than a controller about to finish.
STARTUP_GRACE = 1.0


class Admission:
    """The agent's open connections, and those of them still in the handshake.

    Args:
        audit: where refusals and sheds are recorded.
        limits: the limits in force now (they change on reload).
    """

    def __init__(self, audit: Audit, limits: Callable[[], Limits]) -> None:
        self._audit = audit
        self._limits = limits
        self.sessions: set[AgentSession] = set()
        # Sessions still in the handshake, oldest first (a dict keeps insertion order).
        self.startups: dict[AgentSession, None] = {}
        self._shedding = 0  # connections shed by the startup caps in the current episode

    def admit(self, session: AgentSession) -> bool:
        """Take a new connection unless over a cap (then refuse it at once).

        A new connection starts in the handshake. Over `max_startups_per_source`
        (its source's) or `max_startups` (anyone's), the oldest such connection is
        shed to make room if it has had STARTUP_GRACE to authenticate: a flood of
        idle unauthenticated sockets then churns through its own slots while a
        real controller connects and authenticates. Otherwise the newcomer is
        refused, so a burst of honest handshakes is not shed before it can finish.
        """
        limits = self._limits()
        if len(self.sessions) >= limits.max_connections:
            session.conn.fail(ErrorCode.TOO_MANY_CONNECTIONS, f"agent connection limit ({limits.max_connections}) reached")
            self._audit.record("refused", peer=session.peer, reason="connection limit")
            session.abort()
            return False
        same_source = [s for s in self.startups if s.source == session.source]
        victim, limit = None, ""
        if len(same_source) >= limits.max_startups_per_source:
            victim, limit = same_source[0], f"max_startups_per_source ({limits.max_startups_per_source})"
        elif len(self.startups) >= limits.max_startups:
            victim, limit = next(iter(self.startups)), f"max_startups ({limits.max_startups})"
        if victim is not None:
            if not self._shedding:
                log.warning("too many unauthenticated connections: %s reached; shedding the oldest "
                            "or refusing new ones", limit)
            self._shedding += 1
            if session.accepted_at - victim.accepted_at < STARTUP_GRACE:
                self.shed(session, f"{limit} reached")
                return False
            self.shed(victim, f"{limit} reached")
        self.sessions.add(session)
        self.startups[session] = None
        return True

    def shed(self, session: AgentSession, reason: str) -> None:
        """Close a connection still in the handshake to make room for others.

        Audited as `shed` (debug level in the log: a flood must not flood the log).
        """
        self.startups.pop(session, None)
        self.sessions.discard(session)
        session.conn.fail(ErrorCode.TOO_MANY_CONNECTIONS, "too many connections are authenticating; try again")
        self._audit.record("shed", peer=session.peer, reason=reason)
        session.abort()

    def shed_startups(self, count: int) -> int:
        """Shed up to `count` of the oldest connections still in the handshake; how many were."""
        victims = list(self.startups)[:count]
        for victim in victims:
            self.shed(victim, "out of file descriptors")
        return len(victims)

    def _end_shedding(self) -> None:
        if self._shedding and not self.startups:
            log.warning("no unauthenticated connections left; %d were shed or refused", self._shedding)
            self._shedding = 0

    def authenticated(self, session: AgentSession) -> None:
        """The session finished its handshake: it no longer counts as a startup."""
        self.startups.pop(session, None)
        self._end_shedding()

    def release(self, session: AgentSession) -> None:
        """The connection closed: it no longer counts at all."""
        self.sessions.discard(session)
        self.startups.pop(session, None)
        self._end_shedding()
