"""Typed messages: one frozen `@message` class per message type, validated at construction.

Bodies are either raw bytes (the data-carrying types: output, stdin, file chunks),
so output stays binary-safe and is never decoded on the agent, or a UTF-8 JSON
object whose fields are the class's fields. Unknown JSON fields are ignored so a
newer peer may add optional fields; missing or mistyped fields are errors.

A new message is `@message class Name(Message):` with a `TYPE`, typed fields with
defaults, and `field(default_factory=...)` for lists and dicts (both from
shoal.protocol.messageclass, not dataclasses); then a row in MESSAGE_CLASSES.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Any, ClassVar

from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.messageclass import field, message

__all__ = [
    "NODE_ENV",
    "MessageType",
    "Message",
    "Hello",
    "Auth",
    "Error",
    "Ping",
    "Pong",
    "Goodbye",
    "Exec",
    "Stdin",
    "StdinEof",
    "Signal",
    "Cancel",
    "Window",
    "Resize",
    "Started",
    "Stdout",
    "Stderr",
    "Exit",
    "MetricsRequest",
    "MetricsReply",
    "JobStarted",
    "JobsList",
    "JobsReply",
    "JobAttach",
    "JobKill",
    "JobKilled",
    "PutFile",
    "GetFile",
    "FileInfo",
    "FileData",
    "FileEnd",
    "FileDone",
    "ListTree",
    "TreeEntries",
    "RemovePaths",
    "Removed",
    "LinkOpen",
    "LinkOpened",
    "Linked",
    "LinkClose",
    "HostsList",
    "HostsReply",
    "HUB_TYPES",
    "PutBatch",
    "BatchDone",
    "RelayOpen",
    "RelayOpened",
    "RelayData",
    "RelayClose",
    "MESSAGE_CLASSES",
    "CONNECTION_LEVEL",
    "CONTROLLER_ONLY",
    "AGENT_ONLY",
]

PROTOCOL_VERSION = 1


class MessageType(IntEnum):
    """The type byte of a frame."""

    HELLO = 0x01
    AUTH = 0x02
    ERROR = 0x03
    PING = 0x04
    PONG = 0x05
    GOODBYE = 0x06
    EXEC = 0x10
    STDIN = 0x11
    STDIN_EOF = 0x12
    SIGNAL = 0x13
    CANCEL = 0x14
    WINDOW = 0x15
    RESIZE = 0x16
    STARTED = 0x20
    STDOUT = 0x21
    STDERR = 0x22
    EXIT = 0x23
    JOB_STARTED = 0x24
    METRICS_REQUEST = 0x30
    METRICS_REPLY = 0x31
    PUT_FILE = 0x40
    GET_FILE = 0x41
    FILE_INFO = 0x42
    FILE_DATA = 0x43
    FILE_END = 0x44
    FILE_DONE = 0x45
    LIST_TREE = 0x46
    TREE_ENTRIES = 0x47
    REMOVE_PATHS = 0x48
    REMOVED = 0x49
    PUT_BATCH = 0x4A
    BATCH_DONE = 0x4B
    JOBS_LIST = 0x50
    JOBS_REPLY = 0x51
    JOB_ATTACH = 0x52
    JOB_KILL = 0x53
    JOB_KILLED = 0x54
    # -- a hub's local socket (issue 20): requests to agents multiplexed over links
    LINK_OPEN = 0x70
    LINK_OPENED = 0x71
    LINKED = 0x72
    LINK_CLOSE = 0x73
    HOSTS_LIST = 0x74
    HOSTS_REPLY = 0x75
    # -- relays (issue 19): a byte stream to another agent through this one
    RELAY_OPEN = 0x60
    RELAY_OPENED = 0x61
    RELAY_DATA = 0x62
    RELAY_CLOSE = 0x63


def bad_message(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.BAD_MESSAGE)


@message
class Message:
    """Base of every message; `request_id` 0 means the connection itself."""

    TYPE: ClassVar[MessageType]
    RAW: ClassVar[bool] = False
    request_id: int

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, int) or not 0 <= self.request_id <= 0xFFFFFFFF:
            raise LocalProtocolError(f"bad request id {self.request_id!r}")
        self._validate()

    def _validate(self) -> None:
        """Per-message checks beyond field types; raise LocalProtocolError."""


def _check_timeout_and_window(timeout: float | None, window: int) -> None:
    """A timeout is positive and finite (or absent); a window is not negative (0: the default)."""
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise LocalProtocolError(f"bad timeout {timeout!r}")
    if window < 0:
        raise LocalProtocolError(f"bad window {window!r}")


# -- connection level --------------------------------------------------------


# What this agent honours beyond version 1, named in its HELLO `features`:
# "idle_timeout" is EXEC's `idle_timeout` (and EXIT's `idle_timed_out`); "put_batch"
# the PUT_BATCH request; "tree_user" LIST_TREE's and REMOVE_PATHS' `user` and
# `requires`; "relay" the RELAY_* messages: this agent can be a gateway (issue 19).
# The agent's HELLO adds the `requires` names it honours ("user", "pty"; issue 17),
# which its session passes to the Connection: one `features` list holds both.
AGENT_FEATURES = ("idle_timeout", "put_batch", "relay", "tree_user")


@message
class Hello(Message):
    """First frame from each side: version, role, authentication offer."""

    TYPE = MessageType.HELLO
    protocol: int = PROTOCOL_VERSION
    role: str = "controller"
    software: str = "shoal"
    auth: str = "none"
    key_id: str = ""
    nonce: str = ""
    max_frame: int = 0
    # Frame MAC negotiation: the controller offers `macs` in its order of
    # preference (absent: an older peer, which speaks only hmac-sha256); the agent
    # answers with its choice in `mac` (absent: hmac-sha256).
    macs: list[str] = field(default_factory=lambda: ["hmac-sha256"])
    mac: str = ""
    # Request members beyond version 1 this end honours (absent: none). The agent lists
    # AGENT_FEATURES plus the `requires` names it honours (issue 17: "user", "pty";
    # shoal.protocol.fields.EXEC_FEATURES). Unknown members are ignored, so a controller
    # must not send one the agent did not list: an older agent would run the command
    # without it.
    features: list[str] = field(default_factory=list)
    # Agent, when it dialled in to a hub (issue 20): the name it is known by there.
    # Inside the transcript, so the proofs cover it. Empty otherwise.
    name: str = ""

    def _validate(self) -> None:
        if self.role not in ("controller", "agent"):
            raise LocalProtocolError(f"bad role {self.role!r}")
        if self.auth not in ("none", "hmac-sha256"):
            raise LocalProtocolError(f"unknown auth scheme {self.auth!r}")


@message
class Auth(Message):
    """Proof of key possession over the handshake transcript (hex)."""

    TYPE = MessageType.AUTH
    proof: str = ""


@message
class Error(Message):
    """A machine-readable `code` and a one-line human `message`."""

    TYPE = MessageType.ERROR
    code: str = "error"
    message: str = ""
    status: int | None = None


@message
class Ping(Message):
    """Keepalive and clock probe; `t0` is the sender's clock at send time."""

    TYPE = MessageType.PING
    t0: float = 0.0


@message
class Pong(Message):
    """Answer to a ping: echoes t0, adds receive (t1) and send (t2) times."""

    TYPE = MessageType.PONG
    t0: float = 0.0
    t1: float = 0.0
    t2: float = 0.0
    version: str = ""


@message
class Goodbye(Message):
    """The sender is closing the connection on purpose (shutdown, idle, limit)."""

    TYPE = MessageType.GOODBYE
    reason: str = ""


# -- commands ----------------------------------------------------------------


# EXEC env names the controller sets to say which of the targets this is (as pssh's
# PSSH_HOST, PSSH_NODENUM, PSSH_NUMNODES). They cannot choose code, so every key may pass them.
NODE_ENV = ("SHOAL_HOST", "SHOAL_NODENUM", "SHOAL_NUMNODES")


@message
class Exec(Message):
    """Run a command: exactly one of `argv` (no shell) or `shell` (/bin/sh -c)."""

    TYPE = MessageType.EXEC
    argv: list[str] | None = None
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    stdin: bool = False
    window: int = 0
    detach: bool = False
    kill_grace: float | None = None
    # Issue 17: run as `user`, on a pseudo-terminal of `rows` x `cols`. A field the
    # agent must honour is also named in `requires`; an agent that does not know a
    # name listed there refuses the request (`unsupported`) rather than run it
    # without (shoal.protocol.fields.EXEC_FEATURES).
    user: str | None = None
    pty: bool = False
    rows: int = 0
    cols: int = 0
    requires: list[str] = field(default_factory=list)
    idle_timeout: float | None = None  # feature "idle_timeout"; range in shoal.protocol.fields

    def _validate(self) -> None:
        if (self.argv is None) == (self.shell is None):
            raise LocalProtocolError("exec needs exactly one of argv and shell")
        _check_timeout_and_window(self.timeout, self.window)


@message
class Stdin(Message):
    """Bytes for the command's standard input."""

    TYPE = MessageType.STDIN
    RAW = True
    data: bytes = b""


@message
class StdinEof(Message):
    """Close the command's standard input."""

    TYPE = MessageType.STDIN_EOF


@message
class Signal(Message):
    """Deliver one signal (by number) to the command's process group."""

    TYPE = MessageType.SIGNAL
    signal: int = 15

    def _validate(self) -> None:
        if not 1 <= self.signal <= 64:
            raise LocalProtocolError(f"bad signal number {self.signal!r}")


@message
class Cancel(Message):
    """Stop the command: SIGINT, then SIGTERM, then SIGKILL, `grace` apart."""

    TYPE = MessageType.CANCEL
    grace: float | None = None


@message
class Window(Message):
    """Grant the peer `bytes` more of data-carrying frames for this request."""

    TYPE = MessageType.WINDOW
    bytes: int = 0

    def _validate(self) -> None:
        if self.bytes <= 0:
            raise LocalProtocolError(f"window increment must be positive, not {self.bytes!r}")


@message
class Resize(Message):
    """The controller's terminal changed size: apply it to the request's pty."""

    TYPE = MessageType.RESIZE
    rows: int = 0
    cols: int = 0

    def _validate(self) -> None:
        if not (1 <= self.rows <= 0xFFFF and 1 <= self.cols <= 0xFFFF):
            raise LocalProtocolError(f"bad window size {self.rows!r}x{self.cols!r}")


@message
class Started(Message):
    """The command is running; `stdin_window` bytes of stdin may be sent."""

    TYPE = MessageType.STARTED
    pid: int = 0
    stdin_window: int = 0


@message
class Stdout(Message):
    """Bytes the command wrote to standard output."""

    TYPE = MessageType.STDOUT
    RAW = True
    data: bytes = b""


@message
class Stderr(Message):
    """Bytes the command wrote to standard error."""

    TYPE = MessageType.STDERR
    RAW = True
    data: bytes = b""


@message
class Exit(Message):
    """Last frame of a request: how it ended, after all of its output.

    `status` follows the shell convention (the exit code, or 128+signal).
    `leftovers_ended` counts processes the command left holding its output that the
    agent ended after the output linger; None when there were none.
    """

    TYPE = MessageType.EXIT
    status: int = 0
    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    duration: float = 0.0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_file: str | None = None
    leftovers_ended: int | None = None
    idle_timed_out: bool = False  # feature "idle_timeout": ended by EXEC's idle_timeout


# -- metrics and files -------------------------------------------------------


@message
class MetricsRequest(Message):
    """Ask for a metrics snapshot."""

    TYPE = MessageType.METRICS_REQUEST


@message
class MetricsReply(Message):
    """A metrics snapshot (schema in shoal.agent.metrics)."""

    TYPE = MessageType.METRICS_REPLY
    metrics: dict[str, Any] = field(default_factory=dict)


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


@message
class PutFile(Message):
    """Open an upload: FILE_DATA chunks follow, then FILE_END with the digest."""

    TYPE = MessageType.PUT_FILE
    path: str = ""
    size: int = 0
    mode: int | None = None
    mtime: float | None = None
    owner: list[int] | None = None
    into_dir: bool = False
    name: str = ""
    mkdir: bool = False
    window: int = 0
    user: str | None = None  # create and check as this user (issue 17); named in `requires`
    requires: list[str] = field(default_factory=list)
    tree: str = ""
    parents: bool = False


@message
class GetFile(Message):
    """Open a download of one regular file."""

    TYPE = MessageType.GET_FILE
    path: str = ""
    window: int = 0
    user: str | None = None  # open as this user (issue 17); named in `requires`
    requires: list[str] = field(default_factory=list)
    tree: str = ""


@message
class FileInfo(Message):
    """Agent's answer to PUT/GET: the transfer is open; size/mode/mtime for GET."""

    TYPE = MessageType.FILE_INFO
    size: int = 0
    mode: int = 0
    mtime: float = 0.0
    window: int = 0


@message
class FileData(Message):
    """A chunk of file content."""

    TYPE = MessageType.FILE_DATA
    RAW = True
    data: bytes = b""


@message
class FileEnd(Message):
    """No more chunks; the sender's SHA-256 of everything sent."""

    TYPE = MessageType.FILE_END
    sha256: str = ""


@message
class FileDone(Message):
    """The receiver verified and committed the file."""

    TYPE = MessageType.FILE_DONE
    sha256: str = ""
    bytes: int = 0
    path: str = ""


@message
class ListTree(Message):
    """Ask what a directory tree holds: one entry per path, with sha256 of files on request."""

    TYPE = MessageType.LIST_TREE
    path: str = ""
    sha256: bool = False
    user: str | None = None  # list (and hash) as this user; feature "tree_user", named in `requires`
    requires: list[str] = field(default_factory=list)


@message
class TreeEntries(Message):
    """Part of a LIST_TREE answer; the last part has `done` set."""

    TYPE = MessageType.TREE_ENTRIES
    entries: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False


@message
class RemovePaths(Message):
    """Remove entries below `tree`, named relative to it, never following a link."""

    TYPE = MessageType.REMOVE_PATHS
    tree: str = ""
    paths: list[str] = field(default_factory=list)
    user: str | None = None  # remove as this user; feature "tree_user", named in `requires`
    requires: list[str] = field(default_factory=list)


@message
class Removed(Message):
    """REMOVE_PATHS is done: how many of its paths were there and are now gone."""

    TYPE = MessageType.REMOVED
    count: int = 0


@message
class PutBatch(Message):
    """Many small files (and directories) of a recursive put in one request.

    Their contents follow as FILE_DATA, back to back in `files` order, with no
    FILE_INFO, WINDOW or FILE_END: the request's window is its total size.
    Each entry is checked by `shoal.protocol.fields.check_request`.
    """

    TYPE = MessageType.PUT_BATCH
    tree: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)
    user: str | None = None
    requires: list[str] = field(default_factory=list)


@message
class BatchDone(Message):
    """A PUT_BATCH is applied: every entry not in `errors` is in place and on disk."""

    TYPE = MessageType.BATCH_DONE
    written: int = 0
    bytes: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


# -- relays (issue 19) ---------------------------------------------------------
#
# A relay is a byte stream from the controller to another agent (the target)
# through this one (the gateway). The gateway forwards the stream's bytes and
# nothing else: the controller runs its own handshake with the target inside it,
# so every frame MAC (and TLS, if used) is end to end. Lifecycle and windows:
# shoal.protocol.request (RequestKind.RELAY); PROTOCOL.md section 3, Relays.


@message
class RelayOpen(Message):
    """Open a stream to `host`:`port` (or the unix socket `path`) from the gateway.

    `window` is how many RELAY_DATA bytes the gateway may send before a WINDOW
    (0: RELAY_WINDOW); `timeout` bounds the gateway's connect (null: its own).
    """

    TYPE = MessageType.RELAY_OPEN
    host: str | None = None
    port: int = 0
    path: str | None = None
    window: int = 0
    timeout: float | None = None

    def _validate(self) -> None:
        if (self.host is None) == (self.path is None):
            raise LocalProtocolError("relay open needs exactly one of host and path")
        if self.host is not None and not 0 < self.port < 65536:
            raise LocalProtocolError(f"bad relay port {self.port!r}")
        _check_timeout_and_window(self.timeout, self.window)


@message
class RelayOpened(Message):
    """The gateway is connected to the destination (`address`, as it reached it);
    the controller may send `window` RELAY_DATA bytes before a WINDOW (0: RELAY_WINDOW)."""

    TYPE = MessageType.RELAY_OPENED
    window: int = 0
    address: str = ""

    def _validate(self) -> None:
        _check_timeout_and_window(None, self.window)


@message
class RelayData(Message):
    """Bytes of the relayed stream, forwarded unchanged."""

    TYPE = MessageType.RELAY_DATA
    RAW = True
    data: bytes = b""


@message
class RelayClose(Message):
    """The stream is over: the gateway closes its connection to the destination.

    From the gateway, `reason` is empty when the destination closed normally,
    else why the connection ended.
    """

    TYPE = MessageType.RELAY_CLOSE
    reason: str = ""


# -- a hub's local socket (issue 20) -------------------------------------------
#
# A local client reaches agents through a hub over one connection: it opens a
# link per agent (LINK_OPEN, by name) and sends that agent's messages inside
# LINKED frames, each link with its own request ids. Framing of the inner
# message: shoal.protocol.link; PROTOCOL.md section 7.


@message
class LinkOpen(Message):
    """Open a link to the agent the hub knows as `host`; the request id names the link."""

    TYPE = MessageType.LINK_OPEN
    host: str = ""


@message
class LinkOpened(Message):
    """The link is open: what the agent announced in its HELLO, as the hub passes it on."""

    TYPE = MessageType.LINK_OPENED
    host: str = ""
    address: str = ""
    software: str = ""
    features: list[str] = field(default_factory=list)
    max_frame: int = 0


@message
class Linked(Message):
    """One message of the link's agent connection: type, request id and body (shoal.protocol.link)."""

    TYPE = MessageType.LINKED
    RAW = True
    data: bytes = b""


@message
class LinkClose(Message):
    """The link is over: the client is done with it, or the hub lost the agent (`reason`)."""

    TYPE = MessageType.LINK_CLOSE
    reason: str = ""


@message
class HostsList(Message):
    """Ask the hub which agents it holds connections to."""

    TYPE = MessageType.HOSTS_LIST


@message
class HostsReply(Message):
    """The hub's agents, one object each (PROTOCOL.md section 7)."""

    TYPE = MessageType.HOSTS_REPLY
    hosts: list[dict[str, Any]] = field(default_factory=list)


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Auth, Error, Ping, Pong, Goodbye, Exec, Stdin, StdinEof, Signal, Cancel,
        Window, Resize, Started, Stdout, Stderr, Exit, MetricsRequest, MetricsReply, PutFile,
        GetFile, FileInfo, FileData, FileEnd, FileDone, ListTree, TreeEntries, RemovePaths, Removed,
        PutBatch, BatchDone, JobStarted, JobsList, JobsReply, JobAttach, JobKill, JobKilled,
        RelayOpen, RelayOpened, RelayData, RelayClose,
        LinkOpen, LinkOpened, Linked, LinkClose, HostsList, HostsReply,
    )
}

# Types of a hub's local socket only: never sent to an agent, never inside a link.
HUB_TYPES = frozenset({
    MessageType.LINK_OPEN, MessageType.LINK_OPENED, MessageType.LINKED, MessageType.LINK_CLOSE,
    MessageType.HOSTS_LIST, MessageType.HOSTS_REPLY,
})

# Types that must carry request id 0.
CONNECTION_LEVEL = frozenset(
    {MessageType.HELLO, MessageType.AUTH, MessageType.PING, MessageType.PONG, MessageType.GOODBYE}
)

# Types only one role ever sends; the other role receiving one is `wrong_direction`.
CONTROLLER_ONLY = frozenset({
    MessageType.EXEC, MessageType.STDIN, MessageType.STDIN_EOF, MessageType.SIGNAL, MessageType.CANCEL,
    MessageType.METRICS_REQUEST, MessageType.PUT_FILE, MessageType.GET_FILE, MessageType.RESIZE,
    MessageType.LIST_TREE, MessageType.REMOVE_PATHS, MessageType.PUT_BATCH,
    MessageType.JOBS_LIST, MessageType.JOB_ATTACH, MessageType.JOB_KILL,
    MessageType.LINK_OPEN, MessageType.HOSTS_LIST,
    MessageType.RELAY_OPEN,
})
AGENT_ONLY = frozenset({
    MessageType.STARTED, MessageType.STDOUT, MessageType.STDERR, MessageType.EXIT,
    MessageType.METRICS_REPLY, MessageType.FILE_INFO, MessageType.FILE_DONE,
    MessageType.TREE_ENTRIES, MessageType.REMOVED, MessageType.BATCH_DONE,
    MessageType.JOB_STARTED, MessageType.JOBS_REPLY, MessageType.JOB_KILLED,
    MessageType.LINK_OPENED, MessageType.HOSTS_REPLY,
    MessageType.RELAY_OPENED,
})
