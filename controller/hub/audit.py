"""The hub's audit log: one JSON object per line for each security event, mode 0600.

Agents dialling in (accepted, refused, failing their proof), local clients
refused for their uid, and agents leaving. Keys never appear, only key ids; each
event also goes to the hub's log as one line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

__all__ = ["HubAudit"]

log = logging.getLogger("shoal.hub")
# Longest string kept in a record: a peer's words (a name, a reason) cannot make a huge line.
FIELD_LIMIT = 4096


class HubAudit:
    """Append records to `path` (None: the log alone)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._failed = False

    def record(self, event: str, **fields: Any) -> None:
        entry = {"time": round(time.time(), 6), "event": event,
                 **{k: _clip(v) for k, v in fields.items() if v is not None}}
        log.info("%s %s", event, " ".join(f"{k}={_shown(v)}" for k, v in entry.items() if k not in ("time", "event")))
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
            finally:
                os.close(fd)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot write the audit log %s: %s", self.path, exc.strerror or exc)
            self._failed = True


def _shown(value: Any) -> Any:
    """`value` for the one-line log, `key=value` pairs: a string with a space or a control
    character (a newline in an agent's `software`, say) is quoted and escaped, so a peer's
    words can forge neither a line nor another pair."""
    if isinstance(value, str) and (not value.isprintable() or " " in value or '"' in value):
        return json.dumps(value)
    return value


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > FIELD_LIMIT:
        return value[:FIELD_LIMIT] + f"…[truncated, {len(value)} chars]"
    return value
