"""Dialling out to hubs: agents that accept no inbound connection stay reachable.

With `connect` (`shoal-agent --connect HUB[:PORT]`), the agent opens a TCP
connection to each hub and keeps it: when it ends, or cannot be made, it tries
again after a wait from `shoal.hostio.backoff` (random, doubling with each
failure, never over `reconnect_max`). Only the direction of the TCP connection
is reversed: on it the agent runs an ordinary `AgentSession`, the server side of
the handshake, so the hub must prove the key as any controller does and the
key's policy applies to everything the hub asks. The agent announces its name
in its HELLO (PROTOCOL.md section 7); a hub that already has an agent of that
name refuses it with ERROR `name_in_use`, and the agent keeps trying.

With `[tls]` the agent's dial-outs run TLS too, in the roles of a direct
connection (shoal.hostio.starttls): the agent is the TLS server, presents its
certificate and requires the hub's, from the same CA it requires of controllers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from shoal.protocol.connection import HandshakeComplete
from shoal.protocol.errors import AuthError, ProtocolError
from shoal.protocol.messages import Error, Message

from shoal.agent.config import parse_connect
from shoal.agent.session import AgentSession
from shoal.hostio.backoff import Backoff
from shoal.hostio.starttls import Paused, handshake_failure, secure

if TYPE_CHECKING:
    from shoal.agent.server import Agent

__all__ = ["DialOut", "agent_name"]

log = logging.getLogger("shoal.agent")


def agent_name(configured: str) -> str:
    """The name announced to hubs: the configured one, else this host's name."""
    return configured or socket.gethostname()


class _HubSession(AgentSession):
    """An agent session on a connection we opened: it says how it ended."""

    def __init__(self, agent: Agent, name: str, opened: Callable[[], None]) -> None:
        super().__init__(agent, name=name)
        self.ended = asyncio.get_running_loop().create_future()
        self.accepted = False  # authenticated, and not refused by the hub
        self.refusal: str | None = None
        self._opened = opened
        self._view: memoryview | None = None
        self._first_byte: int | None = None  # of the hub's, to tell a TLS hub from a broken one

    def get_buffer(self, sizehint: int) -> memoryview:
        self._view = super().get_buffer(sizehint)
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._first_byte is None and nbytes and self._view is not None:
            self._first_byte = self._view[0]
        self._view = None
        super().buffer_updated(nbytes)

    def peer_failed(self, exc: AuthError | ProtocolError) -> None:
        if not self.accepted and self._first_byte == _TLS_HANDSHAKE_RECORD:
            # Not an attack on us: a hub whose port wants TLS, on a connection we opened.
            self.refusal = ("the hub speaks TLS on this port; give this agent [tls] "
                            "(--tls-cert, --tls-key, --tls-ca) to dial it")
            self.abort()
            return
        super().peer_failed(exc)

    def dispatch(self, event: Message | HandshakeComplete) -> None:
        if isinstance(event, HandshakeComplete):
            self.accepted = True
            self._opened()
        elif isinstance(event, Error) and event.request_id == 0:
            self.accepted = False
            self.refusal = f"{event.code}: {event.message}"
        super().dispatch(event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.ended.done():
            self.ended.set_result(None)


class DialOut:
    """One hub this agent keeps a connection to; over TLS when `tls` (the agent's
    server context, replaced on reload) is given."""

    def __init__(self, agent: Agent, address: str, tls: ssl.SSLContext | None = None) -> None:
        self.agent = agent
        self.address = address
        self.tls = tls
        self.host, self.port = parse_connect(address)
        limits = agent.config.limits
        self.backoff = Backoff(limits.reconnect_min, limits.reconnect_max)
        self.connected = asyncio.Event()  # set while a session with the hub is authenticated

    async def run(self) -> None:
        """Connect, serve the hub until the connection ends, wait, and again; until cancelled."""
        failing = False
        while True:
            reason = await self._serve_once()
            if reason is None:
                self.backoff.reset()
                failing = False
            elif not failing or self.backoff.failures == 0:
                log.warning("hub %s: %s; retrying with backoff (at most %gs apart)",
                            self.address, reason, self.backoff.cap)
                failing = True
            else:
                log.debug("hub %s: %s", self.address, reason)
            await asyncio.sleep(self.backoff.next_delay())

    async def _serve_once(self) -> str | None:
        """One connection's life: None when it was accepted and later ended, else why it failed."""
        session = _HubSession(self.agent, agent_name(self.agent.config.name), self._opened)
        try:
            await asyncio.wait_for(self._open(session), self.agent.config.limits.handshake_timeout)
        except _TlsFailed as exc:
            return str(exc)
        except (OSError, asyncio.TimeoutError) as exc:
            return _connect_reason(exc)
        try:
            await asyncio.shield(session.ended)
        finally:
            self.connected.clear()
            session.abort()
        if session.refusal is not None:
            return f"refused: {session.refusal}"
        return None if session.accepted else "connection closed before the handshake completed"

    async def _open(self, session: _HubSession) -> None:
        """Connect `session` to the hub: straight away, or once our TLS handshake (as the server) is done."""
        loop = asyncio.get_running_loop()
        if self.tls is None:
            await loop.create_connection(lambda: session, self.host, self.port)
            return
        transport, _ = await loop.create_connection(Paused, self.host, self.port)
        timeout = self.agent.config.limits.handshake_timeout
        try:
            secured = await secure(transport, self.tls, server_side=True, timeout=timeout)
        except OSError as exc:
            transport.abort()
            raise _TlsFailed(f"TLS handshake failed: {handshake_failure(exc, timeout)}{_tls_hint(exc)}") from None
        except BaseException:
            transport.abort()
            raise
        if secured is None:
            raise _TlsFailed("TLS handshake failed: connection closed by the peer")
        tls, early = secured
        early.hand_over(tls, session)

    def _opened(self) -> None:
        log.info("connected to hub %s as %r", self.address, agent_name(self.agent.config.name))
        self.connected.set()


class _TlsFailed(Exception):
    """Our TLS handshake with the hub failed; the message says why."""


# The first byte of a TLS record carrying a handshake message (a ClientHello).
_TLS_HANDSHAKE_RECORD = 0x16


def _tls_hint(exc: OSError) -> str:
    """The likely mistake behind a handshake that failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return " (is the hub's certificate from the CA in this agent's [tls] ca?)"
    if "does not speak TLS" in handshake_failure(exc, 0):
        return " (the hub has no --tls-* on this port)"
    return ""


def _connect_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "connect timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    assert isinstance(exc, OSError)
    return exc.strerror or str(exc)
