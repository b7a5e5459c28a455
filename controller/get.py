"""Copying files from agents: one connection's request, and fleet fan-out.

`GetRequest` is one GET_FILE on one `AgentClient` (frames in, our window granted
back as chunks land); `get_file` fetches into a local file, atomically and checked
by sha256; `get_fleet` fetches from many targets, each into its own directory
(`host_directory_name`). Statuses: as every transfer's (`shoal.controller.transfer`).
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable

from shoal.hostio.atomic import AtomicWriter
from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.sink import ChunkSink
from shoal.protocol.defaults import TRANSFER_WINDOW
from shoal.protocol.errors import ErrorCode, ShoalError
from shoal.protocol.messages import FileData, FileEnd, FileInfo, GetFile, Message, MessageType, Window
from shoal.protocol.request import RequestKind

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out, per_gateway
from shoal.controller.fleet import ConnectOptions, FleetResult
from shoal.controller.result import Result, failure_result
from shoal.controller.targets import Target
from shoal.controller.transfer import NoProgress, Progress, TransferRequest, connect_or_result, in_thread

__all__ = ["GetRequest", "get_file", "get_fleet", "host_directory_name"]


class GetRequest(TransferRequest):
    """One GET_FILE: FILE_INFO, FILE_DATA within our window, FILE_END with the digest."""

    def __init__(self, client: AgentClient, path: str, window: int = TRANSFER_WINDOW, tree: str = "",
                 user: str | None = None) -> None:
        super().__init__(client, RequestKind.GET)
        self.window = window
        self.info: FileInfo | None = None
        self.sha256: str | None = None
        self._chunks: deque[bytes] = deque()
        self._consumed = 0
        self._check_features(["user"] if user is not None else [])
        if self.error is None:
            self._send(GetFile(self.request_id, path=path, window=window, tree=tree, user=user,
                               requires=["user"] if user is not None else []))

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, FileInfo):
            self.info = msg
        elif isinstance(msg, FileData):  # within our window: the channel checked
            self._chunks.append(msg.data)
        elif isinstance(msg, FileEnd):
            self.sha256 = msg.sha256
            self._end()

    async def wait_info(self) -> FileInfo:
        await self._until(lambda: self.info is not None)
        assert self.info is not None
        return self.info

    async def next_chunks(self) -> list[bytes]:
        """The chunks received so far; [] once FILE_END came and all were taken."""
        await self._until(lambda: bool(self._chunks) or self.sha256 is not None)
        chunks = list(self._chunks)
        self._chunks.clear()
        return chunks

    def consumed(self, n: int) -> None:
        """`n` bytes are on disk: grant them back once a quarter window has gathered
        (while the get runs: its table has no WINDOW once FILE_END came)."""
        self._consumed += n
        if self._consumed >= self.window // 4 and self.error is None and self.channel.can_send(MessageType.WINDOW):
            self._send(Window(self.request_id, bytes=self._consumed))
            self._consumed = 0


async def get_file(client: AgentClient, remote_path: str, local_path: str, *, preserve: bool = False,
                   progress: Progress | None = None, tree: str = "", user: str | None = None) -> Result:
    """Fetch one remote file into `local_path`, atomically and checked by sha256.

    The local file is written beside `local_path` and renamed over it only when
    its sha256 matches the agent's; it gets the remote mode (and mtime with
    `preserve`). With `user`, the agent opens the file with that user's rights.
    Returns the host's Result; errors writing locally become that host's failure
    too, with the local path in the reason. `tree` (a get -r's remote root) makes
    the agent refuse a path crossing a link below it.
    """
    progress = progress or NoProgress()
    start = time.monotonic()
    request = GetRequest(client, remote_path, tree=tree, user=user)
    try:
        info = await request.wait_info()
        progress.expect(info.size)
        writer = await in_thread(_open_local, local_path, info, preserve)
        with writer:
            await _receive_into(request, writer, progress)
            assert request.sha256 is not None
            await in_thread(writer.commit, request.sha256)
    except ShoalError as exc:
        if request.error is None:
            request.lost("transfer abandoned")  # stop routing its frames to us
        return failure_result(client.name, exc)
    return Result(client.name, 0, duration=time.monotonic() - start)


def _open_local(local_path: str, info: FileInfo, preserve: bool) -> AtomicWriter:
    """Create the local file's directory if needed and start the atomic write."""
    parent = os.path.dirname(local_path) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise map_os_error(err, parent) from err
    return AtomicWriter.open(local_path, mode=info.mode, mtime=info.mtime if preserve else None)


async def _receive_into(request: GetRequest, writer: AtomicWriter, progress: Progress) -> None:
    """Write and hash chunks as they come, on the sink's threads, granting the window
    back as they land."""

    def landed(n: int) -> None:
        progress.advance(n)
        request.consumed(n)

    def failed() -> None:
        assert sink.error is not None
        request.give_up(sink.error)

    sink = ChunkSink(writer, landed, TRANSFER_WINDOW // 8, on_error=failed, name="get")
    try:
        while chunks := await request.next_chunks():
            for chunk in chunks:
                sink.push(chunk)
        await sink.finish()
    finally:
        await sink.cancel()


async def get_fleet(targets: list[Target], connect: ConnectOptions, remote_path: str, local_dir: str, *,
                    preserve: bool = False, fanout: int = 64, progress: Progress | None = None,
                    on_result: Callable[[Result], None] | None = None, user: str | None = None) -> FleetResult:
    """Fetch `remote_path` from every target into `local_dir/<host>/<basename>`.

    Host directories are created as needed; host names are escaped
    (`host_directory_name`) so no two hosts can share a directory.
    """
    name = os.path.basename(remote_path.rstrip("/"))
    if not name:
        raise FileTransferError(ErrorCode.BAD_PATH, remote_path, "remote path names no file")
    out = FleetResult()
    start = time.monotonic()

    def done(result: Result) -> None:
        out.results.append(result)
        if on_result is not None:
            on_result(result)

    await fan_out(targets, lambda t: _get_one(t, connect, remote_path, local_dir, name, preserve, progress, user),
                  limit=per_gateway(fanout, lambda t: t), on_done=done)
    out.elapsed = time.monotonic() - start
    return out


async def _get_one(target: Target, connect: ConnectOptions, remote_path: str, local_dir: str, name: str,
                   preserve: bool, progress: Progress | None, user: str | None = None) -> Result:
    directory = os.path.join(local_dir, host_directory_name(target.name))
    attempt = await connect_or_result(connect, target)
    if isinstance(attempt, Result):
        return attempt
    try:
        return await get_file(attempt, remote_path, os.path.join(directory, name),
                              preserve=preserve, progress=progress, user=user)
    finally:
        await attempt.close()


def host_directory_name(host: str) -> str:
    """A directory name for `host` that no other host name can map to.

    `%` and `/` are escaped as `%25` and `%2F` (so `unix:/run/a.sock` stays one
    component), and the names `.` and `..` are escaped whole.
    """
    escaped = host.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if escaped in (".", ".."):
        return escaped.replace(".", "%2E")
    return escaped or "%"
