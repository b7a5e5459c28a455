"""What a command on one host came to, as the library reports it."""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass
from typing import Any

__all__ = ["Result", "UNREACHABLE", "UNREACHABLE_CODES", "fleet_status", "outcome_fields"]

# ssh's convention: 255 when the host could not be reached, authenticated, or
# its connection was lost; clush uses it for timeouts too.
UNREACHABLE = 255

# Error codes meaning the command never ran or its outcome is unknown.
UNREACHABLE_CODES = frozenset({"unreachable", "auth_failed", "connection_lost", "timeout_connect"})


@dataclass(frozen=True, slots=True)
class Result:
    """One host's outcome.

    `status` is what a shell would see: the exit code, 128+signal for a signal
    death, 255 when the host was unreachable, lost, timed out or refused the
    command's connection. `error` is a one-line reason when the command did not
    simply exit (unreachable, not found, timed out...).
    """

    host: str
    status: int
    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    duration: float = 0.0
    error: str | None = None
    error_code: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_file: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def unreachable(self) -> bool:
        """True when the command never ran or its outcome is unknown."""
        return self.error_code in UNREACHABLE_CODES

    @property
    def ran(self) -> bool:
        """True when the command ran to its own end (exit, signal, timeout): a failure that
        is the command's, which `-q` may hide, unlike a host that could not run it."""
        return self.error_code in (None, "timeout")

    @property
    def reason(self) -> str:
        """Short human text, as clush words it: 'exited with code 3',
        'killed by signal 9 (KILL)', 'timed out after 10s', or the error."""
        if self.error:
            return self.error
        if self.timed_out:
            return "timed out"
        if self.signal:
            return f"killed by signal {self.signal}{_signal_name(self.signal)}"
        return f"exited with code {self.status}"


def _signal_name(number: int) -> str:
    """' (KILL)' for 9; nothing for a number this system has no name for."""
    try:
        return f" ({signals.Signals(number).name.removeprefix('SIG')})"
    except ValueError:
        return ""


def fleet_status(results: list[Result]) -> int:
    """The run's exit status: the largest per-host status (0 when there are none)."""
    return max((r.status for r in results), default=0)


def outcome_fields(error: str | None, error_code: str | None) -> dict[str, Any]:
    """`ok`, `unreachable`, `error`, `error_code` for a host's JSON record, one spelling for all views."""
    if error is not None and error_code is None:
        error_code = "error"
    return {"ok": error is None, "unreachable": error_code in UNREACHABLE_CODES,
            "error": error, "error_code": error_code}
