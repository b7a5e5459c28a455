"""The hub's local socket: clients on this machine reach every agent through one connection.

A client connects to the hub's Unix socket (mode 0600; the peer's uid, from
SO_PEERCRED, must be the hub's own) and speaks the ordinary protocol to it as a
controller, without a key: the socket's permissions and the uid check are its
authentication. It then opens a *link* per agent (LINK_OPEN by name) and sends
that agent's messages inside LINKED frames (`shoal.protocol.link`). The hub
multiplexes them onto its one warm, authenticated connection to each agent,
renumbering requests (`shoal.controller.hub.forward`), so a `shoal run --hub`
costs one local connection and no handshake at all. Everything the agent does
for it is done under the hub's key, within that key's policy.

A client's protocol error fails that client's connection only; its requests
are abandoned on the agents (cancelled or drained), as are those of a client
that disconnects or closes a link.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from functools import partial
from typing import TYPE_CHECKING

from shoal.protocol.connection import Connection, HandshakeComplete, Role, State
from shoal.protocol.errors import AuthError, ErrorCode, ProtocolError, RemoteProtocolError, ShoalError
from shoal.protocol.frames import MAX_FRAME_SIZE_CEILING
from shoal.protocol.link import HUB_FEATURE, INNER_HEAD, PING_LINKS_FEATURE, inner_message, link_message
from shoal.protocol.messageclass import replace
from shoal.protocol.messages import (
    Error,
    Goodbye,
    HostsList,
    HostsReply,
    LinkClose,
    Linked,
    LinkOpen,
    LinkOpened,
    Message,
    MessageType,
    Ping,
    PingLinks,
    Pong,
)

from shoal.hostio.driver import FrameDriver
from shoal.hostio.unixsock import peer_uid
from shoal.controller.hub.forward import STARTS, Forward
from shoal.controller.hub.pinground import PingRound
from shoal.controller.hub.registry import HubAgent

if TYPE_CHECKING:
    from shoal.controller.hub.server import Hub

__all__ = ["LocalSession", "Link", "PASSED_FEATURES", "peer_uid"]

log = logging.getLogger("shoal.hub")

# The agent features a link passes on: those the hub carries unchanged (fields of
# requests it knows). A feature naming a request type it does not carry is left
# out, so the client does not try it.
PASSED_FEATURES = frozenset({"idle_timeout", "user", "pty", "put_batch", "tree_user", "relay"})
# Types a client may send on a request it no longer has (or never had): the agent's
# answer, given by the hub in its place (PROTOCOL.md §3 Requests).
_UNKNOWN_ANSWERED = frozenset({MessageType.STDIN, MessageType.STDIN_EOF, MessageType.SIGNAL, MessageType.CANCEL})


class Link:
    """Link `link_id` of a local client: its requests on one agent."""

    def __init__(self, session: LocalSession, link_id: int, agent: HubAgent) -> None:
        self.session = session
        self.link_id = link_id
        self.agent = agent
        self.forwards: dict[int, Forward] = {}
        self.open = True

    def from_client(self, msg: Message, body_size: int) -> None:
        """One message the client sent on this link. Raises RemoteProtocolError for the client's mistakes."""
        limit = self.agent.client.conn.peer_max_frame
        if body_size > limit:
            if msg.TYPE in STARTS and msg.request_id not in self.forwards:
                # A request the agent cannot take fails alone, unsent: one host's limit must
                # not end the client's requests on every other host.
                return self.to_client(Error(msg.request_id, code=ErrorCode.BAD_REQUEST, message=(
                    f"a {msg.TYPE.name} of {body_size} bytes exceeds {self.agent.name}'s frame limit of {limit}")))
            raise RemoteProtocolError(f"a {msg.TYPE.name} of {body_size} bytes exceeds the agent's frame limit",
                                      ErrorCode.FRAME_TOO_LARGE)
        if isinstance(msg, Ping):
            self._ping(msg.t0)
        elif msg.request_id == 0:
            return  # PONG, GOODBYE, a connection ERROR: nothing for the agent
        elif msg.TYPE in STARTS:
            self._start(msg)
        elif (forward := self.forwards.get(msg.request_id)) is not None:
            forward.from_client(msg)
        elif msg.TYPE in _UNKNOWN_ANSWERED:
            self.to_client(Error(msg.request_id, code=ErrorCode.UNKNOWN_REQUEST,
                                 message=f"no open request {msg.request_id}"))

    def _start(self, msg: Message) -> None:
        rid = msg.request_id
        if rid in self.forwards:
            self.to_client(Error(rid, code=ErrorCode.DUPLICATE_REQUEST, message=f"request id {rid} is in use"))
        elif self.agent.client.closed:
            self.to_client(Error(rid, code=ErrorCode.UNSUPPORTED, message="the agent's connection is closing"))
        else:
            self.forwards[rid] = Forward(self, rid, self.agent.client, msg)
            self.session.hub.request_started()

    def _ping(self, t0: float) -> None:
        """Ping the agent for the client with the client's own t0, answering when its
        PONG comes: no task or future per ping, and the agent's PONG goes back as it
        is unless its t0 had to change (another PING in flight on the agent had it)."""
        try:
            self.agent.client.send_ping(partial(self._ponged, t0), t0)
        except ShoalError:
            return  # the agent is gone: the link closes with the reason

    def _ponged(self, t0: float, pong: Pong | ShoalError) -> None:
        if not isinstance(pong, Pong):
            return  # the agent is gone: the link closes with the reason
        self.to_client(pong if pong.t0 == t0 else replace(pong, t0=t0))

    def to_client(self, msg: Message) -> None:
        if self.open:
            self.session.send(link_message(self.link_id, msg))

    def forget(self, forward: Forward) -> None:
        if self.forwards.get(forward.client_rid) is forward:
            del self.forwards[forward.client_rid]
        self.session.hub.request_ended()

    def close(self, reason: str | None = None) -> None:
        """The client is done with the link (reason None), or the agent is gone (say why)."""
        if not self.open:
            return
        self.open = False
        if reason is not None:
            self.session.send(LinkClose(self.link_id, reason=reason))
        for forward in list(self.forwards.values()):
            forward.abandon()
        self.session.links.pop(self.link_id, None)
        self.session.hub.link_closed(self)


class LocalSession(FrameDriver):
    """One local client's connection to the hub."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(Connection(Role.AGENT, max_frame_size=MAX_FRAME_SIZE_CEILING, software=hub.software,
                                    features=[HUB_FEATURE, PING_LINKS_FEATURE]))
        self.hub = hub
        self.links: dict[int, Link] = {}
        self.rounds: dict[int, PingRound] = {}  # PING_LINKS not yet answered `done`
        self.uid = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self.uid = peer_uid(sock) if sock is not None else -1
        if self.uid != os.geteuid():
            self.hub.audit.record("client_refused", uid=self.uid, reason=f"uid {self.uid} is not the hub's")
            self.conn.fail(ErrorCode.AUTH_FAILED, f"uid {self.uid} may not use this hub (it serves uid {os.geteuid()} only)")
            self.abort()
            return
        self.hub.sessions.add(self)

    def dispatch(self, event: Message | HandshakeComplete) -> None:
        if isinstance(event, HandshakeComplete):
            return
        if isinstance(event, Linked):
            link = self.links.get(event.request_id)
            if link is not None:  # else a link the hub closed: the client will hear LINK_CLOSE
                link.from_client(inner_message(event, Role.CONTROLLER), len(event.data) - INNER_HEAD)
        elif isinstance(event, LinkOpen):
            self._open_link(event)
        elif isinstance(event, LinkClose):
            link = self.links.get(event.request_id)
            if link is not None:
                link.close()
        elif isinstance(event, PingLinks):
            self._ping_links(event)
        elif isinstance(event, HostsList):
            self.send(HostsReply(event.request_id, hosts=[a.describe() for a in self.hub.registry.agents()]))
        elif isinstance(event, Ping):
            now = time.time()  # the hub's own clock, as any PONG's (PROTOCOL.md section 1)
            self.send(Pong(0, t0=event.t0, t1=now, t2=now, version=self.hub.software))
        elif isinstance(event, Goodbye):
            self.abort()
        elif not isinstance(event, (Error, Pong)):
            self.send(Error(event.request_id, code=ErrorCode.UNSUPPORTED,
                            message=f"{event.TYPE.name} is not handled by a hub"))

    def _ping_links(self, msg: PingLinks) -> None:
        rid = msg.request_id
        if rid in self.links or rid in self.rounds:
            self.send(Error(rid, code=ErrorCode.DUPLICATE_REQUEST, message=f"request id {rid} is in use"))
            return
        self.rounds[rid] = PingRound(self, rid, msg.links, msg.t0)
        self.rounds[rid].start()

    def _open_link(self, msg: LinkOpen) -> None:
        rid = msg.request_id
        agent = self.hub.registry.get(msg.host)
        if rid in self.links or rid in self.rounds:
            self.send(Error(rid, code=ErrorCode.DUPLICATE_REQUEST, message=f"request id {rid} is in use"))
        elif self.hub.draining:
            self.send(Error(rid, code=ErrorCode.UNKNOWN_HOST, message="the hub is shutting down", status=255))
        elif agent is None or agent.client.closed:
            self.send(Error(rid, code=ErrorCode.UNKNOWN_HOST, status=255,
                            message=self.hub.why_not_connected(msg.host)))
        else:
            link = self.links[rid] = Link(self, rid, agent)
            self.hub.link_opened(link)
            peer = agent.client
            features = sorted(PASSED_FEATURES.intersection(peer.features))
            self.send(LinkOpened(rid, host=agent.name, address=agent.address, software=peer.agent_version,
                                 features=features,
                                 max_frame=min(peer.conn.peer_max_frame, self.conn.peer_max_frame - INNER_HEAD)))

    def send(self, msg: Message) -> None:
        """Queue `msg`; it is written with everything else sent in this turn of the loop.
        Nothing once the client has gone, even before connection_lost says so."""
        if not self.closed and self.conn.state is State.OPEN:
            self.conn.send(msg)
            self.flush_soon()

    def peer_failed(self, exc: AuthError | ProtocolError) -> None:
        log.warning("local client (uid %d) broke the protocol: %s", self.uid, exc)
        self.conn.fail(exc.code if isinstance(exc, ProtocolError) else ErrorCode.AUTH_FAILED, str(exc))
        self.abort()

    def internal_error(self, exc: Exception) -> None:
        log.error("internal error on a local client's connection, closing it", exc_info=exc)
        self.conn.fail(ErrorCode.INTERNAL, "internal error")
        self.abort()

    def write_failed(self, exc: OSError) -> None:
        self.abort()

    def abort(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        for link in list(self.links.values()):
            link.close()
        self.hub.sessions.discard(self)
