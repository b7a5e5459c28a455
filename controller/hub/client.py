"""A local client's side of the hub: one connection, and a link per agent that acts as a client.

`HubConnection.connect(path)` opens the hub's Unix socket; `link(target)` opens a
link to the agent the hub knows by the target's name and returns a `HubLink`, an
`AgentClient` whose frames travel inside the hub connection instead of over a
socket of its own. Everything built on `AgentClient` (commands, transfers,
metrics, jobs, ping) works on it unchanged; `ConnectOptions.connect` hands one out
when a hub is configured, so the CLI and the library reach agents through the hub
exactly as they reach them directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable

from shoal.protocol.connection import Connection, HandshakeComplete, Role
from shoal.protocol.errors import (
    AuthError,
    ErrorCode,
    ProtocolError,
    RemoteCommandError,
    ShoalConnectionError,
    ShoalTimeoutError,
)
from shoal.protocol.link import HUB_FEATURE, PING_LINKS_FEATURE, inner_message, link_data, link_message
from shoal.protocol.messages import (
    Error,
    HostsList,
    HostsReply,
    LinkClose,
    Linked,
    LinkOpen,
    LinkOpened,
    MAX_PING_LINKS,
    LinkPongs,
    Message,
    MessageType,
    Ping,
    PingLinks,
    Pong,
    check_finite,
)

from shoal.hostio.driver import FrameDriver
from shoal.hostio.unixsock import peer_uid
from shoal.controller.client import AgentClient
from shoal.controller.targets import Target

__all__ = ["HubAccess", "HubConnection", "HubLink", "HubNotRunning"]

log = logging.getLogger("shoal.controller")


class HubNotRunning(ShoalConnectionError):
    """Nothing serves the hub socket: one line for the whole run, not one per host."""

    def __init__(self, path: str, reason: str, *, plain: bool = False) -> None:
        super().__init__(f"hub {path}", reason if plain else f"not running ({reason})")


def _refused(path: str) -> HubNotRunning:
    """A refused connect: a socket nobody serves, or no socket at all (a hub.toml given as --hub)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFSOCK
    if stat.S_ISSOCK(mode):
        return HubNotRunning(path, "connection refused")
    kind = "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "a device or pipe"
    return HubNotRunning(path, f"not a socket but {kind}; --hub names the socket the hub serves (its --socket)",
                         plain=True)


class HubLink(AgentClient):
    """A link to one agent through the hub: an AgentClient without a socket of its own."""

    def __init__(self, hub: HubConnection, target: Target, link_id: int) -> None:
        super().__init__(target, None, 0.0)
        self.hub = hub
        self.link_id = link_id
        self.address = ""
        self._features: list[str] = []

    def opened(self, reply: LinkOpened) -> None:
        self.agent_version = reply.software
        self.address = reply.address
        self._features = list(reply.features)
        self.conn.peer_max_frame = max(1, reply.max_frame)

    @property
    def features(self) -> list[str]:
        return self._features

    def send(self, msg: Message) -> None:
        if not self.closed:
            self.hub.send(link_message(self.link_id, msg))

    def send_data(self, type_: MessageType, request_id: int, data: bytes) -> None:
        if not self.closed:
            self.hub.send(link_data(self.link_id, type_, request_id, data))

    async def drain(self) -> None:
        await self.hub.drain()

    def send_ping(self, answer: Callable[[Pong | ShoalConnectionError], None], t0: float | None = None) -> float:
        """Ping the agent in the hub's next PING_LINKS: every link pinged in one turn of
        the loop goes in one frame (`HubConnection.ping_link`). Returns the round's t0.
        A hub without PING_LINKS gets a PING inside the link."""
        if not self.hub.ping_links:
            return super().send_ping(answer, t0)
        if self.closed:
            raise ShoalConnectionError(self.name, self.close_reason or "connection closed")
        return self.hub.ping_link(self, answer, t0)

    def protocol_violation(self, reason: str, code: str = ErrorCode.PROTOCOL_ERROR) -> None:
        self.hub.close_link(self)
        self.hub.forget_pings(self, f"protocol error: {reason}")
        self._fail(ShoalConnectionError(self.name, f"protocol error: {reason}"))

    def lost(self, reason: str) -> None:
        """The hub closed the link (the agent went away) or the hub connection ended."""
        self.hub.forget_pings(self, reason)
        self._fail(ShoalConnectionError(self.name, reason))
        self._closed_event.set()

    def abort(self) -> None:
        if not self.closed:
            self.hub.close_link(self)
        self.hub.forget_pings(self, "closed by controller")
        self._fail(ShoalConnectionError(self.name, "closed by controller"))
        self._closed_event.set()

    async def close(self) -> None:
        self.close_reason = self.close_reason or "closed by controller"
        self.abort()


Answer = Callable[[Pong | ShoalConnectionError], None]


class _PingRound:
    """One PING_LINKS in the making or in flight: its t0 and each link's answer."""

    __slots__ = ("request_id", "t0", "answers")

    def __init__(self, request_id: int, t0: float) -> None:
        self.request_id = request_id
        self.t0 = t0
        self.answers: dict[int, Answer] = {}


class HubConnection(FrameDriver):
    """One local connection to a hub, carrying many links. Create with `connect()`."""

    dispatch_after_close = True

    def __init__(self, path: str) -> None:
        super().__init__(Connection(Role.CONTROLLER))
        self.path = path
        self.links: dict[int, HubLink] = {}
        self.close_reason: str | None = None
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._next_id = 1
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed_event = asyncio.Event()
        self._next_round: _PingRound | None = None
        self._rounds: dict[int, _PingRound] = {}
        self.ping_links = False  # the hub named PING_LINKS_FEATURE

    @classmethod
    async def connect(cls, path: str, timeout: float = 10.0) -> HubConnection:
        """Connect to the hub serving `path`.

        Raises:
            HubNotRunning: nothing listens there (or it is not a hub), or this user may not
                connect to it.
            ShoalConnectionError: the hub refused us (another uid), another uid serves
                the socket (nothing is sent to it), or the hub broke the protocol.
        """
        hub = cls(path)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_unix_connection(lambda: hub, path), timeout)
        except FileNotFoundError:
            raise HubNotRunning(path, "no socket") from None
        except ConnectionRefusedError:
            raise _refused(path) from None
        except PermissionError:  # a hub of another user's, most likely running: not "not running"
            raise HubNotRunning(path, f"permission denied: the socket or its directory is not this user's "
                                f"(uid {os.geteuid()}), and a hub serves only the user it runs as",
                                plain=True) from None
        except OSError as exc:
            raise HubNotRunning(path, exc.strerror or str(exc)) from None
        except asyncio.TimeoutError:
            raise ShoalTimeoutError("connect", timeout, f"hub {path}") from None
        _check_server(hub, path)
        hub.conn.start()
        hub.flush()
        try:
            await asyncio.wait_for(hub._ready, timeout)
        except asyncio.TimeoutError:
            hub._abort()
            raise ShoalTimeoutError("handshake", timeout, f"hub {path}") from None
        except BaseException:
            hub._abort()
            raise
        return hub

    # -- links ---------------------------------------------------------------------

    async def link(self, target: Target) -> HubLink:
        """Open a link to the agent the hub knows as `target.name`.

        Raises:
            ShoalConnectionError: the hub has no such agent (unreachable, with its reason).
        """
        rid = self._new_id()
        link = HubLink(self, target, rid)
        self.links[rid] = link
        try:
            reply = await self._request(LinkOpen(rid, host=target.name))
        except RemoteCommandError as exc:
            self.links.pop(rid, None)
            raise ShoalConnectionError(target.name, exc.reason) from None
        assert isinstance(reply, LinkOpened)
        link.opened(reply)
        return link

    def close_link(self, link: HubLink) -> None:
        if self.links.pop(link.link_id, None) is not None:
            self.send(LinkClose(link.link_id))

    async def hosts(self) -> list[dict[str, object]]:
        """Every agent the hub holds a connection to (PROTOCOL.md section 7, HOSTS_REPLY)."""
        reply = await self._request(HostsList(self._new_id()))
        assert isinstance(reply, HostsReply)
        return list(reply.hosts)

    async def ping(self) -> float:
        """Seconds the hub itself takes to answer a PING (no agent involved): whether it
        stays responsive, e.g. while thousands of agents dial in. One at a time."""
        start = time.perf_counter()
        await self._request(Ping(0, t0=time.time()))
        return time.perf_counter() - start

    def ping_link(self, link: HubLink, answer: Answer, t0: float | None = None) -> float:
        """Add `link` to the PING_LINKS sent at the end of this turn of the loop (with
        `t0`, or the clock); `answer` gets its PONG, or the reason it will not come.
        Returns the round's t0."""
        if t0 is not None:
            check_finite("t0", t0)  # as a PING's own: raises LocalProtocolError here, not later
        round_ = self._next_round
        if round_ is not None and (link.link_id in round_.answers or t0 is not None and t0 != round_.t0):
            self._send_ping_round()  # pinged twice in one turn, or another t0: the first goes now
            round_ = None
        if round_ is None:
            round_ = self._next_round = _PingRound(self._new_id(), time.time() if t0 is None else t0)
            asyncio.get_running_loop().call_soon(self._send_ping_round)
        round_.answers[link.link_id] = answer
        return round_.t0

    def _send_ping_round(self) -> None:
        round_, self._next_round = self._next_round, None
        if round_ is None:
            return
        if self.closed:
            return self._answer_lost(round_)
        links = list(round_.answers)
        for at in range(0, len(links), MAX_PING_LINKS):  # a round past the hub's limit goes as several
            chunk = links[at:at + MAX_PING_LINKS]
            part = round_ if at == 0 else _PingRound(self._new_id(), round_.t0)
            if at:
                part.answers = {link_id: round_.answers.pop(link_id) for link_id in chunk}
            self._rounds[part.request_id] = part
            self.send(PingLinks(part.request_id, links=chunk, t0=part.t0))

    def forget_pings(self, link: HubLink, reason: str) -> None:
        """`link` is closed: its pings not yet answered get `reason` now, and their answers
        from the hub, if any come, are ignored."""
        rounds = [*self._rounds.values(), *([self._next_round] if self._next_round is not None else [])]
        for round_ in rounds:
            answer = round_.answers.pop(link.link_id, None)
            if answer is not None:
                answer(ShoalConnectionError(link.name, reason))

    def _ponged(self, part: LinkPongs) -> None:
        round_ = self._rounds.get(part.request_id)
        if round_ is None:
            return
        answers = round_.answers
        for link_id, t1, t2 in zip(part.links, part.t1, part.t2):  # times finite: LINK_PONGS checked them
            answer = answers.pop(link_id, None)
            if answer is not None:
                link = self.links.get(link_id)
                answer(Pong(0, t0=round_.t0, t1=t1, t2=t2, version=link.agent_version if link else ""))
        for link_id, reason in zip(part.lost, part.reasons):
            answer = answers.pop(link_id, None)
            if answer is not None:
                answer(ShoalConnectionError(self._link_name(link_id), reason))
        if part.done:
            self._rounds.pop(part.request_id, None)  # (gone already if an answer ended the connection)
            self._answer_lost(round_, "the hub did not answer for it")

    def _answer_lost(self, round_: _PingRound, reason: str | None = None) -> None:
        answers, round_.answers = round_.answers, {}
        for link_id, answer in answers.items():
            answer(ShoalConnectionError(self._link_name(link_id), reason or self.close_reason or "connection lost"))

    def _link_name(self, link_id: int) -> str:
        link = self.links.get(link_id)
        return link.name if link is not None else f"hub {self.path} link {link_id}"

    async def _request(self, msg: Message) -> Message:
        if self.closed:
            raise ShoalConnectionError(f"hub {self.path}", self.close_reason or "connection closed")
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[msg.request_id] = fut
        self.send(msg)
        try:
            return await fut
        finally:
            self._pending.pop(msg.request_id, None)

    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    # -- frames --------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue `msg`; every link's messages of this turn of the loop go in one write."""
        if not self.closed:
            self.conn.send(msg)
            self.flush_soon()

    def dispatch(self, event: Message | HandshakeComplete) -> None:
        if isinstance(event, HandshakeComplete):
            if HUB_FEATURE not in event.peer.features:
                self._fail(f"{self.path} is not a hub's socket (it answered as {event.peer.software})")
            elif not self._ready.done():
                self.ping_links = PING_LINKS_FEATURE in event.peer.features
                self._ready.set_result(None)
            return
        if isinstance(event, Linked):
            link = self.links.get(event.request_id)
            if link is not None:
                link.dispatch(inner_message(event, Role.AGENT))
            return
        if isinstance(event, LinkClose):
            link = self.links.pop(event.request_id, None)
            if link is not None:
                link.lost(event.reason or "link closed by the hub")
            return
        if isinstance(event, LinkPongs):
            self._ponged(event)
            return
        if isinstance(event, Error) and event.request_id in self._rounds:  # the hub refused a PING_LINKS
            self._answer_lost(self._rounds.pop(event.request_id), f"hub error {event.code}: {event.message}")
            return
        if isinstance(event, Error) and event.request_id == 0:
            self._fail(f"hub error {event.code}: {event.message}")
            return
        fut = self._pending.get(event.request_id)
        if fut is not None and not fut.done():
            if isinstance(event, Error):
                fut.set_exception(RemoteCommandError(event.message, event.code, status=event.status))
            else:
                fut.set_result(event)

    def peer_failed(self, exc: AuthError | ProtocolError) -> None:
        self._fail(exc.reason if isinstance(exc, AuthError) else f"protocol error: {exc}")

    def write_failed(self, exc: OSError) -> None:
        self._fail(f"connection lost ({exc.strerror or exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(self.close_reason or "the hub closed the connection")
        self._closed_event.set()

    def _fail(self, reason: str) -> None:
        first = not self.closed
        self.closed = True
        if first:
            self.close_reason = self.close_reason or reason
        err = ShoalConnectionError(f"hub {self.path}", self.close_reason or reason)
        if not self._ready.done():
            self._ready.set_exception(err)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        rounds, self._rounds = list(self._rounds.values()), {}
        for round_ in rounds:
            self._answer_lost(round_, f"hub connection lost: {self.close_reason or reason}")
        for link in list(self.links.values()):
            link.lost(f"hub connection lost: {self.close_reason or reason}")
        self.links.clear()
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        else:
            self._closed_event.set()

    async def close(self) -> None:
        """Close every link and the connection; their requests are abandoned on the agents."""
        if self.transport is not None and not self.closed:
            self.close_reason = "closed by controller"
            self.closed = True
            self.flush()
            self.transport.close()
        elif self.transport is None:
            self._closed_event.set()
        for link in list(self.links.values()):
            link.lost("closed by controller")
        self.links.clear()
        await self._closed_event.wait()


def _check_server(hub: HubConnection, path: str) -> None:
    """Refuse a socket another uid serves before sending it a byte: whoever could bind the
    path (a stale socket in a shared directory) would get our commands, stdin and files."""
    sock = hub.transport.get_extra_info("socket") if hub.transport is not None else None
    if sock is None:
        raise HubNotRunning(path, "it closed the connection at once")
    served_by = peer_uid(sock)
    if served_by != os.geteuid():
        hub._abort()
        raise ShoalConnectionError(f"hub {path}", f"served by uid {served_by}, not by this user "
                                   f"(uid {os.geteuid()}): nothing was sent to it")


class HubAccess:
    """The hub a run goes through: connected on first use (or `open()`), closed once at the end.

    `ConnectOptions(hub=HubAccess(path))` makes every `connect(target)` a link
    through it.
    """

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.connection: HubConnection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> HubConnection:
        """The connection, made now if need be; HubNotRunning when nothing serves the path."""
        async with self._lock:
            if self.connection is None or self.connection.closed:
                self.connection = await HubConnection.connect(self.path, self.timeout)
            return self.connection

    async def link(self, target: Target) -> HubLink:
        return await (await self.open()).link(target)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
