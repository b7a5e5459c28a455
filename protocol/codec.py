"""The body codec: a typed message to its frame body and back, checked field by field.

Kept apart from the message classes (`shoal.protocol.messages`) because it is the one
place that trusts nothing: a body from the peer is parsed strictly
(`shoal.protocol.jsonbody`), every field checked against its annotation, and any
mismatch becomes a RemoteProtocolError naming the message and the field.
"""

from __future__ import annotations

import json
import json.encoder
import types
import typing
from collections.abc import Callable
from typing import Any

from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.jsonbody import parse_object
from shoal.protocol.messageclass import message_fields
from shoal.protocol.messages import CONNECTION_LEVEL, MESSAGE_CLASSES, Message, MessageType
from shoal.protocol.messages.core import bad_message

__all__ = ["encode_body", "decode_body"]


def encode_body(msg: Message) -> bytes:
    """The body bytes of `msg` (raw data, or its fields as compact JSON)."""
    if msg.RAW:
        return msg.data  # type: ignore[attr-defined, no-any-return]
    fields = {name: getattr(msg, name) for name in _fields(type(msg))}
    return _encode_json(fields).encode()


def decode_body(type_: int, request_id: int, body: bytes) -> Message:
    """Build the typed message for a frame; RemoteProtocolError on any mismatch."""
    cls = MESSAGE_CLASSES.get(type_)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type 0x{type_:02x}", ErrorCode.UNKNOWN_TYPE)
    if cls.TYPE in CONNECTION_LEVEL and request_id != 0:
        raise bad_message(f"{cls.TYPE.name} must use request id 0")
    if cls.TYPE not in CONNECTION_LEVEL and cls.TYPE is not MessageType.ERROR and request_id == 0:
        raise bad_message(f"{cls.TYPE.name} needs a request id other than 0")
    if cls.RAW:
        return cls(request_id, body)  # type: ignore[call-arg]
    values = _parse_json(cls, body)
    try:
        return cls(request_id, **values)
    except LocalProtocolError as exc:
        raise bad_message(f"{cls.TYPE.name}: {exc}") from None


# Compact JSON, built once: `json.dumps` with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _compact_json() -> Callable[[dict[str, Any]], str]:
    """`_ENCODER.encode`, without the C encoder it builds on every call (a third of
    the cost of a small body such as PING's): that one is built once here. Without
    circular-reference markers, which message fields never need."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    chunks = make(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    return lambda fields: "".join(chunks(fields, 0))


_encode_json = _compact_json()


def _parse_json(cls: type[Message], body: bytes) -> dict[str, Any]:
    """The body's members that are fields of `cls`, each checked against its type.
    Absent ones take their defaults (required-ness is checked by _validate); unknown
    ones are dropped (PROTOCOL.md section 2)."""
    obj = parse_object(body, cls.TYPE.name)
    checks = _checks(cls)
    unknown = False
    for name, value in obj.items():
        conforms = checks.get(name)
        if conforms is None:
            unknown = True
        elif not conforms(value):
            raise bad_message(f"{cls.TYPE.name}.{name} has the wrong type ({type(value).__name__})")
    return {name: value for name, value in obj.items() if name in checks} if unknown else obj


_FIELDS_CACHE: dict[type, tuple[str, ...]] = {}
_HINTS_CACHE: dict[type, dict[str, Any]] = {}
_CHECKS_CACHE: dict[type, dict[str, Callable[[Any], bool]]] = {}


def _checks(cls: type[Message]) -> dict[str, Callable[[Any], bool]]:
    """Each field's name -> the check of a decoded value against its annotation."""
    cached = _CHECKS_CACHE.get(cls)
    if cached is None:
        hints = _hints(cls)
        cached = {name: _check_for(hints[name]) for name in _fields(cls)}
        _CHECKS_CACHE[cls] = cached
    return cached


# The JSON types each plain annotation takes, the likeliest first (a float field
# takes an integer too; a bool is no integer): every field check is built from it.
_PLAIN_TYPES: dict[Any, tuple[type, ...]] = {
    type(None): (type(None),), bool: (bool,), int: (int,), float: (float, int), str: (str,),
}


def _plain_check(kinds: tuple[type, ...]) -> Callable[[Any], bool]:
    """`type(value) in kinds` as identity tests: quicker than a set lookup for a list of
    thousands of times, which checks each member."""
    if len(kinds) == 1:
        (only,) = kinds
        return lambda value: type(value) is only
    first, second = kinds
    return lambda value: (kind := type(value)) is first or kind is second


def _check_for(hint: Any) -> Callable[[Any], bool]:
    """The check of a decoded value against one field annotation, built once per field.

    Raises TypeError for an annotation the wire has no check for: a message class
    declaring one fails its first decode loudly instead of refusing every value."""
    if hint is Any:
        return lambda value: True
    if hint in _PLAIN_TYPES:
        return _plain_check(_PLAIN_TYPES[hint])
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        # `int | None` and the like: one set lookup, before any check of a list or dict member
        allowed = frozenset(kind for arg in args for kind in _PLAIN_TYPES.get(arg, ()))
        either = tuple(_check_for(arg) for arg in args if arg not in _PLAIN_TYPES)
        if not either:
            return lambda value: type(value) in allowed
        if len(either) == 1:
            (other,) = either
            return lambda value: type(value) in allowed or other(value)
        return lambda value: type(value) in allowed or any(check(value) for check in either)
    if origin is list:
        item = _check_for(typing.get_args(hint)[0])
        return lambda value: type(value) is list and all(item(v) for v in value)
    if origin is dict:
        member = _check_for(typing.get_args(hint)[1])
        return lambda value: type(value) is dict and all(member(v) for v in value.values())
    raise TypeError(f"no check of a decoded value for the annotation {hint!r}")


def _fields(cls: type[Message]) -> tuple[str, ...]:
    cached = _FIELDS_CACHE.get(cls)
    if cached is None:
        cached = tuple(name for name in message_fields(cls) if name != "request_id")
        _FIELDS_CACHE[cls] = cached
    return cached


def _hints(cls: type[Message]) -> dict[str, Any]:
    cached = _HINTS_CACHE.get(cls)
    if cached is None:
        cached = typing.get_type_hints(cls)
        _HINTS_CACHE[cls] = cached
    return cached
