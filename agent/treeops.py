"""The agent's end of tree sync: LIST_TREE and REMOVE_PATHS (PROTOCOL.md, "Tree sync").

A recursive put first asks what the destination holds (LIST_TREE) so unchanged
files are not sent, and with `--delete` asks the agent to remove what the source
lacks (REMOVE_PATHS). Both are authorized like a transfer (the key may move
files, the root lies inside its file roots) and run their file I/O in the loop's
executor, as the request's user when it names one (listed, hashed and removed
with that user's rights: an unprivileged user lists only what it could list
itself). Removal names paths relative to a tree root and never crosses a link
below it (`shoal.hostio.manifest`), so nothing outside the tree can go, and stops
when the connection is gone. Every frame of a tree request, ours and the
controller's, steps its `RequestChannel` (tables `list` and `remove`), so a
controller's WINDOW or data under one fails the connection as under any request.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from shoal.protocol.connection import Role
from shoal.protocol.errors import BadRequestError, ErrorCode
from shoal.protocol.fields import check_request
from shoal.protocol.messages import Error, ListTree, MessageType, RemovePaths, Removed, TreeEntries
from shoal.protocol.request import RequestChannel, RequestKind

from shoal.hostio.fileerrors import FileTransferError
from shoal.hostio.files import Files
from shoal.hostio.manifest import list_tree, remove_below

from shoal.agent import runas
from shoal.agent.handlers import HandlerTable
from shoal.agent.transferjob import files_as, in_thread

if TYPE_CHECKING:
    from shoal.agent.transfer import TransferService

__all__ = ["tree_handlers", "ENTRIES_BYTES", "MAX_TREE_REQUESTS"]

# Largest TREE_ENTRIES body the agent builds (before the peer's own frame limit,
# which may be lower): big enough that a tree of 10 000 files takes a few frames.
ENTRIES_BYTES = 256 * 1024
# Tree requests running at once per connection: each may hold a whole listing in
# memory, so a controller cannot start more than a few.
MAX_TREE_REQUESTS = 4


def tree_handlers(service: TransferService) -> HandlerTable:
    """The handlers tree sync adds to a session, sharing the transfer service's checks."""
    ops = TreeOps(service)
    table = HandlerTable()
    table.add(ListTree, ops.on_list)
    table.add(RemovePaths, ops.on_remove)
    return table


class TreeJob:
    """A LIST_TREE or REMOVE_PATHS in progress: held in the session's requests so its id
    is taken, its channel stepped with every frame under it."""

    def __init__(self, msg: ListTree | RemovePaths, user: runas.RunAs | None) -> None:
        self.request_id = msg.request_id
        self.user = user
        self.aborted = False
        self.channel = RequestChannel(Role.AGENT, msg.request_id,
                                      RequestKind.LIST if isinstance(msg, ListTree) else RequestKind.REMOVE)
        self.channel.receive(msg)

    def abort(self) -> None:
        self.aborted = True

    def grant(self, increment: int) -> None:
        """A WINDOW from the controller: tree requests have none.

        Raises:
            RemoteProtocolError: `out_of_order`, always.
        """
        self.channel.receive_data(MessageType.WINDOW, increment)


class TreeOps:
    """Runs one session's tree requests."""

    def __init__(self, service: TransferService) -> None:
        self.service = service
        self.session = service.session

    def on_list(self, msg: ListTree) -> None:
        if self._admit(msg):
            allowed, user = self.service.user_for(msg, "list", msg.path)
            if allowed:
                self._spawn(TreeJob(msg, user), functools.partial(self._list, msg))

    def on_remove(self, msg: RemovePaths) -> None:
        if self._admit(msg):
            allowed, user = self.service.user_for(msg, "delete", msg.tree)
            if allowed:
                self._spawn(TreeJob(msg, user), functools.partial(self._remove, msg))

    def _admit(self, msg: ListTree | RemovePaths) -> bool:
        rid = msg.request_id
        if rid in self.session.requests:
            self.session.request_error(rid, ErrorCode.DUPLICATE_REQUEST, f"request id {rid} is already in use", 255)
            return False
        if sum(isinstance(r, TreeJob) for r in self.session.requests.values()) >= MAX_TREE_REQUESTS:
            self.session.request_error(rid, ErrorCode.LIMIT, f"too many tree requests on this connection "
                                                     f"(limit {MAX_TREE_REQUESTS})")
            return False
        try:
            check_request(msg)
        except BadRequestError as exc:
            self.session.request_error(rid, exc.code, f"bad {msg.TYPE.name}: {exc}", 1)
            return False
        return True

    def _spawn(self, job: TreeJob, work: Callable[[TreeJob, Files], Awaitable[None]]) -> None:
        self.session.requests[job.request_id] = job
        self.session.agent.tasks.spawn(self._guard(job, work), name=f"tree-{job.request_id}")

    async def _guard(self, job: TreeJob, work: Callable[[TreeJob, Files], Awaitable[None]]) -> None:
        """A file error ends the request with its code; a bug ends it with a generic error, logged."""
        try:
            async with files_as(job.user) as files:
                await work(job, files)
        except FileTransferError as err:
            self.service.fail(job.request_id, err)
        except Exception:
            self.session.log.error("internal error in tree request", exc_info=True, req=job.request_id)
            if job.channel.done:  # it had answered: nothing more may go under its id
                return self.service.done(job.request_id)
            self.service.end(job.request_id, Error(job.request_id, code=ErrorCode.INTERNAL,
                                                   message="internal error", status=1))

    async def _list(self, msg: ListTree, job: TreeJob, files: Files) -> None:
        root = await self.service.authorize(msg.path, "list", msg.request_id, files)
        entries = await in_thread(list_tree, root, msg.sha256, files)
        self.service.audit("list", msg.request_id, path=str(root), entries=len(entries), **_user(job))
        limit = min(ENTRIES_BYTES, self.session.conn.peer_max_frame // 2)
        for part in _parts(entries, limit):
            if job.aborted:
                return
            self.session.reply(job.channel, TreeEntries(msg.request_id, entries=part))
        self.service.end(msg.request_id, TreeEntries(msg.request_id, done=True))

    async def _remove(self, msg: RemovePaths, job: TreeJob, files: Files) -> None:
        root = await self.service.authorize(msg.tree, "delete", msg.request_id, files)
        count = 0
        for path in msg.paths:
            if job.aborted:
                return  # the controller is gone: it would never learn what was removed
            full = f"{msg.tree.rstrip('/')}/{path}"
            if await in_thread(remove_below, root, msg.tree, full, files):
                count += 1
                self.service.audit("delete", msg.request_id, path=str(root / path), **_user(job))
        self.service.end(msg.request_id, Removed(msg.request_id, count=count))


def _parts(entries: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """Split entries into lists whose JSON stays under `limit` bytes."""
    parts: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        n = len(json.dumps(entry, separators=(",", ":"))) + 1
        if current and size + n > limit:
            parts.append(current)
            current, size = [], 0
        current.append(entry)
        size += n
    if current:
        parts.append(current)
    return parts


def _user(job: TreeJob) -> dict[str, str]:
    return {"user": job.user.name} if job.user is not None else {}

