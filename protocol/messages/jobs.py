"""Detached commands as jobs: started, listed, attached to, killed."""

from __future__ import annotations

from typing import Any

from shoal.protocol.messageclass import field, message
from shoal.protocol.messages.core import Message, MessageType, bad_message

__all__ = ["JobStarted", "JobsList", "JobsReply", "JobAttach", "JobKill", "JobKilled"]


@message
class JobStarted(Message):
    """A detached EXEC is running as job `job`; the request ends here."""

    TYPE = MessageType.JOB_STARTED
    job: str = ""
    pid: int = 0


@message
class JobsList(Message):
    """Ask for the jobs this key may see."""

    TYPE = MessageType.JOBS_LIST


@message
class JobsReply(Message):
    """The jobs this key may see, oldest first (fields in PROTOCOL.md §3 Jobs)."""

    TYPE = MessageType.JOBS_REPLY
    jobs: list[dict[str, Any]] = field(default_factory=list)


@message
class JobAttach(Message):
    """Replay job `job`'s kept output, then follow it live: a command request's stream."""

    TYPE = MessageType.JOB_ATTACH
    job: str = ""
    window: int = 0

    def __post_init__(self) -> None:
        if self.window < 0:
            raise bad_message("JOB_ATTACH window must not be negative")


@message
class JobKill(Message):
    """End job `job`'s whole process tree: `signal` first, SIGKILL after the kill grace."""

    TYPE = MessageType.JOB_KILL
    job: str = ""
    signal: int = 15

    def __post_init__(self) -> None:
        if not 1 <= self.signal <= 64:
            raise bad_message("JOB_KILL signal must be 1..64")


@message
class JobKilled(Message):
    """The job's tree was signalled: `processes` it held then."""

    TYPE = MessageType.JOB_KILLED
    job: str = ""
    processes: int = 0
