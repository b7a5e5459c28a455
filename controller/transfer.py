"""Copying files to and from agents: one connection's requests, and fleet fan-out.

Layers, as for commands: `PutRequest`/`GetRequest` are one transfer on one
`AgentClient` (frames in, credit, completion); `put_file`/`get_file` copy one file
over one connection; `put_fleet`/`get_fleet` run a whole CLI operation over many
targets and turn every host's outcome into its `Result`.

Fan-out reads each local chunk once: a thread reads (and hashes) a few chunks
ahead (`ReadAhead`) while each goes to every host in turn, each as far as its
window allows. The file therefore advances at the pace of the slowest host and
memory stays at a few chunks plus each host's socket buffer, whatever the file
size. A host that fails leaves the group; the others carry on.

Statuses: 0 copied, `TRANSFER_FAILED` (1) refused or failed on that host (no such
file, permission denied, disk full...), 255 unreachable or connection lost.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from shoal.hostio.atomic import AtomicWriter
from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.reader import FileReader
from shoal.hostio.readahead import ReadAhead
from shoal.hostio.sink import ChunkSink
from shoal.protocol.connection import Role
from shoal.protocol.defaults import TRANSFER_WINDOW
from shoal.protocol.errors import ErrorCode, RemoteCommandError, ShoalConnectionError, ShoalError
from shoal.protocol.messages import (
    Error,
    FileData,
    FileDone,
    FileEnd,
    FileInfo,
    GetFile,
    Message,
    MessageType,
    PutFile,
    Window,
)
from shoal.protocol.request import RequestChannel, RequestKind

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out, per_gateway
from shoal.controller.waves import RollingRun, WavePolicy, skipped_result
from shoal.controller.fleet import ConnectOptions, FleetResult
from shoal.controller.result import Result, failure_result
from shoal.controller.targets import Target
from shoal.controller.transferplan import PlanItem, PutPlan

__all__ = [
    "TRANSFER_FAILED",
    "PutOptions",
    "Progress",
    "PutRequest",
    "GetRequest",
    "put_file",
    "get_file",
    "put_fleet",
    "get_fleet",
    "host_directory_name",
]

# Exit status of a host whose transfer was refused or failed (not unreachable).
TRANSFER_FAILED = 1

T = TypeVar("T")


class Progress(Protocol):
    """Receives byte counts as a transfer goes (see TransferProgress)."""

    def expect(self, n: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def dropped(self, n: int) -> None: ...


class _NoProgress:
    def expect(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def dropped(self, n: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PutOptions:
    """What a put keeps besides content and mode: `preserve` mtime, `owner` uid/gid."""

    preserve: bool = False
    owner: bool = False
    user: str | None = None  # create as this user, with its rights (the agent must allow it)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking local file I/O off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# -- one request on one connection ---------------------------------------------


class _Request:
    """Routing and failure shared by both directions, and by batches and tree requests.

    `AgentClient` hands us this request's frames (`receive`) and tells us when the
    connection is gone (`lost`); a waiter sees either as an exception. A request of
    a `kind` steps its channel (shoal.protocol.request) with every frame, ours
    (`_send`) and the agent's, so the table the agent follows judges the agent
    too, and the channel keeps the windows.
    """

    def __init__(self, client: AgentClient, kind: RequestKind) -> None:
        self.client = client
        self.host = client.name
        self.request_id = client.new_request_id()
        self.error: ShoalError | None = None
        self.channel = RequestChannel(Role.CONTROLLER, self.request_id, kind)
        self._changed = asyncio.Event()
        if client.closed:
            self.error = ShoalConnectionError(self.host, client.close_reason or "connection closed")
        else:
            client.requests[self.request_id] = self

    def _send(self, msg: Message) -> None:
        self.channel.send(msg)
        self.client.send(msg)

    def receive(self, msg: Message) -> None:
        if not self.client.step(self.channel, msg):
            return
        if isinstance(msg, Error):
            status = msg.status if msg.status is not None else TRANSFER_FAILED
            self._fail(RemoteCommandError(msg.message, code=msg.code, host=self.host,
                                          request_id=self.request_id, status=status))
        else:
            self._on_message(msg)
        self._changed.set()

    def _on_message(self, msg: Message) -> None:
        raise NotImplementedError

    def _check_features(self, needed: list[str]) -> None:
        """Fail at once, sending nothing, when the agent would ignore a field it must honour."""
        if self.error is None:
            try:
                self.client.check_features(needed)
            except RemoteCommandError as exc:
                exc.status = TRANSFER_FAILED
                self._fail(exc)

    def lost(self, reason: str) -> None:
        self._fail(ShoalConnectionError(self.host, reason))
        self._changed.set()

    def give_up(self, exc: ShoalError) -> None:
        """A local failure ends this request: waiters see `exc`, frames stop coming to us."""
        self._fail(exc)
        self._changed.set()

    def _fail(self, exc: ShoalError) -> None:
        if self.error is None:
            self.error = exc
        self._end()

    def _end(self) -> None:
        if self.error is not None:
            self.channel.connection_lost()  # failed or abandoned: nothing more goes out under its id
        self.client.requests.pop(self.request_id, None)

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Wait for `ready()`; raise the request's error if it fails first (or failed)."""
        while self.error is None and not ready():
            self._changed.clear()
            await self._changed.wait()
        if self.error is not None:
            raise self.error


class PutRequest(_Request):
    """One PUT_FILE: wait for FILE_INFO, send within the credit (the channel's
    stdin credit: FILE_INFO's window and the agent's WINDOWs), end with FILE_END."""

    def __init__(self, client: AgentClient, msg_fields: dict[str, Any]) -> None:
        super().__init__(client, RequestKind.MKDIR if msg_fields.get("mkdir") else RequestKind.PUT)
        self.opened = False
        self.result: FileDone | None = None
        self._check_features(msg_fields.get("requires", []))
        if self.error is None:
            self._send(PutFile(self.request_id, **msg_fields))

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, FileInfo):
            self.opened = True
        elif isinstance(msg, FileDone):
            self.result = msg
            self._end()

    async def wait_open(self) -> None:
        """Until FILE_INFO (or, for a directory, FILE_DONE) arrives."""
        await self._until(lambda: self.opened or self.result is not None)

    async def send(self, data: bytes, on_sent: Callable[[int], None]) -> None:
        """Send `data` as FILE_DATA, split where the agent's credit runs out."""
        channel, offset = self.channel, 0
        while offset < len(data):
            await self._until(lambda: channel.stdin_credit > 0)
            n = min(len(data) - offset, channel.stdin_credit)
            self._send(FileData(self.request_id, data if n == len(data) else data[offset:offset + n]))
            offset += n
            on_sent(n)
            await self.client.drain()

    def end(self, sha256: str) -> None:
        if self.error is None:
            self._send(FileEnd(self.request_id, sha256=sha256))

    async def wait_done(self) -> FileDone:
        await self._until(lambda: self.result is not None)
        assert self.result is not None
        return self.result


class GetRequest(_Request):
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


# -- one host of a put ---------------------------------------------------------


class HostPut:
    """One host's part in a (fan-out) put: its connection, its bases, its outcome."""

    def __init__(self, client: AgentClient, remote_path: str, plan: PutPlan, options: PutOptions,
                 progress: Progress) -> None:
        self.client = client
        self.host = client.name
        self.remote_path = remote_path
        self.plan = plan
        self.options = options
        self.progress = progress
        self.error: ShoalError | None = None
        self.request: PutRequest | None = None
        self.moved = 0
        self.planned = plan.total_bytes  # content bytes this host is to receive
        self._bases: dict[int, str] = {}
        self._start = time.monotonic()

    @property
    def ok(self) -> bool:
        return self.error is None

    def begin(self, item: PlanItem) -> None:
        """Send this item's PUT_FILE (not waiting for the answer)."""
        self.request = PutRequest(self.client, self._fields(item))

    def _fields(self, item: PlanItem) -> dict[str, Any]:
        fields: dict[str, Any] = {"size": item.size, "mode": item.mode, "mkdir": item.is_dir}
        if item.relative:
            fields["path"] = f"{self._bases[item.source].rstrip('/')}/{item.relative}"
        else:
            name = os.path.basename(item.local.rstrip("/")) or item.local
            fields.update(path=self.remote_path, name=name, into_dir=self.plan.into_dir)
        if self.options.preserve and not item.is_dir:
            fields["mtime"] = item.mtime
        if self.options.owner:
            fields["owner"] = list(item.owner)
        return self.as_user(fields)

    def as_user(self, fields: dict[str, Any]) -> dict[str, Any]:
        """PUT_FILE fields, naming the user to act as (and requiring the agent to honour it)."""
        if self.options.user is not None:
            fields.update(user=self.options.user, requires=["user"])
        return fields

    def advance(self, n: int) -> None:
        self.moved += n
        self.progress.advance(n)

    def finished(self, item: PlanItem, done: FileDone) -> None:
        """Note where the agent put it: a top directory becomes the base of its tree."""
        if item.is_dir and not item.relative:
            self._bases[item.source] = done.path

    async def step(self, action: Callable[[PutRequest], Awaitable[T]]) -> T | None:
        """Run one action on the current request; a failure takes this host out."""
        request = self.request
        if request is None:
            return None
        return await self.attempt(lambda: action(request))

    async def attempt(self, action: Callable[[], Awaitable[T]]) -> T | None:
        """Run one action for this host unless it already failed; a failure takes it out."""
        if self.error is not None:
            return None
        try:
            return await action()
        except ShoalError as exc:
            self.fail(exc)
            return None

    def fail(self, exc: ShoalError) -> None:
        """This host is out: the first failure is its result; what it was still to get is dropped."""
        if self.error is None:
            self.error = exc
            self.progress.dropped(self.planned - self.moved)

    def result(self) -> Result:
        if self.error is not None:
            return failure_result(self.host, self.error)
        return Result(self.host, 0, duration=time.monotonic() - self._start)


class FanoutPut:
    """Send a plan to a group of hosts at once, reading every local chunk once."""

    def __init__(self, hosts: list[HostPut], plan: PutPlan) -> None:
        self.hosts = hosts
        self.plan = plan

    def live(self) -> list[HostPut]:
        return [h for h in self.hosts if h.ok]

    async def run(self) -> None:
        for item in self.plan.items:
            hosts = self.live()
            if not hosts:
                return
            for host in hosts:
                host.begin(item)
            if not item.is_dir:
                await self._copy(item, hosts)
            for host in hosts:
                done = await host.step(lambda r: r.wait_done())
                if done is not None:
                    host.finished(item, done)

    async def _copy(self, item: PlanItem, hosts: list[HostPut]) -> None:
        for host in hosts:
            await host.step(lambda r: r.wait_open())
        reader = await _in_thread(FileReader.open, item.local)
        try:
            sha256 = await self._stream(reader, item)
        finally:
            reader.close()
        for host in self.live():
            await host.step(lambda r: _end(r, sha256))

    async def _stream(self, reader: FileReader, item: PlanItem) -> str:
        """Send each chunk to every live host while a thread reads (and hashes) ahead."""
        size = min([h.client.max_chunk for h in self.hosts] + [1024 * 1024])
        chunks = ReadAhead(reader, size)
        try:
            while (data := await chunks.next()) and self.live():
                for host in self.live():
                    await host.step(lambda r: r.send(data, host.advance))
        finally:
            await chunks.close()
        if self.live() and reader.bytes_read != item.size:
            raise FileTransferError(ErrorCode.IO_ERROR, item.local, "file changed size while it was being sent")
        return reader.hexdigest()


async def _end(request: PutRequest, sha256: str) -> None:
    request.end(sha256)


# -- one connection ------------------------------------------------------------


async def put_file(client: AgentClient, plan: PutPlan, remote_path: str,
                   options: PutOptions = PutOptions(), progress: Progress | None = None) -> Result:
    """Copy what `plan` lists to `remote_path` over one connection.

    Returns the host's Result: status 0, TRANSFER_FAILED with the agent's reason
    (`error`, `error_code`), or 255 when the connection was lost.

    Raises:
        FileTransferError: a local file could not be read (affects every host).
    """
    host = HostPut(client, remote_path, plan, options, progress or _NoProgress())
    await FanoutPut([host], plan).run()
    return host.result()


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
    progress = progress or _NoProgress()
    start = time.monotonic()
    request = GetRequest(client, remote_path, tree=tree, user=user)
    try:
        info = await request.wait_info()
        progress.expect(info.size)
        writer = await _in_thread(_open_local, local_path, info, preserve)
        with writer:
            await _receive_into(request, writer, progress)
            assert request.sha256 is not None
            await _in_thread(writer.commit, request.sha256)
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


# -- fleets --------------------------------------------------------------------


async def put_fleet(targets: list[Target], connect: ConnectOptions, plan: PutPlan, remote_path: str, *,
                    options: PutOptions = PutOptions(), fanout: int = 64,
                    progress: Progress | None = None, policy: WavePolicy = WavePolicy(),
                    on_wave: Callable[[int, int, list[str]], None] | None = None) -> FleetResult:
    """Put `plan` on every target: groups of `fanout` hosts share each local read.

    Per-host failures become results and never stop the others. `policy` rolls the
    targets in waves with a failure budget (`shoal.controller.waves`); once it
    stops the run, no new group starts and the hosts not started are `skipped`.
    `on_wave(n, count, hosts)` is called as each wave starts. Raises
    FileTransferError when a local file fails to read mid-way (every host's
    connection is then aborted, so no host keeps a partial file).
    """
    progress = progress or _NoProgress()
    out = FleetResult()
    start = time.monotonic()
    state = RollingRun(policy, len(targets))
    waves = policy.waves(targets)
    for wave in waves:
        if not state.stopped:
            await state.next_wave()
            if on_wave is not None:
                on_wave(state.wave, len(waves), [t.name for t in wave])
        for first in range(0, len(wave), max(1, fanout)):
            group = wave[first:first + max(1, fanout)]
            if state.stopped:
                out.results.extend(skipped_result(t.name) for t in group)
                continue
            results = await _put_group(group, connect, plan, remote_path, options, progress)
            for result in results:
                state.record(result)
            out.results.extend(results)
    out.elapsed = time.monotonic() - start
    return out


async def _put_group(group: list[Target], connect: ConnectOptions, plan: PutPlan, remote_path: str,
                     options: PutOptions, progress: Progress) -> list[Result]:
    attempts = await fan_out(group, lambda t: _connect(connect, t))
    clients = [a for a in attempts if isinstance(a, AgentClient)]
    failed = [a for a in attempts if isinstance(a, Result)]
    progress.expect(plan.total_bytes * len(clients))
    hosts = [HostPut(c, remote_path, plan, options, progress) for c in clients]
    try:
        await FanoutPut(hosts, plan).run()
    except BaseException:
        for client in clients:
            client.abort()
        raise
    await asyncio.gather(*(c.close() for c in clients))
    return failed + [h.result() for h in hosts]


async def _connect(connect: ConnectOptions, target: Target) -> AgentClient | Result:
    try:
        return await connect.connect(target)
    except ShoalError as exc:
        return failure_result(target.name, exc)


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
    attempt = await _connect(connect, target)
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
