"""Bounds on what one audit or log record may hold of a peer's data.

A peer chooses argv, paths and messages, so an unbounded record lets it write a
megabyte line per request into the audit log (and the journal). Long values are
cut with a marker carrying the original size, so a reader knows something was
cut and how much, and the record stays valid JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["AUDIT_FIELD_BYTES", "AUDIT_LIST_ITEMS", "ClipFilter", "clip"]

# Longest string kept in a record, in UTF-8 bytes: a full path (PATH_MAX is
# 4096) or a long shell command fits; a pasted file does not.
AUDIT_FIELD_BYTES = 4096
# Most items kept of a list (argv): 256 arguments of 4 KiB bound a record near 1 MiB
# in the very worst case, and real commands have far fewer.
AUDIT_LIST_ITEMS = 256


def clip(value: Any) -> Any:
    """`value` with long strings cut and long lists shortened, each with a marker."""
    if isinstance(value, str):
        return _clip_text(value)
    if isinstance(value, (list, tuple)):
        items = [clip(item) for item in value[:AUDIT_LIST_ITEMS]]
        if len(value) > AUDIT_LIST_ITEMS:
            items.append(f"…[truncated, {len(value)} items]")
        return items
    if isinstance(value, Mapping):
        return {clip(k): clip(v) for k, v in list(value.items())[:AUDIT_LIST_ITEMS]}
    return value


def _clip_text(text: str) -> str:
    if len(text) <= AUDIT_FIELD_BYTES // 4:
        return text  # short enough whatever its characters: skip the encoding
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= AUDIT_FIELD_BYTES:
        return text
    kept = data[:AUDIT_FIELD_BYTES].decode("utf-8", "ignore")  # never half a character
    return f"{kept}…[truncated, {len(data)} bytes]"


class ClipFilter(logging.Filter):
    """Clip a log record's arguments (never its format string) as `clip` does."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(clip(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: clip(arg) for key, arg in record.args.items()}
        return True
