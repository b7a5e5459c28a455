"""The agent runs each TLS handshake itself, so a failed one is seen, audited and bounded.

asyncio's TLS server (`create_server(ssl=...)`) hands a connection to its protocol
only once the handshake has succeeded; a failure (a certificate from another CA, no
client certificate, a plain-TCP client, garbage) dies inside asyncio, where the agent
can neither audit nor count it. So TLS listeners accept plain TCP and every
connection starts as a `_Gate`: it upgrades the transport with `loop.start_tls`
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
from shoal.hostio.tasks import TaskSet

if TYPE_CHECKING:
    from shoal.agent.server import Agent

__all__ = ["TlsAcceptor", "handshake_failure"]


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
        transport.pause_reading()  # nothing may reach the gate before start_tls takes over
        self._handshakes.spawn(gate.upgrade(transport, self.context), name=f"tls-handshake {gate.peer}")

    async def close(self) -> None:
        """Abandon the handshakes in flight (their sockets close), for shutdown."""
        self._handshakes.cancel_all()
        await self._handshakes.wait(timeout=1)


class _Gate(asyncio.Protocol):
    """A connection between accept and the end of its TLS handshake.

    During `start_tls` this is the TLS layer's application protocol: plaintext the
    controller sends right behind its last handshake message (at most one socket
    read, since our task resumes before the next one) is kept here and replayed
    into the session.
    """

    def __init__(self, acceptor: TlsAcceptor) -> None:
        self.acceptor = acceptor
        self.peer = "?"
        self._early: list[bytes] = []
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.peer = peer_name(transport)
        self.acceptor.admit(self, transport)

    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> None:
        self._eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing to do: a failure is reported by `upgrade`, a success by the session."""

    async def upgrade(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        agent = self.acceptor.agent
        timeout = agent.config.limits.handshake_timeout
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=timeout)
        except OSError as exc:  # ssl.SSLError, timeout and resets are all OSErrors
            agent.audit.record("refused", peer=self.peer,
                               reason=f"TLS handshake failed: {handshake_failure(exc, timeout)}")
            return
        if tls is None:  # the peer left between its handshake and now
            return
        try:
            self._hand_over(tls)
        except BaseException:  # a bug: TaskSet logs it; the connection must not linger
            tls.abort()
            raise

    def _hand_over(self, tls: asyncio.Transport) -> None:
        """Make an `AgentSession` the TLS transport's protocol, with what came early."""
        session = AgentSession(self.acceptor.agent)
        tls.set_protocol(session)
        session.connection_made(tls)
        for data in self._early:
            _feed(session, data)
        if self._eof and not session.closed:
            session.eof_received()


def _feed(session: AgentSession, data: bytes) -> None:
    """Deliver bytes through the session's BufferedProtocol interface."""
    view = memoryview(data)
    while view and not session.closed:
        buf = session.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        session.buffer_updated(n)
        view = view[n:]


def handshake_failure(exc: OSError, timeout: float) -> str:
    """Why a server-side handshake failed, in a few words (OpenSSL's reason, not its tuple)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, ConnectionAbortedError):  # start_tls's own deadline
        return f"no handshake within {timeout:g}s"
    if isinstance(exc, ConnectionResetError):
        return "connection closed by the peer"
    return exc.strerror or type(exc).__name__
