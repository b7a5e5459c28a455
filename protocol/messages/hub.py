"""A hub's local socket (issue 20): requests to agents multiplexed over one connection.

A local client opens a link per agent (LINK_OPEN, by name) and sends that agent's
messages inside LINKED frames, each link with its own request ids. Framing of the
inner message: shoal.protocol.link; PROTOCOL.md section 7.
"""

from __future__ import annotations

from typing import Any

from shoal.protocol.errors import LocalProtocolError

from shoal.protocol.messageclass import field, message
from shoal.protocol.messages.core import Message, MessageType, check_finite

__all__ = ["LinkOpen", "LinkOpened", "Linked", "LinkClose", "HostsList", "HostsReply", "PingLinks", "LinkPongs",
           "HUB_TYPES", "MAX_PING_LINKS"]


@message
class LinkOpen(Message):
    """Open a link to the agent the hub knows as `host`; the request id names the link."""

    TYPE = MessageType.LINK_OPEN
    host: str = ""


@message
class LinkOpened(Message):
    """The link is open: what the agent announced in its HELLO, as the hub passes it on."""

    TYPE = MessageType.LINK_OPENED
    host: str = ""
    address: str = ""
    software: str = ""
    features: list[str] = field(default_factory=list)
    max_frame: int = 0


@message
class Linked(Message):
    """One message of the link's agent connection: type, request id and body (shoal.protocol.link)."""

    TYPE = MessageType.LINKED
    RAW = True
    data: bytes = b""


@message
class LinkClose(Message):
    """The link is over: the client is done with it, or the hub lost the agent (`reason`)."""

    TYPE = MessageType.LINK_CLOSE
    reason: str = ""


@message
class HostsList(Message):
    """Ask the hub which agents it holds connections to."""

    TYPE = MessageType.HOSTS_LIST


@message
class HostsReply(Message):
    """The hub's agents, one object each (PROTOCOL.md section 7)."""

    TYPE = MessageType.HOSTS_REPLY
    hosts: list[dict[str, Any]] = field(default_factory=list)


# Links one PING_LINKS may name: a client with more sends several.
MAX_PING_LINKS = 65536


@message
class PingLinks(Message):
    """PING the agents of many links at once, with one `t0`: a round to thousands of
    agents costs the client one frame and the hub no LINKED frame per agent."""

    TYPE = MessageType.PING_LINKS
    links: list[int] = field(default_factory=list)
    t0: float = 0.0

    def _validate(self) -> None:
        check_finite("t0", self.t0)
        if len(self.links) > MAX_PING_LINKS:
            raise LocalProtocolError(f"{len(self.links)} links in one PING_LINKS (at most {MAX_PING_LINKS})")
        if not all(0 < link <= 0xFFFFFFFF for link in self.links):
            raise LocalProtocolError("a link id is a request id, 1 to 2**32-1")


@message
class LinkPongs(Message):
    """Answers to a PING_LINKS as they come, in parts: `links[i]` answered with the
    agent's `t1[i]` and `t2[i]`; `lost[i]` will not answer (`reasons[i]`); `done`
    on the last part."""

    TYPE = MessageType.LINK_PONGS
    links: list[int] = field(default_factory=list)
    t1: list[float] = field(default_factory=list)
    t2: list[float] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    done: bool = False

    def _validate(self) -> None:
        if not len(self.links) == len(self.t1) == len(self.t2) or len(self.lost) != len(self.reasons):
            raise LocalProtocolError("LINK_PONGS lists of different lengths")
        for times in (self.t1, self.t2):
            for t in times:
                check_finite("time", t)


# Types of a hub's local socket only: never sent to an agent, never inside a link.
HUB_TYPES = frozenset({
    MessageType.LINK_OPEN, MessageType.LINK_OPENED, MessageType.LINKED, MessageType.LINK_CLOSE,
    MessageType.HOSTS_LIST, MessageType.HOSTS_REPLY, MessageType.PING_LINKS, MessageType.LINK_PONGS,
})
