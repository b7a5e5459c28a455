"""Typed messages: one frozen `@message` class per message type, validated at construction.

Bodies are either raw bytes (the data-carrying types: output, stdin, file chunks),
so output stays binary-safe and is never decoded on the agent, or a UTF-8 JSON
object whose fields are the class's fields. Unknown JSON fields are ignored so a
newer peer may add optional fields; missing or mistyped fields are errors.

The classes live in one module per family (`core`: the type byte, the base class
and the connection level; `commands`, `metrics`, `jobs`, `files`, `relay`, `hub`);
this package is the one place to import any of them from, and holds the tables
that span families.

A new message is `@message class Name(Message):` with a `TYPE`, typed fields with
defaults, and `field(default_factory=...)` for lists and dicts (both from
shoal.protocol.messageclass, not dataclasses), in its family's module; then a row
in MESSAGE_CLASSES.
"""

from __future__ import annotations

from shoal.protocol.messages.commands import (
    NODE_ENV,
    Cancel,
    Exec,
    Exit,
    Resize,
    Signal,
    Started,
    Stderr,
    Stdin,
    StdinEof,
    Stdout,
    Window,
)
from shoal.protocol.messages.core import (
    AGENT_FEATURES,
    PROTOCOL_VERSION,
    Auth,
    Error,
    Goodbye,
    Hello,
    Message,
    MessageType,
    Ping,
    Pong,
    check_finite,
)
from shoal.protocol.messages.files import (
    BatchDone,
    FileData,
    FileDone,
    FileEnd,
    FileInfo,
    GetFile,
    ListTree,
    PutBatch,
    PutFile,
    Removed,
    RemovePaths,
    TreeEntries,
)
from shoal.protocol.messages.hub import (HUB_TYPES, MAX_PING_LINKS, HostsList, HostsReply, LinkClose, Linked,
                                        LinkOpen, LinkOpened, LinkPongs, PingLinks)
from shoal.protocol.messages.jobs import JobAttach, JobKill, JobKilled, JobsList, JobsReply, JobStarted
from shoal.protocol.messages.metrics import MetricsReply, MetricsRequest
from shoal.protocol.messages.relay import RelayClose, RelayData, RelayOpen, RelayOpened

__all__ = [
    "PROTOCOL_VERSION",
    "AGENT_FEATURES",
    "NODE_ENV",
    "MessageType",
    "Message",
    "Hello",
    "Auth",
    "Error",
    "Ping",
    "check_finite",
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
    "PingLinks",
    "LinkPongs",
    "HUB_TYPES",
    "MAX_PING_LINKS",
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


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Auth, Error, Ping, Pong, Goodbye, Exec, Stdin, StdinEof, Signal, Cancel,
        Window, Resize, Started, Stdout, Stderr, Exit, MetricsRequest, MetricsReply, PutFile,
        GetFile, FileInfo, FileData, FileEnd, FileDone, ListTree, TreeEntries, RemovePaths, Removed,
        PutBatch, BatchDone, JobStarted, JobsList, JobsReply, JobAttach, JobKill, JobKilled,
        RelayOpen, RelayOpened, RelayData, RelayClose,
        LinkOpen, LinkOpened, Linked, LinkClose, HostsList, HostsReply, PingLinks, LinkPongs,
    )
}

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
    MessageType.LINK_OPEN, MessageType.HOSTS_LIST, MessageType.PING_LINKS,
    MessageType.RELAY_OPEN,
})
AGENT_ONLY = frozenset({
    MessageType.STARTED, MessageType.STDOUT, MessageType.STDERR, MessageType.EXIT,
    MessageType.METRICS_REPLY, MessageType.FILE_INFO, MessageType.FILE_DONE,
    MessageType.TREE_ENTRIES, MessageType.REMOVED, MessageType.BATCH_DONE,
    MessageType.JOB_STARTED, MessageType.JOBS_REPLY, MessageType.JOB_KILLED,
    MessageType.LINK_OPENED, MessageType.HOSTS_REPLY, MessageType.LINK_PONGS,
    MessageType.RELAY_OPENED,
})
