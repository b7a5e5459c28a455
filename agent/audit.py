"""The audit log: one JSON object per line per security-relevant event.

Records who (key id, peer) did what (argv, cwd) and how it ended (status, bytes,
duration). It never records stdin, output, environment values or key material.
Writes are appended and flushed per event so a crash loses at most the event in
flight; a failing audit file is reported once on stderr and does not stop service.
The file is created 0600 (`--audit-log PATH` or `audit_log` in the config; off by
default). A one-line summary of each event also goes to the agent's log on stderr:
refusals and denials as warnings, sessions and commands as info, the rest as debug.

Every line holds `time` (seconds since the epoch, UTC) and `event`, plus:

    accepted        peer                                    a connection arrived (TLS: handshake done)
    refused         peer, reason                            dropped before authenticating
                                                            (connection limit, handshake timeout,
                                                            "TLS handshake failed: <OpenSSL's reason>")
    auth_failed     peer, key_id (offered, or null), reason wrong key, or a key on one side only
    authenticated   peer, key_id (null: no key), key_name   handshake done
    protocol_error  peer, key_id, code, reason              bad frame (e.g. bad_mac); connection closed
    denied          peer, key_id, request, what ("exec" with argv and cwd, or "metrics")
                                                            the key's policy forbids it; nothing ran
    exec            peer, key_id, request, argv, cwd, pid, detach
    exec_failed     peer, key_id, request, argv, cwd, error the command could not start
    exit            peer, key_id, request, argv, cwd, start (epoch), duration (s), status,
                    timed_out, stdout_bytes, stderr_bytes, stdin_bytes, leftovers_ended
    metrics         peer, key_id, request
    put, get        peer, key_id, request, path, size       a file transfer started (agent/transfer.py)
    put_done, get_done  ... path, bytes                     it completed
    put_failed      ... path, error
    mkdir           ... path                                a directory created for a put
    denied          peer, key_id, request, action ("put"/"get"), path, reason   (file transfers)

`peer` is `host:port` (`[v6]:port` for IPv6, `unix` for a Unix socket); `argv` is
what was executed (a shell command as `["/bin/sh", "-c", COMMAND]`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

__all__ = ["Audit"]

log = logging.getLogger("shoal.audit")

# How loudly each event is summarised on stderr; unlisted events are debug.
_LEVELS = {
    "refused": logging.WARNING, "auth_failed": logging.WARNING, "denied": logging.WARNING,
    "protocol_error": logging.WARNING, "authenticated": logging.INFO, "exit": logging.INFO,
}


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
        level = _LEVELS.get(event, logging.DEBUG)
        if log.isEnabledFor(level):
            log.log(level, "%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
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
