"""The agent runs each TLS handshake itself, so a failed one is seen, audited and bounded.

asyncio's TLS server (`create_server(ssl=...)`) hands a connection to its protocol
only once the handshake has succeeded; a failure (a certificate from another CA, no
client certificate, a plain-TCP client, garbage) dies inside asyncio, where the agent
can neither audit nor count it. So TLS listeners accept plain TCP and every
connection starts as a `_Gate`: it upgrades the transport (shoal.hostio.starttls)
under the handshake deadline, then hands the TLS transport to an `AgentSession`, or
records one `refused` audit event with the peer and OpenSSL's short reason.

The context is read at each accept, so a reload (SIGHUP) that renews the
certificate applies to new connections while open sessions keep theirs.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from shoal.agent.session import AgentSession, peer_name
from shoal.hostio.starttls import Paused, handshake_failure, secure
from shoal.hostio.tasks import TaskSet

if TYPE_CHECKING:
    from shoal.agent.server import Agent

__all__ = ["TlsAcceptor"]


class TlsAcceptor:
    """Protocol factory for TLS listeners; owns the handshakes in flight.

    Handshakes in flight are capped at `limits.max_connections`: each holds OpenSSL
    state and a read buffer, so a flood of clients that never finish (or always
    fail) could otherwise grow memory without bound. Over the cap a connection is
    closed at once and audited as refused.
    """

    def __init__(self, agent: Agent, context: ssl.SSLContext) -> None:
        self.agent = agent
        self.context = context  # replaced by Agent.reload; read at each accept
        self._handshakes = TaskSet()

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def admit(self, gate: _Gate, transport: asyncio.Transport) -> None:
        """Start the handshake of a new connection, unless too many are in flight."""
        limit = self.agent.config.limits.max_connections
        if len(self._handshakes) >= limit:
            self.agent.audit.record("refused", peer=gate.peer,
                                    reason=f"too many TLS handshakes in progress (limit {limit})")
            transport.abort()
            return
        self._handshakes.spawn(gate.upgrade(transport, self.context), name=f"tls-handshake {gate.peer}")

    async def close(self) -> None:
        """Abandon the handshakes in flight (their sockets close), for shutdown."""
        self._handshakes.cancel_all()
        await self._handshakes.wait(timeout=1)


class _Gate(Paused):
    """A connection between accept and the end of its TLS handshake."""

    def __init__(self, acceptor: TlsAcceptor) -> None:
        self.acceptor = acceptor
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # nothing may reach the gate before start_tls takes over
        assert isinstance(transport, asyncio.Transport)
        self.peer = peer_name(transport)
        self.acceptor.admit(self, transport)

    async def upgrade(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        agent = self.acceptor.agent
        timeout = agent.config.limits.handshake_timeout
        try:
            secured = await secure(transport, context, server_side=True, timeout=timeout)
        except OSError as exc:  # ssl.SSLError, timeout and resets are all OSErrors
            agent.audit.record("refused", peer=self.peer,
                               reason=f"TLS handshake failed: {handshake_failure(exc, timeout)}")
            return
        if secured is None:  # the peer left between its handshake and now
            return
        tls, early = secured
        try:
            early.hand_over(tls, AgentSession(agent))
        except BaseException:  # a bug: TaskSet logs it; the connection must not linger
            tls.abort()
            raise
