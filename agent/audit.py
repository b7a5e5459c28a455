"""The audit log: one JSON object per line per security-relevant event.

Records who (key id, peer) did what (argv, cwd) and how it ended (status, bytes,
duration). It never records stdin, output, environment values or key material.
Writes are appended and flushed per event so a crash loses at most the event in
flight. A failing audit file (disk full, I/O error) is reported once on stderr,
and again when it works anew; by default commands keep running meanwhile, since
an agent that stops on a full disk cannot be used to free it. With
`audit_required = true` (`--audit-required`) the agent first writes an
`exec_request` record for each command and refuses the command (ERROR
`audit_unavailable`) when that record cannot be written, so nothing runs unrecorded.
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
    denied          peer, key_id, request, what ("exec" with argv, cwd and reason, "metrics",
                    "relay" with destination and reason, or the request type with
                    reason "key revoked")
                                                            the key's policy forbids it; nothing ran
    exec_request    peer, key_id, request, argv, cwd        audit_required only: written before the
                                                            command starts; if it fails, it never does
    exec            peer, key_id, request, argv, cwd, pid, detach
    exec_failed     peer, key_id, request, argv, cwd, error the command could not start
    exit            peer, key_id, request, argv, cwd, start (epoch), duration (s), status,
                    timed_out, stdout_bytes, stderr_bytes, stdin_bytes, leftovers_ended
    metrics         peer, key_id, request
    relay           peer, key_id, request, destination, address   a relayed stream opened (agent/relay.py)
    relay_failed    peer, key_id, request, destination, error     ... could not connect
    relay_end       peer, key_id, request, destination, bytes_in, bytes_out, duration, reason
                                                            ... ended (bytes_in: controller to destination)
    job_start       peer, key_id, request, argv, cwd, user, pid, job   a detached command started as a job
    job_exit        job, key_id, argv, user, status, timed_out, idle_timed_out, stdout_bytes, stderr_bytes
                                                            a job ended (agent/jobs.py)
    job_revoked     job, key_id, argv, user, processes      a reload removed the key that started a
                                                            running job: its tree was killed
    jobs            peer, key_id, request                   jobs listed
    job_attach      peer, key_id, request, job              a job's output followed
    job_kill        peer, key_id, request, job, signal, processes   a job's tree signalled
    put, get        peer, key_id, request, path, size       a file transfer started (agent/transfer.py)
    put_done, get_done  ... path, bytes                     it completed
    put_failed      ... path, error
    mkdir           ... path                                a directory created for a put
    put_batch       ... path (the tree), files, size        a batch of small files applied (agent/batch.py);
                                                            then mkdir, put_done, put_failed per entry
    list            ... path, entries                       a tree listed for a sync (agent/treeops.py)
    delete          ... path                                one path removed by REMOVE_PATHS (--delete)
    (file records add `user` when the request acts as one: `put --user`)
    denied          peer, key_id, request, action ("put"/"get"/"list"/"delete"), path, reason   (file transfers)
    revoked         peer, key_id, running                   a reload removed the key: no new requests
    revoked_closed  peer, key_id                            ... and its connection closed, commands done
    policy_changed  peer, key_id, key_name                  a reload changed the key's policy

`peer` is `host:port` (`[v6]:port` for IPv6, `unix` for a Unix socket); `argv` is
what was executed (a shell command as `["/bin/sh", "-c", COMMAND]`).

A string longer than AUDIT_FIELD_BYTES (4096 bytes of UTF-8) is cut there and ends
with `…[truncated, N bytes]`, N its original size; a list longer than
AUDIT_LIST_ITEMS (256) keeps that many items and gains `…[truncated, N items]`
(agent/clip.py). The stderr summary is cut the same way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from shoal.protocol.errors import ConfigError

from shoal.agent.clip import clip

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
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise ConfigError(f"cannot open audit log: {exc.strerror or exc}", path) from None

    def record(self, event: str, **fields: Any) -> bool:
        """Append one event; False when the audit log could not take it.

        `fields` must hold no secrets or payload bytes; long values are cut (clip).
        """
        level = _LEVELS.get(event, logging.DEBUG)
        if self._fd < 0 and not log.isEnabledFor(level):
            return True  # nowhere to go: a batch's per-file records cost nothing then
        fields = {name: clip(value) for name, value in fields.items()}
        if log.isEnabledFor(level):
            log.log(level, "%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
        if self._fd < 0:
            return True
        line = json.dumps({"time": round(time.time(), 6), "event": event, **fields}, default=str)
        try:
            os.write(self._fd, line.encode() + b"\n")
        except OSError as exc:
            if not self._broken:
                self._broken = True
                log.error("cannot write audit log %s: %s", self.path, exc.strerror or exc)
            return False
        if self._broken:
            self._broken = False
            log.warning("audit log %s is writable again", self.path)
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
