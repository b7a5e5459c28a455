"""Small files of a recursive put, many to a request (PUT_BATCH; PROTOCOL.md, "Batches").

Sent one by one, each small file costs two round trips and an fsync on its own;
batched, a few hundred share one request and one journal commit. `Batcher`
gathers the directories and small files of a tree in plan order into chunks of
at most `BATCH_FILES` entries and `BATCH_BYTES` bytes, reads each chunk's files
once (a thread, hashing as it reads), and sends every host the part of the chunk
it lacks as one PUT_BATCH, with up to `IN_FLIGHT` batches outstanding per host.
The agent applies a connection's batches in order, so a batch may fill the
directories the one before it creates; before anything is sent another way
(a large file, a top-level directory) `drain` waits for every batch to finish.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import TYPE_CHECKING, Any

from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.protocol.errors import ErrorCode, RemoteCommandError
from shoal.protocol.messages import BatchDone, FileData, Message, PutBatch
from shoal.protocol.request import RequestKind

from shoal.controller.client import AgentClient
from shoal.controller.transfer import TRANSFER_FAILED, TransferRequest, in_thread
from shoal.controller.transferplan import PlanItem

if TYPE_CHECKING:
    from shoal.controller.treesync import HostSync

__all__ = ["BatchRequest", "Batcher", "batchable", "SMALL_FILE", "BATCH_FILES", "BATCH_BYTES", "IN_FLIGHT"]

# Files up to this size go in batches; larger ones are streamed alone, where a
# round trip is small beside the data.
SMALL_FILE = 64 * 1024
# A batch's size: a few hundred files already make the per-request cost vanish,
# and well under the agent's limits (shoal.protocol.defaults.MAX_BATCH_*).
BATCH_FILES = 256
BATCH_BYTES = 1024 * 1024
# Batches sent to one host before waiting for the first to be done: enough to
# keep the agent busy while the next one travels.
IN_FLIGHT = 4


def batchable(item: PlanItem) -> bool:
    """Whether a plan item may go in a batch: below a tree's root, a directory or a small file."""
    return bool(item.relative) and (item.is_dir or item.size <= SMALL_FILE)


class BatchRequest(TransferRequest):
    """One PUT_BATCH with its data (within the batch's window, its size); `wait` returns the BATCH_DONE."""

    def __init__(self, client: AgentClient, tree: str, entries: list[dict[str, Any]], data: bytes,
                 user: str | None = None) -> None:
        super().__init__(client, RequestKind.BATCH)
        self.entries = entries
        self.done: BatchDone | None = None
        self._check_features(["put_batch"] + (["user"] if user is not None else []))
        if self.error is None:
            self._send(PutBatch(self.request_id, tree=tree, files=entries, user=user,
                                requires=["user"] if user is not None else []))
            step = client.max_chunk
            for offset in range(0, len(data), step):
                self._send(FileData(self.request_id, data[offset:offset + step]))

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, BatchDone):
            self.done = msg
            self._end()

    async def wait(self) -> BatchDone:
        await self._until(lambda: self.done is not None)
        assert self.done is not None
        return self.done


class Batcher:
    """Chunks of batchable plan items, each read once and sent to every host that lacks a part of it."""

    def __init__(self, plan_items: tuple[PlanItem, ...]) -> None:
        self.items = plan_items
        self._chunk: list[int] = []
        self._bytes = 0
        self._wanted: dict[HostSync, list[int]] = {}
        self._in_flight: dict[HostSync, deque[BatchRequest]] = {}

    async def add(self, index: int, hosts: list[HostSync]) -> None:
        """Put plan item `index` in the chunk for `hosts`; send the chunk once full."""
        self._chunk.append(index)
        self._bytes += self.items[index].size
        for host in hosts:
            self._wanted.setdefault(host, []).append(index)
        if len(self._chunk) >= BATCH_FILES or self._bytes >= BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Read the chunk's files and send each host its batch."""
        if not self._chunk:
            return
        files = [i for i in self._chunk if not self.items[i].is_dir]
        contents = dict(zip(files, await in_thread(_read_all, [self.items[i] for i in files])))
        joined: dict[tuple[int, ...], bytes] = {}
        for host, indices in self._wanted.items():
            if host.ok:
                key = tuple(i for i in indices if i in contents)
                if key not in joined:
                    joined[key] = b"".join(contents[i][0] for i in key)
                await self._send(host, indices, contents, joined[key])
        self._chunk, self._bytes, self._wanted = [], 0, {}

    async def drain(self) -> None:
        """Send what is gathered, then wait until every host has applied every batch."""
        await self.flush()
        for host, queue in self._in_flight.items():
            while queue:
                await self._finish(host, queue.popleft())

    async def _send(self, host: HostSync, indices: list[int], contents: dict[int, tuple[bytes, str]],
                    data: bytes) -> None:
        queue = self._in_flight.setdefault(host, deque())
        while len(queue) >= IN_FLIGHT:
            await self._finish(host, queue.popleft())
        if not host.ok:
            return
        entries = [host.batch_entry(self.items[i], contents[i][1] if i in contents else "") for i in indices]
        request = BatchRequest(host.client, host.root, entries, data, host.options.user)
        host.advance(len(data))
        queue.append(request)
        await host.client.drain()

    async def _finish(self, host: HostSync, request: BatchRequest) -> None:
        """Wait for one batch; its first failed entry (or the request's error) fails the host."""
        done = await host.attempt(request.wait)
        if done is None:
            return
        failed = {e.get("index") for e in done.errors}
        host.stats.sent += sum(1 for i, e in enumerate(request.entries) if not e.get("dir") and i not in failed)
        if done.errors:
            first = done.errors[0]
            more = f" (and {len(done.errors) - 1} more)" if len(done.errors) > 1 else ""
            host.fail(RemoteCommandError(f"{first.get('message', '')}{more}",
                                         code=str(first.get("code") or ErrorCode.IO_ERROR),
                                         host=host.host, request_id=request.request_id, status=TRANSFER_FAILED))


def _read_all(items: list[PlanItem]) -> list[tuple[bytes, str]]:
    """Each file's content and sha256; a file whose size changed since planning is an error."""
    out = []
    for item in items:
        try:
            with open(item.local, "rb") as f:
                data = f.read(item.size + 1)
        except OSError as err:
            raise map_os_error(err, item.local) from err
        if len(data) != item.size:
            raise FileTransferError(ErrorCode.IO_ERROR, item.local, "file changed size while it was being sent")
        out.append((data, hashlib.sha256(data).hexdigest()))
    return out
