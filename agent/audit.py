"""The audit log: one JSON object per line per security-relevant event.

Records who (key id, peer) did what (argv, cwd) and how it ended (status, bytes,
duration). It never records stdin, output, environment values or key material.
Writes are appended and flushed per event so a crash loses at most the event in
flight; a failing audit file is reported once on stderr and does not stop service.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

__all__ = ["Audit"]

log = logging.getLogger("shoal.audit")


class Audit:
    """Append-only JSON-lines audit trail (disabled when `path` is None)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd = -1
        self._broken = False
        if path:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def record(self, event: str, **fields: Any) -> None:
        """Append one event; `fields` must hold no secrets or payload bytes."""
        if event in ("refused", "auth_failed", "denied"):
            log.warning("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
        if self._fd < 0:
            return
        line = json.dumps({"time": round(time.time(), 6), "event": event, **fields}, default=str)
        try:
            os.write(self._fd, line.encode() + b"\n")
        except OSError as exc:
            if not self._broken:
                self._broken = True
                log.error("cannot write audit log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
