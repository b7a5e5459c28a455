"""Strict parsing of JSON message bodies: what `json.loads` lets through, we refuse.

The standard parser accepts NaN and Infinity, keeps the last of duplicate members
(so two readers of one body may disagree on what it says), guesses UTF-16/32 from
the first bytes, and recurses once per nesting level until Python's stack gives
out (RecursionError). A body that does any of that is `bad_message`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from shoal.protocol.errors import ErrorCode, RemoteProtocolError

__all__ = ["MAX_DEPTH", "parse_object"]

# Deepest nesting of arrays and objects a body may have. Our messages nest at
# most three levels (METRICS_REPLY); 32 leaves room for later versions and keeps
# the parser's recursion far below Python's stack limit.
MAX_DEPTH = 32

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def parse_object(body: bytes, what: str) -> dict[str, Any]:
    """The JSON object in `body` (empty means `{}`); RemoteProtocolError otherwise."""
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"{what} body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    _check_depth(body, what)
    try:
        obj, end = _SCAN(text, 0) if text[0] == "{" else (None, -1)  # what every sender writes
        if end != len(text):  # whitespace around it, or something else: the full decoder judges
            obj = _DECODER.decode(text)
    except StopIteration as exc:
        raise _bad(f"{what} body is not valid JSON: no value at character {exc.value}") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(f"{what} body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad(f"{what} body must be a JSON object")
    return obj


def _check_depth(body: bytes, what: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the recursive parser sees it."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:  # every message on the wire: no scan needed
        return
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise _bad(f"{what} body nests deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every body: `json.loads` with options builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constant)
# Its scanner alone, for a body that is one object and nothing else (no whitespace to skip).
_SCAN: Callable[[str, int], tuple[Any, int]] = getattr(_DECODER, "scan_once")  # set in its __init__; not typed


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.BAD_MESSAGE)
