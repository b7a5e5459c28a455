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
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from shoal.protocol.connection import HandshakeComplete
from shoal.protocol.errors import ErrorCode
from shoal.protocol.messages import Error, Message

from shoal.agent.config import parse_connect
from shoal.agent.session import AgentSession
from shoal.hostio.backoff import Backoff

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
    """One hub this agent keeps a connection to."""

    def __init__(self, agent: Agent, address: str) -> None:
        self.agent = agent
        self.address = address
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
        loop = asyncio.get_running_loop()
        name = agent_name(self.agent.config.name)
        try:
            _, session = await asyncio.wait_for(
                loop.create_connection(lambda: _HubSession(self.agent, name, self._opened), self.host, self.port),
                self.agent.config.limits.handshake_timeout)
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

    def _opened(self) -> None:
        log.info("connected to hub %s as %r", self.address, agent_name(self.agent.config.name))
        self.connected.set()


def _connect_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "connect timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    assert isinstance(exc, OSError)
    return exc.strerror or str(exc)
