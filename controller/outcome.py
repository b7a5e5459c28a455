"""The controller's own verdicts on a host, as opposed to what an agent said.

Wire error codes (`shoal.protocol.errors.ErrorCode`) are what an agent sent;
`Outcome` names what the controller concluded itself: it could not connect, the
connection dropped, the run was cancelled. Both land in `Result.error_code`.
Both are `str` enums, so JSON output and comparisons see the same text as before.
"""

from __future__ import annotations

import enum

from shoal.protocol.errors import ErrorCode

__all__ = ["Outcome", "UNREACHABLE_OUTCOMES", "HOST_OUTCOMES"]


class Outcome(enum.StrEnum):
    """Why a host has no plain exit status; never sent on the wire."""

    UNREACHABLE = "unreachable"
    AUTH_FAILED = ErrorCode.AUTH_FAILED.value
    CONNECT_TIMEOUT = "timeout_connect"
    CONNECTION_LOST = "connection_lost"
    TIMEOUT = "timeout"          # the command outlived its timeout on the agent
    CANCELLED = "cancelled"      # Ctrl-C came before the command started
    FAILED = "failed"            # a local tool (ssh, for bootstrap) failed
    NOT_SENT = "not_sent"        # nothing was sent: this host's own inputs were bad
    ERROR = "error"              # one of our errors with no narrower outcome
    SKIPPED = "skipped"          # never started: the run stopped first (--max-fail, --canary)
    # Members only `Result.outcome` gives (see HOST_OUTCOMES), never an error_code:
    OK = "ok"                    # exit 0
    SIGNAL = "signal"            # killed by a signal
    TIMED_OUT = "timed_out"      # ended by --timeout
    IDLE_TIMEOUT = "idle_timeout"  # ended by --idle-timeout: printed nothing for too long (also an error_code)
    DENIED = "denied"            # the key's policy refused the command
    LOST = "lost"                # the connection dropped while the command ran


# The command never ran, or its end is unknown: status 255, like ssh.
UNREACHABLE_OUTCOMES = frozenset({Outcome.UNREACHABLE, Outcome.AUTH_FAILED, Outcome.CONNECTION_LOST,
                                  Outcome.CONNECT_TIMEOUT})


# The one vocabulary of what came of a host (`Result.outcome`), everywhere a run is
# reported: JSON `exit` events, the summary line, per-host failure lines, gather,
# --failed-only, the shell's :last, the sync API. `failed` there means the command
# ran and exited non-zero (or the agent could not start it). In this order, the
# summary line lists them.
HOST_OUTCOMES = (Outcome.OK, Outcome.FAILED, Outcome.SIGNAL, Outcome.TIMED_OUT, Outcome.IDLE_TIMEOUT,
                 Outcome.CANCELLED, Outcome.UNREACHABLE, Outcome.AUTH_FAILED, Outcome.DENIED,
                 Outcome.LOST, Outcome.SKIPPED)
