"""What every file request on the agent shares: its task, whose rights it uses, making a directory.

A transfer (PUT_FILE, GET_FILE, PUT_BATCH) is one background task that owns its
file until it ends. A request naming `user` does all its file work through that
user's helper (`shoal.agent.asuser.UserFiles`), started for the request and
ended with it (`files_as`); tree requests use the same. Blocking file I/O runs
in the loop's executor (`in_thread`), so a slow disk stalls only its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from shoal.protocol.connection import Role
from shoal.protocol.errors import ErrorCode
from shoal.protocol.messages import GetFile, Message, MessageType, PutBatch, PutFile
from shoal.protocol.request import RequestChannel, RequestKind

from shoal.agent import runas
from shoal.agent.asuser import UserFiles
from shoal.hostio.atomic import process_umask
from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.files import LOCAL_FILES, Files

if TYPE_CHECKING:
    from shoal.agent.transfer import TransferService

__all__ = ["Transfer", "files_as", "in_thread", "make_directory"]


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking file I/O off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@contextlib.asynccontextmanager
async def files_as(user: runas.RunAs | None) -> AsyncIterator[Files]:
    """The agent's own file operations, or `user`'s (its helper ended on the way out)."""
    if user is None:
        yield LOCAL_FILES
        return
    files = UserFiles(user)
    try:
        yield files
    finally:
        # Off the loop (it reaps the helper), and to the end even if we are cancelled.
        await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, files.close))


class Transfer:
    """One transfer request: a task that owns its file (and its user's helper) until it ends.

    Every frame of the request, ours and the controller's, steps its `channel` (the
    table of its `KIND`, shoal.protocol.request), which also keeps its window.
    """

    KIND = RequestKind.PUT

    def __init__(self, service: TransferService, msg: PutFile | GetFile | PutBatch,
                 user: runas.RunAs | None) -> None:
        self.service = service
        self.session = service.session
        self.request_id = msg.request_id
        self.channel = RequestChannel(Role.AGENT, msg.request_id, self.KIND)
        self.channel.receive(msg)
        self.aborted = False
        self._wake = asyncio.Event()
        self.user = user  # act with this user's credentials (asuser.py)
        self.files: Files = LOCAL_FILES  # set to the user's when the task starts (TransferService)

    def owner_for(self, requested: list[int] | None) -> list[int] | None:
        """The owner to give what we create: as requested, else the user's (with --user)."""
        if requested is None and self.user is not None:
            return [self.user.uid, self.user.gid]
        return requested

    def audit_user(self) -> dict[str, str]:
        return {"user": self.user.name} if self.user is not None else {}

    async def run(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """The connection dropped: stop at the next step, keeping the old file."""
        self.aborted = True
        self._wake.set()

    def grant(self, increment: int) -> None:
        """A WINDOW from the controller, legal under a get only.

        Raises:
            RemoteProtocolError: `out_of_order` under a put or a batch.
        """
        self.channel.receive_data(MessageType.WINDOW, increment)
        self._wake.set()

    def reply(self, msg: Message) -> None:
        """Send a frame of ours for this request, stepped through its channel first."""
        self.session.reply(self.channel, msg)

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await in_thread(fn, *args)

    async def _sleep(self) -> None:
        self._wake.clear()
        await self._wake.wait()


def make_directory(target: Path, mode: int | None, owner: list[int] | None, files: Files,
                   parents: bool = False) -> bool:
    """Create the directory `target` with `files`' rights; False when it already was one.

    A new directory gets `mode` (default 0o777 less umask) and `owner` (root
    only); an existing one is kept as it is. With `parents`, missing parents
    are created first.

    Raises:
        FileTransferError: bad_path for a link where the directory would go,
            not_directory for anything else there, or the code of the failing call.
    """
    try:
        if parents:
            _make_parents(files, target.parent)
        files.mkdir(target, 0o700)
    except FileExistsError:
        try:
            st = files.stat(target, follow=False)
        except OSError as err:
            raise map_os_error(err, target) from err
        if stat.S_ISLNK(st.st_mode):
            raise FileTransferError(ErrorCode.BAD_PATH, target, "is a symbolic link; nothing is written "
                                    "through links") from None
        if not stat.S_ISDIR(st.st_mode):
            raise FileTransferError(ErrorCode.NOT_DIRECTORY, target, "exists and is not a directory") from None
        return False
    except OSError as err:
        raise map_os_error(err, target) from err
    _set_directory_attributes(target, mode, owner, files)
    return True


def _set_directory_attributes(path: Path, mode: int | None, owner: list[int] | None, files: Files) -> None:
    """Give a new directory its owner (root only) and mode, through a descriptor (no link followed)."""
    try:
        fd = files.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else 0o777 & ~process_umask())
        finally:
            os.close(fd)
    except OSError as err:
        raise map_os_error(err, path) from err


def _make_parents(files: Files, directory: Path) -> None:
    """os.makedirs(directory, exist_ok=True) with `files`' rights."""
    missing: list[Path] = []
    while directory != directory.parent:
        try:
            files.stat(directory)
            break
        except FileNotFoundError:
            missing.append(directory)
            directory = directory.parent
    for path in reversed(missing):
        try:
            files.mkdir(path)
        except FileExistsError:
            pass
