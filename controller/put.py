"""Copying files to agents: one connection's requests, and fleet fan-out.

Layers, as for commands: `PutRequest` is one transfer on one `AgentClient`
(frames in, credit, completion); `put_file` copies over one connection;
`put_fleet` runs a whole CLI operation over many targets and turns every host's
outcome into its `Result`.

Fan-out reads each local chunk once: a thread reads (and hashes) a few chunks
ahead (`ReadAhead`) while each goes to every host in turn, each as far as its
window allows. The file therefore advances at the pace of the slowest host and
memory stays at a few chunks plus each host's socket buffer, whatever the file
size. A host that fails leaves the group; the others carry on.

Statuses: as every transfer's (`shoal.controller.transfer`).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from shoal.hostio.fileerrors import FileTransferError
from shoal.hostio.reader import FileReader
from shoal.hostio.readahead import ReadAhead
from shoal.protocol.errors import ErrorCode, ShoalError
from shoal.protocol.messages import FileData, FileDone, FileEnd, FileInfo, Message, PutFile
from shoal.protocol.request import RequestKind

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out
from shoal.controller.waves import RollingRun, WavePolicy, skipped_result
from shoal.controller.fleet import ConnectOptions, FleetResult
from shoal.controller.result import Result, failure_result
from shoal.controller.targets import Target
from shoal.controller.transfer import NoProgress, Progress, TransferRequest, connect_or_result, in_thread
from shoal.controller.transferplan import PlanItem, PutPlan

__all__ = ["PutOptions", "PutRequest", "HostPut", "FanoutPut", "put_file", "put_fleet"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PutOptions:
    """What a put keeps besides content and mode: `preserve` mtime, `owner` uid/gid."""

    preserve: bool = False
    owner: bool = False
    user: str | None = None  # create as this user, with its rights (the agent must allow it)


class PutRequest(TransferRequest):
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
        reader = await in_thread(FileReader.open, item.local)
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
    host = HostPut(client, remote_path, plan, options, progress or NoProgress())
    await FanoutPut([host], plan).run()
    return host.result()


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
    progress = progress or NoProgress()
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
    attempts = await fan_out(group, lambda t: connect_or_result(connect, t))
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
