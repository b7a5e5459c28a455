"""Agents that dial in: the hub's listener, and the controller side of their handshake.

Only the TCP direction is reversed. On each accepted socket the hub runs an
ordinary `AgentClient`, which sends its HELLO at once and proves the hub's key;
the agent proves its own, as it would to any controller. Nothing reaches the
registry, and so no local client's request reaches the agent, before both proofs
verified. Then the name the agent announced in its HELLO (inside the transcript
the proofs cover) is claimed: a name already held is refused with ERROR
`name_in_use`, audited, and the agent retries later with its backoff.

Connections still in the handshake are bounded (`MAX_PENDING`); those accepted
beyond it wait their turn unread (at most `MAX_QUEUED`, more are closed at once
and retry with their backoff), so a burst of thousands of agents is served in
order instead of being sent back to wait. Each has `handshake_timeout` seconds
from its accept, so a flood of sockets that never speak cannot starve the hub's
local clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from shoal.protocol.connection import HandshakeComplete
from shoal.protocol.errors import AuthError, ErrorCode, ProtocolError
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import Message

from shoal.controller.client import AgentClient
from shoal.controller.hub.audit import HubAudit
from shoal.controller.hub.registry import DIALIN, HubAgent, Registry, check_agent_name
from shoal.controller.targets import Target

__all__ = ["DialInClient", "DialIns", "MAX_PENDING", "MAX_QUEUED"]

log = logging.getLogger("shoal.hub")

# Dial-in connections in the handshake at once: enough to keep the hub busy over a
# slow network, few enough that each handshake finishes soon after it starts.
MAX_PENDING = 512
# Accepted connections waiting for a handshake slot, unread; more are closed at
# once and retry later. Each holds a socket and about 6 KiB until its turn.
MAX_QUEUED = 8192


class DialInClient(AgentClient):
    """The hub's end of a connection an agent opened: a controller that starts on accept."""

    def __init__(self, owner: DialIns) -> None:
        super().__init__(Target(name="(dialling in)", host="0.0.0.0", port=1), owner.key, owner.keepalive)
        self._owner = owner
        self.address = "?"
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        host, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("?", 1)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = self.address
        if self._owner.admit(self):
            self._deadline = asyncio.get_running_loop().call_later(self._owner.handshake_timeout, self._too_slow)

    def start_handshake(self) -> None:
        """Our turn (DialIns.admit): say HELLO and read the agent's."""
        assert self.transport is not None
        self.transport.resume_reading()
        self.conn.start()
        self.flush()

    def dispatch(self, event: Message | HandshakeComplete) -> None:
        super().dispatch(event)
        if isinstance(event, HandshakeComplete):
            self._cancel_deadline()
            self._owner.authenticated(self, event.peer.name)

    def peer_failed(self, exc: AuthError | ProtocolError) -> None:
        self._owner.audit.record("auth_failed" if isinstance(exc, AuthError) else "protocol_error",
                                 peer=self.address, reason=str(exc) if not isinstance(exc, AuthError) else exc.reason,
                                 key_id=getattr(exc, "key_id", None))
        super().peer_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._owner.done_with(self)
        super().connection_lost(exc)

    def refuse(self, code: str, reason: str) -> None:
        """Tell the agent why (a tagged ERROR once authenticated) and hang up."""
        self.conn.fail(code, reason)
        self.flush()
        self.abort()

    def _too_slow(self) -> None:
        self._deadline = None
        self._owner.audit.record("refused", peer=self.address, reason="handshake not completed in time")
        self.abort()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class DialIns:
    """Every connection agents opened to this hub, from accept to the registry.

    Args:
        registry: where authenticated agents are named.
        key: the hub's key (None: no authentication, loopback only).
        keepalive: seconds of silence before the hub pings an agent (lost after 3x).
        handshake_timeout: seconds an agent has to authenticate after connecting.
        audit: where refusals go.
        on_agent: called with each agent that took its name; returns when its
            connection is over (the hub's bookkeeping for that agent).
    """

    def __init__(self, registry: Registry, key: SharedKey | None, keepalive: float, handshake_timeout: float,
                 audit: HubAudit, on_agent: Callable[[HubAgent], object]) -> None:
        self.registry = registry
        self.key = key
        self.keepalive = keepalive
        self.handshake_timeout = handshake_timeout
        self.audit = audit
        self.pending: set[DialInClient] = set()
        self.queued: deque[DialInClient] = deque()
        self._on_agent = on_agent
        self._servers: list[asyncio.AbstractServer] = []
        self.addresses: list[str] = []
        self.draining = False

    async def listen(self, host: str, port: int) -> None:
        """Accept agents on host:port (port 0: any free one, listed in `addresses`)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: DialInClient(self), host, port, reuse_address=True, backlog=4096)
        self._servers.append(server)
        for sock in server.sockets:
            bound_host, bound_port = sock.getsockname()[:2]
            self.addresses.append(f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}")

    def admit(self, client: DialInClient) -> bool:
        """Start a new connection's handshake, or queue it unread while MAX_PENDING are
        in theirs; False (and closed) when draining or the queue is full too."""
        if self.draining or len(self.queued) >= MAX_QUEUED:
            client.abort()
            return False
        if len(self.pending) < MAX_PENDING:
            self.pending.add(client)
            client.start_handshake()
        else:
            assert client.transport is not None
            client.transport.pause_reading()
            self.queued.append(client)
        return True

    def done_with(self, client: DialInClient) -> None:
        """`client` left the handshake (authenticated or gone): start the next queued one."""
        if client in self.pending:
            self.pending.discard(client)
            while self.queued and len(self.pending) < MAX_PENDING:
                waiting = self.queued.popleft()
                if not waiting.closed and waiting.transport is not None and not waiting.transport.is_closing():
                    self.pending.add(waiting)
                    waiting.start_handshake()
        elif self.queued:
            try:
                self.queued.remove(client)
            except ValueError:
                pass

    def authenticated(self, client: DialInClient, name: str) -> None:
        """Both proofs verified: give the agent its name, or refuse it."""
        self.done_with(client)
        why = check_agent_name(name)
        if why is not None:
            self.audit.record("refused", peer=client.address, key_id=client.conn.key_id, reason=why)
            return client.refuse(ErrorCode.BAD_HELLO, why)
        agent = HubAgent(name=name, client=client, address=client.address, kind=DIALIN)
        if not self.registry.claim(agent):
            held = self.registry.holder(name) or "taken"
            self.audit.record("name_in_use", peer=client.address, key_id=client.conn.key_id, name=name, holder=held)
            return client.refuse(ErrorCode.NAME_IN_USE, f"name {name!r} is in use: {held}")
        client.name = name
        client.target = Target(name=name, host=client.address.rpartition(":")[0].strip("[]") or "?", port=1)
        self.audit.record("agent_connected", peer=client.address, key_id=client.conn.key_id, name=name,
                          version=client.agent_version)
        self._on_agent(agent)

    def stop_accepting(self) -> None:
        self.draining = True
        for server in self._servers:
            server.close()
        for client in [*self.pending, *self.queued]:
            client.abort()
        self.queued.clear()

    async def close(self) -> None:
        self.stop_accepting()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
