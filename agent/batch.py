"""PUT_BATCH: many small files of a recursive put in one request (PROTOCOL.md, "Batches").

A file sent alone costs a round trip to open, one to commit, and an fsync of
its own; for a tree of small files that cost, not the bytes, is the copy. A
batch names up to `MAX_BATCH_FILES` entries (directories and files) and sends
their contents back to back. The agent keeps the whole batch in memory (at most
`MAX_BATCH_BYTES`), then in one executor job: creates the directories, writes
each file to its own temp file beside its destination and starts its writeback,
fsyncs them all (the writeback already under way, the fsyncs mostly share one
journal commit), renames them into place in order, and fsyncs each directory
that gained a file once. So each file is still atomic and checked by sha256,
and on disk when BATCH_DONE is sent, as with FILE_DONE.

A connection's batches are applied one after another in the order their
PUT_BATCH arrived, so a batch may fill a directory an earlier batch creates.
One entry failing does not stop the others; BATCH_DONE lists the failures.
"""

from __future__ import annotations

import asyncio
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.protocol.errors import ErrorCode
from shoal.protocol.messages import BatchDone, PutBatch

from shoal.agent import runas
from shoal.agent.transferjob import Transfer, make_directory
from shoal.hostio.atomic import AtomicWriter, Journal, WriterState, fsync_directory
from shoal.hostio.fileerrors import FileTransferError
from shoal.hostio.files import Files
from shoal.hostio.manifest import path_below

if TYPE_CHECKING:
    from shoal.agent.transfer import TransferService

__all__ = ["BatchJob", "apply_batch", "BatchOutcome"]


@dataclass(slots=True)
class BatchOutcome:
    """What applying a batch did: entries in place, content bytes, and each failure by index."""

    written: int = 0
    bytes: int = 0
    errors: list[tuple[int, FileTransferError]] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)  # directories made
    installed: list[Path] = field(default_factory=list)  # files renamed into place


class BatchJob(Transfer):
    """One PUT_BATCH: gather its data, wait for the batch before it, apply it, answer BATCH_DONE."""

    def __init__(self, service: TransferService, msg: PutBatch, user: runas.RunAs | None) -> None:
        super().__init__(service, msg.request_id, user)
        self.msg = msg
        self.total = sum(int(entry.get("size", 0)) for entry in msg.files)
        self._data = bytearray()
        # The batch before this one on the connection: applied first, so directories exist.
        self._previous = service.last_batch
        self._applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        service.last_batch = self._applied

    def feed(self, data: bytes) -> bool:
        """Take FILE_DATA; False when it goes past the batch's announced size."""
        if len(self._data) + len(data) > self.total:
            return False
        self._data += data
        if len(self._data) == self.total:
            self._wake.set()
        return True

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._applied.set_result(None)

    async def _run(self) -> None:
        msg, rid = self.msg, self.request_id
        try:
            root = await self.service.authorize(msg.tree, "put", rid, self.files)
        except FileTransferError as err:
            return self.service.fail(rid, err)
        while len(self._data) < self.total and not self.aborted:
            await self._sleep()
        if self._previous is not None:
            await asyncio.shield(self._previous)
        if self.aborted:
            return self.service.done(rid)
        self.service.audit("put_batch", rid, path=str(root), files=len(msg.files), size=self.total,
                           **self.audit_user())
        try:
            outcome: BatchOutcome = await self._io(self._apply, root)
        except FileTransferError as err:
            return self.service.fail(rid, err)
        self._audit(outcome)
        self.service.done(rid)
        errors = [{"index": i, "code": err.code or ErrorCode.IO_ERROR, "message": str(err)}
                  for i, err in outcome.errors]
        self.session.send(BatchDone(rid, written=outcome.written, bytes=outcome.bytes, errors=errors))

    def _apply(self, root: Path) -> BatchOutcome:
        default_owner = self.owner_for(None)
        return apply_batch(root, self.msg.tree, self.msg.files, memoryview(self._data), self.files,
                           self.service.journal, default_owner)

    def _audit(self, outcome: BatchOutcome) -> None:
        rid, user = self.request_id, self.audit_user()
        for path in outcome.created:
            self.service.audit("mkdir", rid, path=str(path), **user)
        for path in outcome.installed:
            self.service.audit("put_done", rid, path=str(path), **user)
        for index, err in outcome.errors:
            self.service.audit("put_failed", rid, path=self.msg.files[index].get("path"), error=err.code)


def apply_batch(root: Path, tree: str, entries: list[dict[str, Any]], data: memoryview, files: Files,
                journal: Journal | None, default_owner: list[int] | None) -> BatchOutcome:
    """Create, write, fsync and rename a batch's entries below `root`, with `files`' rights.

    Args:
        root: the tree's resolved and authorized root; `tree` is how the peer named it.
        entries: the PUT_BATCH `files` (already checked); `data` their contents back to back.
        default_owner: what new files and directories belong to when an entry names
            no owner (the user's with `--user`), or None.

    Raises:
        FileTransferError: a directory could not be fsynced after its renames (the
            files are in place, but the batch cannot promise they are on disk).
    """
    out = BatchOutcome()
    pending: list[tuple[int, AtomicWriter, str]] = []
    offset = 0
    for index, entry in enumerate(entries):
        size = int(entry.get("size", 0))
        content, offset = data[offset:offset + size], offset + size
        try:
            dest = path_below(root, tree, entry["path"], files=files)
            owner = entry.get("owner") or default_owner
            if entry.get("dir"):
                if make_directory(dest, entry.get("mode"), owner, files):
                    out.created.append(dest)
                out.written += 1
            else:
                pending.append((index, _write(dest, entry, content, owner, files, journal), entry["sha256"]))
        except FileTransferError as err:
            out.errors.append((index, err))
    try:
        _seal_all(pending, out)
        _install_all(pending, out)
    finally:
        for _, writer, _ in pending:
            writer.abort()  # what was neither installed nor failed (an exception above)
    out.errors.sort(key=lambda item: item[0])
    return out


def _write(dest: Path, entry: dict[str, Any], content: memoryview, owner: list[int] | None, files: Files,
           journal: Journal | None) -> AtomicWriter:
    """Open a temp file beside `dest`, write `content`, start its writeback."""
    mode = entry.get("mode")
    writer = AtomicWriter.open(dest, mode=stat.S_IMODE(mode) if mode is not None else None,
                               mtime=entry.get("mtime"), owner=(owner[0], owner[1]) if owner else None,
                               journal=journal, files=files)
    try:
        writer.write(content)
        writer.start_writeback()
    except BaseException:
        writer.abort()
        raise
    return writer


def _seal_all(pending: list[tuple[int, AtomicWriter, str]], out: BatchOutcome) -> None:
    """Check and fsync every temp file; the writebacks started as each was written."""
    for index, writer, digest in pending:
        try:
            writer.seal(digest)
        except FileTransferError as err:
            out.errors.append((index, err))


def _install_all(pending: list[tuple[int, AtomicWriter, str]], out: BatchOutcome) -> None:
    """Rename each sealed file into place in order, then fsync each directory that changed, once."""
    directories: dict[Path, None] = {}
    for index, writer, _ in pending:
        if writer.state is not WriterState.OPEN:
            continue  # failed its seal
        try:
            writer.install()
        except FileTransferError as err:
            out.errors.append((index, err))
            continue
        out.written += 1
        out.bytes += writer.size
        out.installed.append(writer.dest)
        directories[writer.dest.parent] = None
    for directory in directories:
        fsync_directory(directory)
