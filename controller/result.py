"""What a command on one host came to, as the library reports it, and the one
translation from a host's error to its Result."""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass
from typing import Any

from shoal.protocol.errors import ErrorCode, AuthError, RemoteCommandError, ShoalConnectionError, ShoalError, ShoalTimeoutError

from shoal.controller.outcome import UNREACHABLE_OUTCOMES, Outcome

__all__ = ["Result", "UNREACHABLE", "CANCELLED_STATUS", "failure_result", "fleet_status", "outcome_fields"]

# ssh's convention: 255 when the host could not be reached, authenticated, or
# its connection was lost; clush uses it for timeouts too.
UNREACHABLE = 255
# Status of a host whose command was cancelled before it started (as Ctrl-C would).
CANCELLED_STATUS = 130

@dataclass(frozen=True, slots=True)
class Result:
    """One host's outcome.

    `status` is what a shell would see: the exit code, 128+signal for a signal
    death, 255 when the host was unreachable, lost, timed out or refused the
    command's connection. `error` is a one-line reason when the command did not
    simply exit (unreachable, not found, timed out...). `leftovers_ended` counts
    processes the command left holding its output that the agent ended once the
    output linger ran out (None: there were none).
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
    leftovers_ended: int | None = None
    job: str | None = None  # a detached command: the agent's job id (shoal jobs, attach, kill)
    limit: float | None = None  # the --timeout or --idle-timeout (s) that ended it, when known here

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def unreachable(self) -> bool:
        """True when the command never ran or its outcome is unknown."""
        return self.error_code in UNREACHABLE_OUTCOMES

    @property
    def ran(self) -> bool:
        """True when the command ran to its own end (exit, signal, either timeout): a failure that
        is the command's, which `-q` may hide, unlike a host that could not run it."""
        return self.error_code in (None, Outcome.TIMEOUT, Outcome.IDLE_TIMEOUT)

    @property
    def outcome(self) -> Outcome:
        """This host's outcome in the one vocabulary (`shoal.controller.outcome.HOST_OUTCOMES`)."""
        return _outcome(self)

    @property
    def outcome_text(self) -> str:
        """The outcome word and, where it says more, what exactly: `failed (code 3)`,
        `signal (KILL)`, `timed_out (after 10s)`, `unreachable: connection refused`.
        What every text output prints for a host that did not exit 0."""
        outcome = self.outcome
        if outcome is Outcome.FAILED:
            return f"failed: {self.error}" if self.error else f"failed (code {self.status})"
        if outcome is Outcome.SIGNAL and self.signal:
            return f"signal ({_signal_label(self.signal) or self.signal})"
        if outcome is Outcome.TIMED_OUT and self.limit:
            return f"timed_out (after {self.limit:g}s)"
        if outcome is Outcome.IDLE_TIMEOUT and self.limit:
            return f"idle_timeout (no output for {self.limit:g}s)"
        if outcome in _SAYS_WHY and self.error:
            return f"{outcome}: {self.error}"
        return str(outcome)

    @property
    def reason(self) -> str:
        """Short human text, as clush words it: 'exited with code 3',
        'killed by signal 9 (KILL)', 'timed out after 10s', or the error."""
        if self.error:
            return self.error
        if self.timed_out:
            return "timed out"
        if self.signal:
            label = _signal_label(self.signal)
            return f"killed by signal {self.signal}" + (f" ({label})" if label else "")
        return f"exited with code {self.status}"


def _signal_label(number: int) -> str | None:
    """`KILL` for 9; None for a number this system has no name for."""
    try:
        return signals.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return None


# Outcomes whose error text is worth printing after the word (it names the cause).
_SAYS_WHY = frozenset({Outcome.UNREACHABLE, Outcome.AUTH_FAILED, Outcome.DENIED, Outcome.LOST})


# error_code -> outcome, for the codes that name one of their own.
_CODE_OUTCOMES: dict[str, Outcome] = {
    Outcome.SKIPPED: Outcome.SKIPPED, Outcome.AUTH_FAILED: Outcome.AUTH_FAILED,
    Outcome.CONNECTION_LOST: Outcome.LOST, Outcome.UNREACHABLE: Outcome.UNREACHABLE,
    Outcome.CONNECT_TIMEOUT: Outcome.UNREACHABLE, Outcome.CANCELLED: Outcome.CANCELLED,
    Outcome.TIMEOUT: Outcome.TIMED_OUT, ErrorCode.PERMISSION_DENIED: Outcome.DENIED,
    Outcome.IDLE_TIMEOUT: Outcome.IDLE_TIMEOUT,
}


def _outcome(r: Result) -> Outcome:
    if r.error_code in _CODE_OUTCOMES:
        return _CODE_OUTCOMES[r.error_code]
    if r.ok:
        return Outcome.OK
    if r.timed_out:
        return Outcome.TIMED_OUT
    if r.cancelled:
        return Outcome.CANCELLED
    if r.signal:
        return Outcome.SIGNAL
    return Outcome.FAILED


def fleet_status(results: list[Result]) -> int:
    """The run's exit status: the largest per-host status (0 when there are none)."""
    return max((r.status for r in results), default=0)


def failure_result(host: str, exc: ShoalError) -> Result:
    """Turn one host's error into its Result, so it never stops the other hosts.

    The client turns socket, TLS and timeout errors into ours, so only shoal's
    errors arrive here; anything else is a bug and propagates. A refusal that
    carries no status (a transfer the agent refused, say) is status 1.
    """
    if isinstance(exc, AuthError):
        return Result(host, UNREACHABLE, error=exc.reason, error_code=Outcome.AUTH_FAILED)
    if isinstance(exc, ShoalTimeoutError):
        return Result(host, UNREACHABLE, error=f"{exc.what} timed out after {exc.seconds:g}s",
                      error_code=Outcome.CONNECT_TIMEOUT)
    if isinstance(exc, ShoalConnectionError):
        return Result(host, UNREACHABLE, error=exc.reason, error_code=Outcome.UNREACHABLE)
    if isinstance(exc, RemoteCommandError):
        return Result(host, exc.status or 1, error=exc.reason, error_code=exc.code)
    return Result(host, UNREACHABLE, error=str(exc), error_code=Outcome.ERROR)


def outcome_fields(error: str | None, error_code: str | None) -> dict[str, Any]:
    """`ok`, `unreachable`, `error`, `error_code` for a host's JSON record, one spelling for all views."""
    if error is not None and error_code is None:
        error_code = Outcome.ERROR
    return {"ok": error is None, "unreachable": error_code in UNREACHABLE_OUTCOMES,
            "error": error, "error_code": error_code}
