"""Checks a stream state machine (a `shoal.protocol.channel.Channel`) against its table,
and reads PROTOCOL.md's copy of the table: shared by the request and relay tests."""

from __future__ import annotations

import re
from enum import Enum

import pytest

from shoal.protocol.channel import Channel
from shoal.protocol.connection import Role
from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.messages import MessageType

BIG = 1 << 30
Path_ = dict[Enum, list[tuple[Role, MessageType]]]  # the shortest legal way into each state


def step(ch: Channel, sender: Role, type_: MessageType, amount: int = 0) -> None:
    if sender is ch.our_role:
        ch.send_data(type_, amount)
    else:
        ch.receive_data(type_, amount)


def channel_in(cls: type[Channel], paths: Path_, state: Enum, our_role: Role, rid: int) -> Channel:
    ch = cls(our_role, rid)
    for sender, type_ in paths[state]:
        step(ch, sender, type_, BIG)
    assert ch.state is state
    return ch


def check_message_in_state(cls: type[Channel], paths: Path_, state: Enum, type_: MessageType, sender: Role,
                           our_role: Role, rid: int) -> None:
    """Legal: it moves to the table's next state. Anything else: `out_of_order`, and no change."""
    ch = channel_in(cls, paths, state, our_role, rid)
    after = cls.TABLE[(state, sender)].get(type_)
    if sender is our_role:
        assert ch.can_send(type_) is (after is not None)
    if after is not None:
        step(ch, sender, type_)
        assert ch.state is after
        return
    error = LocalProtocolError if sender is our_role else RemoteProtocolError
    with pytest.raises(error) as info:
        step(ch, sender, type_)
    assert info.value.code == ErrorCode.OUT_OF_ORDER
    assert type(info.value) is error
    assert ch.state is state  # an illegal message changes nothing


def doc_table(section: str, states: type[Enum]) -> dict[tuple[Enum, Role], dict[MessageType, Enum]]:
    """PROTOCOL.md's rows `| `state` | A, B; C → `next` | ... |` as a transition table:
    types without an arrow keep the row's state."""
    names = "|".join(s.value for s in states)
    table = {}
    for state_name, controller, agent in re.findall(r"^\| `(%s)` \| ([^|]+) \| ([^|]+) \|$" % names, section, re.M):
        state = states(state_name)
        for role, cell in ((Role.CONTROLLER, controller), (Role.AGENT, agent)):
            moves: dict[MessageType, Enum] = {}
            if cell.strip() != "nothing":
                for part in re.split(r"[;,]", cell):
                    name, _, after = part.strip().partition(" → ")
                    moves[MessageType[name]] = states(after.strip("` ")) if after else state
            table[(state, role)] = moves
    return table
