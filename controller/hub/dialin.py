"""Agents that dial in: the hub's listener, and the controller side of their handshake.

Only the TCP direction is reversed. On each accepted socket the hub runs an
ordinary `AgentClient`, which sends its HELLO at once and proves the hub's key;
the agent proves its own, as it would to any controller. Nothing reaches the
registry, and so no local client's request reaches the agent, before both proofs
verified. Then the name the agent announced in its HELLO (inside the transcript
the proofs cover) is claimed: a name already held is refused with ERROR
`name_in_use`, audited, and the agent retries later with its backoff.

With TLS (`--tls-*`), each accepted socket first runs a TLS handshake in which
the hub is the client, as it is on every connection it opens: the agent presents
its certificate, the hub requires one from its CA and presents its own
(shoal.hostio.starttls, PROTOCOL.md section 7). The name the agent then claims
must be one its certificate names, as a controller checks the name it dialled.

Connections still in the handshake are bounded (`MAX_PENDING`); those accepted
beyond it wait their turn unread (at most `MAX_QUEUED`, more are closed at once
and retry with their backoff), so a burst of thousands of agents is served in
order instead of being sent back to wait. TLS handshakes in flight are bounded
too (`MAX_TLS_HANDSHAKES`; more are closed at once), and all of them together
to a share of the open-files limit (`UNAUTHENTICATED_FDS_SHARE`). Each connection
has `handshake_timeout` seconds from its accept, so a flood of sockets that never
speak can starve neither the hub's local clients nor its descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from collections import deque
from collections.abc import Callable

from shoal.protocol.connection import HandshakeComplete
from shoal.protocol.errors import AuthError, ErrorCode, ProtocolError
from shoal.protocol.frames import PREAUTH_MAX_FRAME
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import Message

from shoal.hostio.starttls import Paused, handshake_failure, secure
from shoal.hostio.tasks import TaskSet
from shoal.hostio.tls import certificate_names
from shoal.controller.client import AgentClient
from shoal.controller.hub.audit import HubAudit
from shoal.controller.hub.registry import DIALIN, HubAgent, Registry, check_agent_name
from shoal.controller.targets import Target

__all__ = ["DialInClient", "DialIns", "MAX_PENDING", "MAX_QUEUED", "MAX_TLS_HANDSHAKES", "UNAUTHENTICATED_FDS_SHARE"]

log = logging.getLogger("shoal.hub")

# Dial-in connections in the handshake at once: enough to keep the hub busy over a
# slow network, few enough that each handshake finishes soon after it starts.
MAX_PENDING = 512
# Accepted connections waiting for a handshake slot, unread; more are closed at
# once and retry later. Each holds a socket and about 6 KiB until its turn.
MAX_QUEUED = 8192
# Connections accepted in one turn of the loop (asyncio accepts as many as the
# backlog it was given): a burst of thousands accepted at once would hold the hub's
# local clients for a third of a second. The kernel keeps the rest queued, up to
# LISTEN_BACKLOG.
ACCEPTS_PER_TURN = 128
LISTEN_BACKLOG = 4096
# TLS handshakes in flight at once (with --tls-*), before a connection reaches the
# queue above; more are closed at once and retry later.
MAX_TLS_HANDSHAKES = 2048
# The share of the open-files limit that connections not yet authenticated (TLS
# handshakes, handshakes, the queue) may hold at most: the rest stays for local
# clients, agents and the audit log, however many sockets a stranger opens.
UNAUTHENTICATED_FDS_SHARE = 4


class DialInClient(AgentClient):
    """The hub's end of a connection an agent opened: a controller that starts on accept."""

    def __init__(self, owner: DialIns) -> None:
        super().__init__(Target(name="(dialling in)", host="0.0.0.0", port=1), owner.key, owner.keepalive)
        self._owner = owner
        self.address = "?"
        self._deadline: asyncio.TimerHandle | None = None
        self.ssl_object: ssl.SSLObject | None = None  # over TLS: whose certificate it showed
        self._audited = False  # its failure is recorded: the hang-up that follows is no news

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.address = self.name = _address(transport)
        self.ssl_object = transport.get_extra_info("ssl_object")
        self._tls = self.ssl_object is not None
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
        self._audited = True
        self._owner.audit.record("auth_failed" if isinstance(exc, AuthError) else "protocol_error",
                                 peer=self.address, reason=str(exc) if not isinstance(exc, AuthError) else exc.reason,
                                 key_id=getattr(exc, "key_id", None))
        super().peer_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self in self._owner.pending and self.conn.peer_hello is None and not self._audited:
            # With TLS 1.3 the agent judges our certificate after our side of the handshake is
            # done; without TLS, an agent wanting it hangs up on our plaintext HELLO.
            likely = "did it refuse the hub's TLS certificate?" if self._tls else "does it want TLS? this port has none"
            self._owner.audit.record("refused", peer=self.address,
                                     reason=f"the agent closed the connection before its HELLO ({likely})")
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


class _TlsGate(Paused):
    """An accepted socket until its TLS handshake is done; then a `DialInClient` takes it."""

    def __init__(self, owner: DialIns) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        owner = self._owner
        if (owner.draining or len(owner.handshakes) >= MAX_TLS_HANDSHAKES or len(owner.queued) >= MAX_QUEUED
                or len(owner.handshakes) + owner.unauthenticated() >= owner.max_unauthenticated):
            transport.abort()
            return
        owner.handshakes.spawn(self._upgrade(transport, _address(transport)), name="hub tls handshake")

    async def _upgrade(self, transport: asyncio.Transport, address: str) -> None:
        owner = self._owner
        assert owner.tls is not None
        try:
            secured = await secure(transport, owner.tls, server_side=False, timeout=owner.handshake_timeout)
        except OSError as exc:
            transport.abort()
            owner.audit.record("refused", peer=address,
                               reason=f"TLS handshake failed: {handshake_failure(exc, owner.handshake_timeout)}")
            return
        if secured is None:  # the agent left between its handshake and now
            return
        tls, early = secured
        if owner.draining:
            tls.abort()
            return
        early.hand_over(tls, DialInClient(owner))


class DialIns:
    """Every connection agents opened to this hub, from accept to the registry.

    Args:
        registry: where authenticated agents are named.
        key: the hub's key (None: no authentication, loopback only).
        keepalive: seconds of silence before the hub pings an agent (lost after 3x).
        handshake_timeout: seconds an agent has to authenticate after connecting
            (and as much again for its TLS handshake, with `tls`).
        audit: where refusals go.
        on_agent: called with each agent that took its name; returns when its
            connection is over (the hub's bookkeeping for that agent).
        tls: the hub's TLS client context (`shoal.hostio.tls.dialin_context`), or
            None for plain TCP.
    """

    def __init__(self, registry: Registry, key: SharedKey | None, keepalive: float, handshake_timeout: float,
                 audit: HubAudit, on_agent: Callable[[HubAgent], object], tls: ssl.SSLContext | None = None) -> None:
        self.registry = registry
        self.key = key
        self.tls = tls
        self.handshakes = TaskSet()  # TLS handshakes in flight
        self.keepalive = keepalive
        self.handshake_timeout = handshake_timeout
        self.audit = audit
        self.pending: set[DialInClient] = set()
        self.queued: deque[DialInClient] = deque()
        self._on_agent = on_agent
        self._servers: list[asyncio.AbstractServer] = []
        self.addresses: list[str] = []
        self.draining = False
        self.max_unauthenticated = MAX_PENDING + MAX_QUEUED + MAX_TLS_HANDSHAKES  # set by `listen`

    async def listen(self, host: str, port: int) -> None:
        """Accept agents on host:port (port 0: any free one, listed in `addresses`)."""
        loop = asyncio.get_running_loop()
        self.max_unauthenticated = _unauthenticated_cap()
        factory: Callable[[], asyncio.BaseProtocol] = (
            (lambda: DialInClient(self)) if self.tls is None else (lambda: _TlsGate(self)))
        server = await loop.create_server(factory, host, port, reuse_address=True, backlog=ACCEPTS_PER_TURN)
        self._servers.append(server)
        for sock in server.sockets:
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as same:  # a dup: asyncio's has no listen()
                same.listen(LISTEN_BACKLOG)  # the kernel's queue; asyncio accepts only its `backlog` per turn
            bound_host, bound_port = sock.getsockname()[:2]
            self.addresses.append(f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}")

    def admit(self, client: DialInClient) -> bool:
        """Start a new connection's handshake, or queue it unread while MAX_PENDING are
        in theirs; False (and closed) when draining or the queue is full too."""
        if self.draining or len(self.queued) >= MAX_QUEUED or self.unauthenticated() >= self.max_unauthenticated:
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

    def unauthenticated(self) -> int:
        """Connections past their TLS handshake (if any) and not yet authenticated."""
        return len(self.pending) + len(self.queued)

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
        why = (check_agent_name(name) or _certificate_refuses(client, name)
               or frame_limit_refuses(client.conn.peer_max_frame))
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
        self.handshakes.cancel_all()
        for client in [*self.pending, *self.queued]:
            client.abort()
        self.queued.clear()

    async def close(self) -> None:
        self.stop_accepting()
        await self.handshakes.wait(timeout=1)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


def _unauthenticated_cap() -> int:
    """Unauthenticated connections the open-files limit leaves room for (UNAUTHENTICATED_FDS_SHARE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    most = MAX_PENDING + MAX_QUEUED + MAX_TLS_HANDSHAKES
    return most if soft == resource.RLIM_INFINITY else max(1, min(most, soft // UNAUTHENTICATED_FDS_SHARE))


def _address(transport: asyncio.BaseTransport) -> str:
    """The peer's `host:port` (`[v6]:port`), as audit records and `shoal hosts` show it."""
    peer = transport.get_extra_info("peername")
    host, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("?", 1)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def frame_limit_refuses(announced: int) -> str | None:
    """Why an agent's HELLO `max_frame` is too small to serve (a dial-in agent or an
    inventory target): below the pre-auth limit no EXEC of any size fits, and every
    client request to it would fail."""
    if announced >= PREAUTH_MAX_FRAME:
        return None
    return f"a frame limit (max_frame) of {announced} bytes; a hub needs at least {PREAUTH_MAX_FRAME}"


def _certificate_refuses(client: DialInClient, name: str) -> str | None:
    """Why a TLS agent may not take `name`: its certificate does not name it. None over plain TCP."""
    if client.ssl_object is None:
        return None
    names = certificate_names(client.ssl_object.getpeercert(binary_form=True) or b"")
    wanted = name.casefold()
    for entry in names:
        if entry == wanted or (entry.startswith("*.") and wanted.partition(".")[2] == entry[2:]
                               and wanted.partition(".")[0]):
            return None
    return (f"name {name!r} is not in the agent's TLS certificate ({', '.join(names) or 'no names'}); "
            "start it with --name set to one of those")
