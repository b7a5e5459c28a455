"""PUT_BATCH: many small files of a recursive put in one request (PROTOCOL.md, "Batches").

A file sent alone costs a round trip to open, one to commit, and an fsync of
its own; for a tree of small files that cost, not the bytes, is the copy. A
batch names up to `MAX_BATCH_FILES` entries (directories and files) and sends
their contents back to back. The agent keeps the whole batch in memory (at most
`MAX_BATCH_BYTES`), then creates the directories and writes each file to its own
temp file beside its destination; then starts every file's writeback, fsyncs
them several at once (concurrent fsyncs share journal commits and disk flushes),
renames them into place in order, and fsyncs each directory that gained a file
once. So each file is still atomic and checked by sha256, and on disk when
BATCH_DONE is sent, as with FILE_DONE.

A connection's batches make their directories and write their temp files one
after another, in the order their PUT_BATCH arrived, so a batch may fill a
directory an earlier batch creates; each then fsyncs and renames on its own
while the next one writes (two batches at most hold files open). One entry
failing does not stop the others; BATCH_DONE lists the failures.
"""

from __future__ import annotations

import asyncio
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.protocol.errors import ErrorCode
from shoal.protocol.messages import BatchDone, PutBatch
from shoal.protocol.request import RequestKind

from shoal.agent import runas
from shoal.agent.transferjob import Transfer, make_directory
from shoal.hostio.atomic import AtomicWriter, Journal, WriterState, fsync_directory, temp_path_for
from shoal.hostio.fileerrors import FileTransferError
from shoal.hostio.files import Files
from shoal.hostio.manifest import path_below

if TYPE_CHECKING:
    from shoal.agent.transfer import TransferService

__all__ = ["BatchJob", "BatchWrite", "BatchOutcome", "BATCH_THREADS"]

# Threads writing (and then fsyncing) one batch's files. Each fsync waits for a
# journal commit and a flush of the disk's cache; concurrent ones share them (ext4
# and XFS commit them together), so a batch costs a few flushes instead of one per
# file: on a loopback VM disk 2,000 files took 0.35-0.5 s this way against 0.6-1.9 s
# one after another. Creating files also waits on the disk at times.
BATCH_THREADS = 8


@dataclass(slots=True)
class BatchOutcome:
    """What applying a batch did: entries in place, content bytes, and each failure by index."""

    written: int = 0
    bytes: int = 0
    errors: list[tuple[int, FileTransferError]] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)  # directories made
    installed: list[Path] = field(default_factory=list)  # files renamed into place


class BatchJob(Transfer):
    """One PUT_BATCH: gather its data, write it once the batch before it has, finish, answer BATCH_DONE.

    Its channel's window is the batch's total size: the data is all in when it is used up.
    """

    KIND = RequestKind.BATCH

    def __init__(self, service: TransferService, msg: PutBatch, user: runas.RunAs | None) -> None:
        super().__init__(service, msg, user)
        self.msg = msg
        self.total = self.channel.stdin_credit
        self._data = bytearray()
        # This batch writes once the one before it on the connection has made its
        # directories and written its files, and the one before that is finished:
        # writing overlaps one batch's fsyncs, and at most two batches hold files open.
        loop = asyncio.get_running_loop()
        self.written: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()
        previous = service.last_batch
        self.before_finished: asyncio.Future[None] | None = previous.finished if previous else None
        self._before = [f for f in (previous.written, previous.before_finished) if f is not None] if previous else []
        service.last_batch = self

    def feed(self, data: bytes) -> None:
        """Take FILE_DATA the channel let in (within the batch's size)."""
        self._data += data
        if self.channel.stdin_credit == 0:
            self._wake.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._data = bytearray()  # the connection keeps its last batch (to order the next) but not its data
            for done in (self.written, self.finished):
                if not done.done():
                    done.set_result(None)

    async def _run(self) -> None:
        msg, rid = self.msg, self.request_id
        try:
            root = await self.service.authorize(msg.tree, "put", rid, self.files)
        except FileTransferError as err:
            return self.service.fail(rid, err)
        while self.channel.stdin_credit > 0 and not self.aborted:
            await self._sleep()
        for earlier in self._before:
            await asyncio.shield(earlier)
        if self.aborted:
            return self.service.done(rid)
        self.service.audit("put_batch", rid, path=str(root), files=len(msg.files), size=self.total,
                           **self.audit_user())
        batch = BatchWrite(root, msg.tree, msg.files, memoryview(self._data), self.files, self.service.journal,
                           self.owner_for(None))
        try:
            await self._io(batch.write)
            self.written.set_result(None)
            outcome: BatchOutcome = await self._io(batch.finish)
        except FileTransferError as err:
            return self.service.fail(rid, err)
        finally:
            await self._io(batch.close)
        self._audit(outcome)
        errors = [{"index": i, "code": err.code or ErrorCode.IO_ERROR, "message": str(err)}
                  for i, err in outcome.errors]
        self.service.end(rid, BatchDone(rid, written=outcome.written, bytes=outcome.bytes, errors=errors))

    def _audit(self, outcome: BatchOutcome) -> None:
        rid, user = self.request_id, self.audit_user()
        for path in outcome.created:
            self.service.audit("mkdir", rid, path=str(path), **user)
        for path in outcome.installed:
            self.service.audit("put_done", rid, path=str(path), **user)
        for index, err in outcome.errors:
            self.service.audit("put_failed", rid, path=self.msg.files[index].get("path"), error=err.code)


class BatchWrite:
    """One batch on disk, below `root`, with `files`' rights: `write`, then `finish`, then always `close`.

    Args:
        root: the tree's resolved and authorized root; `tree` is how the peer named it.
        entries: the PUT_BATCH `files` (already checked); `data` their contents back to back.
        journal: where the batch's temp files are noted, all in one entry.
        default_owner: what new files and directories belong to when an entry names
            no owner (the user's with `--user`), or None.
    """

    def __init__(self, root: Path, tree: str, entries: list[dict[str, Any]], data: memoryview, files: Files,
                 journal: Journal | None, default_owner: list[int] | None) -> None:
        self.root, self.tree, self.entries, self.data = root, tree, entries, data
        self.files, self.journal, self.default_owner = files, journal, default_owner
        self.out = BatchOutcome()
        self._pending: list[tuple[int, AtomicWriter, str]] = []
        self._temps: dict[int, Path] = {}

    def write(self) -> None:
        """Make the directories and write each file to its temp file, in order, starting its writeback.

        Raises:
            FileTransferError: the journal could not be written (nothing was).
        """
        dests: dict[int, Path] = {}
        checked: set[Path] = set()
        for index, entry in enumerate(self.entries):
            try:
                dests[index] = path_below(self.root, self.tree, entry["path"], files=self.files, checked=checked)
            except FileTransferError as err:
                self.out.errors.append((index, err))
        self._temps = {i: temp_path_for(dest) for i, dest in dests.items() if not self.entries[i].get("dir")}
        if self.journal is not None:
            self.journal.record_all(list(self._temps.values()))
        offset, files = 0, []
        for index, entry in enumerate(self.entries):  # directories first, in order: files may go in them
            size = int(entry.get("size", 0))
            content, offset = self.data[offset:offset + size], offset + size
            if index not in dests:
                continue
            if not entry.get("dir"):
                files.append((index, entry, dests[index], content))
                continue
            try:
                if make_directory(dests[index], entry.get("mode"), entry.get("owner") or self.default_owner,
                                  self.files):
                    self.out.created.append(dests[index])
                self.out.written += 1
            except FileTransferError as err:
                self.out.errors.append((index, err))
        with ThreadPoolExecutor(max_workers=_workers(len(files)), thread_name_prefix="shoal-batch") as pool:
            for index, result in pool.map(lambda item: (item[0], self._create(*item)), files):
                if isinstance(result, FileTransferError):
                    self.out.errors.append((index, result))
                else:
                    self._pending.append((index, result, self.entries[index]["sha256"]))

    def _create(self, index: int, entry: dict[str, Any], dest: Path,
                content: memoryview) -> AtomicWriter | FileTransferError:
        """One file's temp file, written; or why not."""
        owner = entry.get("owner") or self.default_owner
        mode = entry.get("mode")
        try:
            writer = AtomicWriter.open(dest, mode=stat.S_IMODE(mode) if mode is not None else None,
                                       mtime=entry.get("mtime"), owner=(owner[0], owner[1]) if owner else None,
                                       files=self.files, temp=self._temps[index])
        except FileTransferError as err:
            return err
        try:
            writer.write(content)
        except FileTransferError as err:
            return err  # the writer aborted itself
        return writer

    def finish(self) -> BatchOutcome:
        """Check and fsync every file, rename each into place in order, fsync each directory once.

        Raises:
            FileTransferError: a directory could not be fsynced after its renames (the
                files are in place, but the batch cannot promise they are on disk).
        """
        self._seal_all()
        directories: dict[Path, None] = {}
        for index, writer, _ in self._pending:
            if writer.state is not WriterState.OPEN:
                continue  # failed to write or seal
            try:
                writer.install()
            except FileTransferError as err:
                self.out.errors.append((index, err))
                continue
            self.out.written += 1
            self.out.bytes += writer.size
            self.out.installed.append(writer.dest)
            directories[writer.dest.parent] = None
        for directory in directories:
            fsync_directory(directory)
        self.out.errors.sort(key=lambda item: item[0])
        return self.out

    def _seal_all(self) -> None:
        """Start every file's writeback, then check and fsync them, several at once.

        The writebacks go first so the fsyncs find the data on its way; concurrent
        fsyncs then share the journal's commits and the disk's flushes.
        """
        for _, writer, _ in self._pending:
            if writer.state is WriterState.OPEN:
                writer.start_writeback()

        def seal(item: tuple[int, AtomicWriter, str]) -> tuple[int, FileTransferError] | None:
            index, writer, digest = item
            if writer.state is not WriterState.OPEN:
                return None
            try:
                writer.seal(digest)
            except FileTransferError as err:
                return index, err
            return None

        with ThreadPoolExecutor(max_workers=_workers(len(self._pending)), thread_name_prefix="shoal-fsync") as pool:
            self.out.errors.extend(failed for failed in pool.map(seal, self._pending) if failed is not None)

    def close(self) -> None:
        """Drop the temp files of whatever was not installed, and the journal entry."""
        for _, writer, _ in self._pending:
            writer.abort()
        if self.journal is not None and self._temps:
            self.journal.forget(next(iter(self._temps.values())))


def _workers(jobs: int) -> int:
    return min(BATCH_THREADS, max(1, jobs))
