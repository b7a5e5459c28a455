"""A hub link's inner messages: one agent connection's message inside a LINKED frame.

A local client talks to many agents through a hub over one connection (PROTOCOL.md
section 7). Each link is a connection of its own in miniature: the client numbers
its requests as it would on a direct connection, and each of its messages travels
as the body of a LINKED frame whose request id names the link:

    offset 0  u8   type of the inner message
    offset 1  u32  its request id (the link's own numbering; 0 for PING/PONG)
    offset 5  ...  its body, exactly as a frame would carry it

Inner messages carry no MAC (the hub and the agent authenticate their own
connection) and no handshake: HELLO, AUTH and the hub's own types never travel
inside a link. Decoding checks all of it, and the direction, so a hub can refuse a
client's bad message before any byte of it reaches an agent.
"""

from __future__ import annotations

import re
import struct

from shoal.protocol.codec import decode_body, encode_body
from shoal.protocol.connection import Role
from shoal.protocol.errors import ErrorCode, RemoteProtocolError
from shoal.protocol.messages import AGENT_ONLY, CONTROLLER_ONLY, HUB_TYPES, Linked, Message, MessageType

__all__ = ["HUB_FEATURE", "check_agent_name", "PING_LINKS_FEATURE", "INNER_HEAD", "link_message", "link_data", "inner_message"]

# Named in a hub's HELLO `features` (PROTOCOL.md section 7), so a client knows it
# reached a hub that carries links, not an agent.
HUB_FEATURE = "hub"
# Named beside it by a hub that takes PING_LINKS; a client pings through an older
# hub with a PING inside each link.
PING_LINKS_FEATURE = "ping_links"

# What a dial-in agent's name may look like (PROTOCOL.md section 7): a host name, so
# node-set patterns can target it. The hub refuses any other; the agent checks its own
# at start, rather than retrying a name no hub will take.
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def check_agent_name(name: str) -> str | None:
    """Why `name` cannot be a dial-in agent's name, or None when it can."""
    if not name:
        return "the agent announced no name"
    if _AGENT_NAME.fullmatch(name) is None:
        return f"name {name!r} is not a host name (letters, digits, '.', '_' and '-', at most 253)"
    return None


_HEAD = struct.Struct(">BI")
# Bytes a LINKED body adds to the inner message's body.
INNER_HEAD = _HEAD.size
# What never travels inside a link: the handshake (a link has none) and the hub's own types.
_NEVER_INNER = HUB_TYPES | {MessageType.HELLO, MessageType.AUTH}
# What the role sending a LINKED frame may not put inside it: the other role's types.
_NOT_FROM: dict[Role, frozenset[MessageType]] = {Role.CONTROLLER: AGENT_ONLY, Role.AGENT: CONTROLLER_ONLY}


def link_message(link_id: int, msg: Message) -> Linked:
    """`msg` of link `link_id` as the LINKED frame that carries it."""
    return Linked(link_id, _HEAD.pack(msg.TYPE, msg.request_id) + encode_body(msg))


def link_data(link_id: int, type_: MessageType, request_id: int, data: bytes) -> Linked:
    """`link_message` for a raw-data message, without building it: its body is `data`."""
    return Linked(link_id, _HEAD.pack(type_, request_id) + data)


def inner_message(frame: Linked, sender: Role) -> Message:
    """The message a LINKED frame from `sender` carries.

    Raises:
        RemoteProtocolError: a body too short for its head (`bad_frame`), a type
            that never travels inside a link or that `sender` never sends
            (`wrong_direction`), or a body that does not decode (as for a frame).
    """
    if len(frame.data) < INNER_HEAD:
        raise RemoteProtocolError(f"LINKED body of {len(frame.data)} bytes holds no message head",
                                  ErrorCode.BAD_FRAME)
    type_, request_id = _HEAD.unpack_from(frame.data)
    if type_ in _NEVER_INNER:
        raise RemoteProtocolError(f"{MessageType(type_).name} never travels inside a link", ErrorCode.OUT_OF_ORDER)
    if type_ in _NOT_FROM[sender]:
        raise RemoteProtocolError(f"{MessageType(type_).name} inside a link from the {sender.value}",
                                  ErrorCode.WRONG_DIRECTION)
    return decode_body(type_, request_id, frame.data[INNER_HEAD:])
