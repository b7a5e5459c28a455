"""One local client's request carried to an agent: ids mapped, every frame checked.

The hub shares one authenticated connection per agent among all its local
clients, so a client breaking the protocol must never reach the agent: the agent
would close the connection, and every other client's commands on it with it. A
`Forward` therefore checks each client frame of its request before it is sent on,
with the rules the agent applies: the shared `RequestChannel` of its kind (the
table and the windows, a put's and a batch's data included); the client's mistakes
fail the client's own connection (`shoal.controller.hub.local`).

Toward the client the hub stands where the agent stands, so the channel is kept
with the agent's role: the client's frames are what it `receive`s, the agent's
what it `send`s. A Forward sits in the agent client's `requests` under the id
the hub chose, so `AgentClient.dispatch` hands it the agent's frames unchanged.

When the client goes away its requests are *abandoned*, not dropped: a running
command is cancelled (CANCEL, as a lost connection would kill it on a direct
one), a job attach or a download is read to its end and discarded (granting
windows back as the data arrives, so the agent's request ends), and an upload is
ended with a digest that cannot match, so the agent removes its temp file and
leaves the destination untouched. A relayed stream is closed (RELAY_CLOSE). A
PUT_BATCH reaches the agent only whole: the hub holds it and its data (at most
MAX_BATCH_BYTES) until the last byte is in, so a batch its client left never
reaches the agent, as on a direct connection that dropped. Every request thus
ends on the agent and frees its slot there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.protocol.connection import Role
from shoal.protocol.defaults import MAX_BATCH_BYTES
from shoal.protocol.errors import LocalProtocolError, RemoteProtocolError
from shoal.protocol.messageclass import replace
from shoal.protocol.messages import (
    Cancel,
    Error,
    Exec,
    FileData,
    FileEnd,
    FileInfo,
    Message,
    MessageType,
    PutBatch,
    RelayClose,
    Window,
)
from shoal.protocol.request import OPENERS, RequestChannel, RequestKind, request_kind

from shoal.controller.client import AgentClient

if TYPE_CHECKING:
    from shoal.controller.hub.local import Link

__all__ = ["Forward", "STARTS", "ABANDON_GRACE"]

_T = MessageType
# Request-opening types the hub carries: every kind the shared tables know.
STARTS = frozenset(OPENERS)

# Seconds between the signals of the CANCEL an abandoned command gets: it is gone
# within about a second, as when a direct controller's connection drops.
ABANDON_GRACE = 0.5
# The digest an abandoned upload is ended with: no content hashes to it, so the agent refuses the put.
_NO_DIGEST = "0" * 64


class Forward:
    """Client request `client_rid` of `link`, sent to the agent as `agent_rid`."""

    def __init__(self, link: Link, client_rid: int, agent: AgentClient, start: Message) -> None:
        self.link = link
        self.client_rid = client_rid
        self.agent = agent
        self.agent_rid = agent.new_request_id()
        self.kind = start.TYPE
        self.detached = isinstance(start, Exec) and start.detach
        # The agent's own table and windows for this request (we stand where the agent does).
        kind = request_kind(start)
        assert kind is not None, start.TYPE  # the link forwards only STARTS
        self.channel = RequestChannel(Role.AGENT, client_rid, kind)
        self.held: list[Message] | None = None  # a batch not yet whole, and its data so far
        self.abandoned = False
        self.done = False
        self.channel.receive(start)
        agent.requests[self.agent_rid] = self
        if isinstance(start, PutBatch) and 0 < self.channel.stdin_credit <= MAX_BATCH_BYTES:
            self.held = [start]  # (a larger one the agent refuses at once)
            return
        self._to_agent(start)

    # -- from the client ---------------------------------------------------------

    def from_client(self, msg: Message) -> None:
        """Check a client frame of this request and send it on.

        Raises:
            RemoteProtocolError: the client broke the request's rules (order, window).
        """
        if isinstance(msg, Error):
            return self._to_agent(msg)  # only reported, as on a direct connection
        self.channel.receive(msg)
        if self.held is not None and isinstance(msg, FileData):
            return self._hold(msg)
        self._to_agent(msg)
        if self.channel.done:
            self._finish()  # the client closed its relayed stream: nothing more comes

    def _hold(self, data: FileData) -> None:
        """Keep a batch's data until the batch is whole, then send it all."""
        assert self.held is not None
        self.held.append(data)
        if self.channel.stdin_credit == 0:
            held, self.held = self.held, None
            for msg in held:
                self._to_agent(msg)

    def _to_agent(self, msg: Message) -> None:
        self.agent.send(replace(msg, request_id=self.agent_rid))

    # -- from the agent (AgentClient.dispatch) -----------------------------------

    def receive(self, msg: Message) -> None:
        try:
            self.channel.send(msg)
        except LocalProtocolError as exc:  # the agent broke its own request: as a direct client would
            self.agent.protocol_violation(f"agent broke request {self.agent_rid}: {exc}", exc.code)
            return
        if self.abandoned:
            self._drain(msg)
        else:
            self.link.to_client(replace(msg, request_id=self.client_rid))
        if self.channel.done:
            self._finish()

    def lost(self, reason: str, code: str = "") -> None:
        """The agent's connection is gone; the link says so to the client (`Link.agent_lost`)."""
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.agent.requests.pop(self.agent_rid, None)
        self.link.forget(self)

    # -- the client went away -----------------------------------------------------

    def abandon(self) -> None:
        """End this request on the agent without anyone reading it (module docstring)."""
        if self.done or self.abandoned:
            return
        self.abandoned = True
        if self.kind is _T.EXEC and not self.detached:
            self._as_client(Cancel(self.client_rid, grace=ABANDON_GRACE))
        self._end_put()  # an upload whose FILE_INFO is still to come is ended when it comes (`_drain`)
        if self.kind is _T.RELAY_OPEN:
            self._as_client(RelayClose(self.client_rid, reason="the client went away"))
        if self.held is not None or self.channel.done:
            self._finish()  # a batch the agent never saw, a stream closed: the agent owes nothing

    def _end_put(self) -> None:
        if self.channel.kind is RequestKind.PUT:
            self._as_client(FileEnd(self.client_rid, sha256=_NO_DIGEST))

    def _drain(self, msg: Message) -> None:
        """Grant back what an abandoned stream sent, so the agent can reach its end."""
        if isinstance(msg, FileInfo):
            self._end_put()
        elif msg.TYPE in (_T.STDOUT, _T.STDERR, _T.FILE_DATA) and len(msg.data) > 0:  # type: ignore[attr-defined]
            self._as_client(Window(self.client_rid, bytes=len(msg.data)))  # type: ignore[attr-defined]

    def _as_client(self, msg: Message) -> None:
        """Send `msg` in the absent client's place, if the request's state allows it."""
        try:
            self.channel.receive(msg)
        except RemoteProtocolError:
            return  # the request is past the point where this means anything
        self._to_agent(msg)
