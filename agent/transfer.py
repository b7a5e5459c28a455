"""The agent's end of file transfer: PUT_FILE, GET_FILE and PUT_BATCH requests on one session.

The wire sequence is in PROTOCOL.md ("File transfer"). A put streams FILE_DATA into
an `AtomicWriter` under a window this side grants; a get streams a `FileReader` out
under the window the controller grants; a batch (`shoal.agent.batch`) writes many
small files at once. Each transfer is one background task that owns its file
(`shoal.agent.transferjob`): a put's chunks are written and hashed on the two
threads of its `ChunkSink`, a get's are read and hashed by its `ReadAhead` thread,
and every open, fsync and rename runs in the loop's default executor, so a slow
disk stalls only its own transfer, never the session's other requests. Every
frame of a transfer, ours and the controller's, steps its `RequestChannel`
(shoal.protocol.request), whose table and windows judge the controller's frames
as the controller's channel judges ours.

Authorization happens before any file is touched: the key's policy must allow
files, and `resolve_path` resolves `..` and symlinks (with the request's user's
rights when it names one) before comparing with the key's roots. Refusals are
audited. A connection lost mid-put aborts the writer (the old file stays); the
journal in the state directory lets `hold_journal` clean what a killed agent
could not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.protocol.defaults import DATA_CHUNK, TRANSFER_WINDOW
from shoal.protocol.errors import BadRequestError, ErrorCode
from shoal.protocol.fields import TransferRequest, check_request, unknown_requirements
from shoal.protocol.request import RequestKind
from shoal.protocol.messages import (
    Error,
    FileData,
    FileDone,
    FileEnd,
    FileInfo,
    GetFile,
    Message,
    MessageType,
    PutBatch,
    PutFile,
    Window,
)

from shoal.agent import runas
from shoal.agent.batch import BatchJob
from shoal.agent.handlers import HandlerTable
from shoal.agent.paths import resolve_path
from shoal.agent.transferjob import Transfer, files_as, in_thread, make_directory
from shoal.agent.treeops import TreeJob, tree_handlers
from shoal.hostio.atomic import AtomicWriter, Journal, JournalHold
from shoal.hostio.fileerrors import FileTransferError
from shoal.hostio.files import LOCAL_FILES, Files
from shoal.hostio.manifest import path_below
from shoal.hostio.reader import FileReader
from shoal.hostio.readahead import ReadAhead
from shoal.hostio.sink import ChunkSink

if TYPE_CHECKING:
    from shoal.agent.session import AgentSession

__all__ = ["transfer_handlers", "hold_journal", "MAX_TRANSFERS"]

log = logging.getLogger("shoal.agent")

# A put's window (TRANSFER_WINDOW, in shoal.protocol.defaults) is granted back once
# this much was written, so WINDOW frames stay rare. 16 puts stay under 128 MiB.
GRANT_STEP = TRANSFER_WINDOW // 4
# Concurrent transfers per connection; each may hold a window (a batch: its size) of memory.
MAX_TRANSFERS = 16
# Ended transfers whose late FILE_DATA/FILE_END frames are dropped silently: after
# an ERROR the controller may still have a window of data on the wire.
REMEMBERED_ENDS = 256


def transfer_handlers(session: AgentSession) -> HandlerTable:
    """The message handlers file transfer adds to a session (for `Agent.handlers`)."""
    service = TransferService(session)
    table = HandlerTable()
    table.add(PutFile, service.on_put)
    table.add(GetFile, service.on_get)
    table.add(PutBatch, service.on_batch)
    table.add(FileData, service.on_data)
    table.add(FileEnd, service.on_end)
    table.update(tree_handlers(service))
    return table


def hold_journal(state_dir: str) -> JournalHold:
    """Take this agent's share of the transfer journal, first removing the temp files
    of transfers a killed agent never finished when no other agent shares the directory."""
    hold = JournalHold(state_dir)
    try:
        removed = hold.acquire()
    except FileTransferError as err:
        log.warning("cannot clean unfinished transfers: %s", err)
        return hold
    if removed is None:
        log.debug("another agent uses state directory %s: unfinished transfers are left to the last one", state_dir)
    return hold


class TransferService:
    """Routes one session's transfer frames to the transfer they belong to."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session
        self.journal = Journal(session.agent.config.state_dir)
        self._ended: deque[int] = deque(maxlen=REMEMBERED_ENDS)
        self.last_batch: BatchJob | None = None  # batches write in the order they came

    # -- requests ------------------------------------------------------------

    def on_put(self, msg: PutFile) -> None:
        if self._admit(msg):
            allowed, user = self.user_for(msg, "put", msg.path)
            if allowed:
                self._start(MakeDirectory(self, msg, user) if msg.mkdir else PutTransfer(self, msg, user))

    def on_get(self, msg: GetFile) -> None:
        if self._admit(msg):
            allowed, user = self.user_for(msg, "get", msg.path)
            if allowed:
                self._start(GetTransfer(self, msg, user))

    def on_batch(self, msg: PutBatch) -> None:
        if self._admit(msg):
            allowed, user = self.user_for(msg, "put", msg.tree)
            if allowed:
                self._start(BatchJob(self, msg, user))

    def user_for(self, msg: TransferRequest, action: str, path: str) -> tuple[bool, runas.RunAs | None]:
        """Who the request acts as (None: the agent itself); False when refused and answered.

        The key's policy decides as for EXEC (PROTOCOL.md 5.7, Users); a refusal is
        audited and nothing on disk is touched.
        """
        rid, session = msg.request_id, self.session
        unknown = unknown_requirements(msg)
        if unknown:
            self.done(rid)
            session.request_error(rid, ErrorCode.UNSUPPORTED, f"this agent does not support {', '.join(unknown)}: "
                                  "nothing was done (upgrade the agent)", 1)
            return False, None
        if msg.user is None or msg.user == runas.agent_user():
            return True, None
        policy = session.policy
        why = runas.refusal(msg.user, policy.users if policy else None, policy is None or policy.allow_all)
        if why is not None:
            self._audit_denied(action, rid, path, why, user=msg.user)
            self.fail(rid, FileTransferError(ErrorCode.PERMISSION_DENIED, path,
                                             f"permission denied for key {session.key_id}: {why}"))
            return False, None
        try:
            return True, runas.lookup(msg.user)
        except runas.UnknownUser:
            self.fail(rid, FileTransferError(ErrorCode.PERMISSION_DENIED, path, f"no such user {msg.user!r}"))
            return False, None

    def _admit(self, msg: PutFile | GetFile | PutBatch) -> bool:
        """Refuse a reused request id, a field no file can be made of, or one transfer too many."""
        rid, session = msg.request_id, self.session
        if rid in session.requests:
            session.request_error(rid, ErrorCode.DUPLICATE_REQUEST, f"request id {rid} is already in use", 255)
            return False
        if sum(isinstance(r, Transfer) for r in session.requests.values()) >= MAX_TRANSFERS:
            self._ended.append(rid)  # a batch's data is already on its way: drop it
            session.request_error(rid, ErrorCode.LIMIT,
                                  f"too many transfers on this connection (limit {MAX_TRANSFERS})")
            return False
        try:
            check_request(msg)
        except BadRequestError as exc:
            self.done(rid)
            session.request_error(rid, exc.code, f"bad {msg.TYPE.name}: {exc}", 1)
            return False
        return True

    def _start(self, job: Transfer) -> None:
        self.session.requests[job.request_id] = job
        self.session.agent.tasks.spawn(self._guard(job), name=f"transfer-{job.request_id}")

    async def _guard(self, job: Transfer) -> None:
        """Run a transfer with its user's rights; a bug in it ends that request with a generic error, logged."""
        try:
            async with files_as(job.user) as files:
                job.files = files
                await job.run()
        except Exception:
            self.session.log.error("internal error in transfer", exc_info=True, req=job.request_id)
            if job.channel.done:  # it had answered: nothing more may go under its id
                return self.done(job.request_id)
            self.end(job.request_id, Error(job.request_id, code=ErrorCode.INTERNAL, message="internal error",
                                           status=1))

    async def authorize(self, path: str, action: str, rid: int, files: Files = LOCAL_FILES) -> Path:
        """Resolve `path` with `files`' rights and check it against the key's policy; refusals are audited."""
        policy = self.session.policy
        roots = None
        if policy is not None and not policy.allow_all:
            if not policy.files:
                self._audit_denied(action, rid, path, "files not allowed")
                raise FileTransferError(ErrorCode.PERMISSION_DENIED, path,
                                        f"permission denied for key {self.session.key_id}")
            roots = policy.file_roots
        try:
            resolved: Path = await in_thread(resolve_path, path, roots, files)
            allowed = policy is None or policy.allows_files(str(resolved))
        except FileTransferError as err:
            if err.code == ErrorCode.OUTSIDE_ROOT:
                self._audit_denied(action, rid, path, "outside file roots")
            raise
        except OSError as exc:  # a component vanished or changed kind while links were read
            missing = isinstance(exc, (FileNotFoundError, NotADirectoryError))
            code = ErrorCode.NOT_FOUND if missing else ErrorCode.IO_ERROR
            raise FileTransferError(code, path, exc.strerror or str(exc)) from None
        if not allowed:
            self._audit_denied(action, rid, path, "outside file roots")
            raise FileTransferError(ErrorCode.OUTSIDE_ROOT, path)
        return resolved

    async def authorize_in_tree(self, path: str, tree: str, action: str, rid: int,
                                files: Files = LOCAL_FILES) -> Path:
        """Authorize `path`, or with `tree` set authorize the tree and refuse links below it."""
        if not tree:
            return await self.authorize(path, action, rid, files)
        root = await self.authorize(tree, action, rid, files)
        below: Path = await in_thread(lambda: path_below(root, tree, path, files=files))
        return below

    def _audit_denied(self, action: str, rid: int, path: str, reason: str, **extra: Any) -> None:
        self.session.agent.audit.record("denied", peer=self.session.peer, key_id=self.session.key_id,
                                        request=rid, action=action, path=path, reason=reason, **extra)

    # -- data frames ---------------------------------------------------------

    def on_data(self, msg: FileData) -> None:
        job = self._receiver_for(msg)
        if job is not None:
            job.feed(msg.data)

    def on_end(self, msg: FileEnd) -> None:
        job = self._receiver_for(msg)
        if isinstance(job, PutTransfer):
            job.finish(msg.sha256)

    def _receiver_for(self, msg: FileData | FileEnd) -> PutTransfer | BatchJob | None:
        """The put or batch this frame belongs to, its channel stepped with it.

        None when the request ended (dropped), is unknown (answered
        `unknown_request`), or its table refuses the frame (the connection
        fails); also for the empty FILE_DATA a `mkdir` put's zero window lets by.
        """
        rid = msg.request_id
        req = self.session.requests.get(rid)
        if req is None:
            if rid not in self._ended:
                self.session.request_error(rid, ErrorCode.UNKNOWN_REQUEST, f"no put in progress as request {rid}")
            return None
        if not self.session.step(req.channel, msg):
            return None
        return req if isinstance(req, (PutTransfer, BatchJob)) else None

    # -- endings -------------------------------------------------------------

    def done(self, rid: int) -> None:
        """Forget a finished transfer; remember its id so late frames are dropped."""
        self.session.requests.pop(rid, None)
        self._ended.append(rid)

    def fail(self, rid: int, err: FileTransferError) -> None:
        """End a request with an ERROR carrying the file error's code and message."""
        self.session.log.info("transfer failed: %s", err, req=rid)
        self.end(rid, Error(rid, code=err.code or ErrorCode.IO_ERROR, message=str(err), status=1))

    def end(self, rid: int, msg: Message) -> None:
        """Send a request's last frame (its answer or an ERROR) and forget it; the
        request's channel steps with it."""
        job = self.session.requests.get(rid)
        self.done(rid)
        if isinstance(job, (Transfer, TreeJob)):
            self.session.reply(job.channel, msg)
        else:
            self.session.send(msg)  # refused before it opened: no channel yet

    def audit(self, event: str, rid: int, **fields: Any) -> None:
        self.session.agent.audit.record(event, peer=self.session.peer, key_id=self.session.key_id,
                                        request=rid, **fields)


class MakeDirectory(Transfer):
    """PUT_FILE with `mkdir`: create one directory of a recursive put."""

    KIND = RequestKind.MKDIR

    def __init__(self, service: TransferService, msg: PutFile, user: runas.RunAs | None) -> None:
        super().__init__(service, msg, user)
        self.msg = msg

    async def run(self) -> None:
        msg, rid = self.msg, self.request_id
        try:
            dest = await self.service.authorize_in_tree(msg.path, msg.tree, "put", rid, self.files)
            made = await self._io(self._make, dest)
            made = await self.service.authorize(str(made), "put", rid, self.files)
        except FileTransferError as err:
            return self.service.fail(rid, err)
        self.service.audit("mkdir", rid, path=str(made), **self.audit_user())
        self.service.end(rid, FileDone(rid, path=str(made)))

    def _make(self, dest: Path) -> Path:
        """Create the directory (cp -r rules for `name`); an existing one is kept as is."""
        msg = self.msg
        target = dest
        if _is_dir(dest, self.files) and msg.name:
            target = dest / _plain_name(msg.name)
        elif msg.into_dir:
            raise FileTransferError(ErrorCode.NOT_FOUND, dest)
        make_directory(target, msg.mode, self.owner_for(msg.owner), self.files, parents=msg.parents)
        return target


def _is_dir(path: Path, files: Files) -> bool:
    try:
        return stat.S_ISDIR(files.stat(path).st_mode)
    except OSError:
        return False


def _plain_name(name: str) -> str:
    if name in (".", "..") or "/" in name or "\0" in name:
        raise FileTransferError(ErrorCode.BAD_PATH, name, "file name must be a single path component")
    return name


class PutTransfer(Transfer):
    """PUT_FILE: open the writer, grant a window, write chunks, verify and commit."""

    def __init__(self, service: TransferService, msg: PutFile, user: runas.RunAs | None) -> None:
        super().__init__(service, msg, user)
        self.msg = msg
        self._sink: ChunkSink | None = None
        self._expected_sha256: str | None = None

    # -- from the session, once the channel took the frame (its window, its order) --

    def feed(self, data: bytes) -> None:
        """Queue a chunk (an empty one may come before FILE_INFO: the window lets it by)."""
        if self._sink is not None and data:
            self._sink.push(data)

    def finish(self, sha256: str) -> None:
        """FILE_END arrived."""
        self._expected_sha256 = sha256
        self._wake.set()

    # -- the task ------------------------------------------------------------

    async def run(self) -> None:
        msg = self.msg
        try:
            dest = await self.service.authorize_in_tree(msg.path, msg.tree, "put", self.request_id, self.files)
            writer: AtomicWriter = await self._io(self._open, dest)
        except FileTransferError as err:
            return self.service.fail(self.request_id, err)
        try:
            await self._receive(writer)
        except FileTransferError as err:
            await self._abandon(writer)
            self.service.audit("put_failed", self.request_id, path=str(writer.dest), error=err.code)
            self.service.fail(self.request_id, err)
        except BaseException:
            await asyncio.shield(self._abandon(writer))
            raise

    async def _abandon(self, writer: AtomicWriter) -> None:
        """Stop the sink's threads, then drop the temp file (the old file stays)."""
        if self._sink is not None:
            await self._sink.cancel()
        await self._io(writer.abort)

    def _open(self, dest: Path) -> AtomicWriter:
        msg = self.msg
        wanted = self.owner_for(msg.owner)
        owner = (wanted[0], wanted[1]) if wanted is not None and len(wanted) == 2 else None
        writer = AtomicWriter.open(dest, name=msg.name or None, into_dir=msg.into_dir,
                                   mode=stat.S_IMODE(msg.mode) if msg.mode is not None else None,
                                   mtime=msg.mtime, owner=owner, journal=self.service.journal, files=self.files)
        try:
            _check_free_space(writer.temp.parent, msg.size)
        except FileTransferError:
            writer.abort()
            raise
        return writer

    async def _receive(self, writer: AtomicWriter) -> None:
        """Grant the window, let the sink write and hash what arrives, commit on FILE_END."""
        self.service.audit("put", self.request_id, path=str(writer.dest), size=self.msg.size, **self.audit_user())
        self._sink = ChunkSink(writer, self._grant_back, GRANT_STEP, on_error=self._wake.set,
                               name=f"put{self.request_id}")
        self.reply(FileInfo(self.request_id, size=self.msg.size, window=TRANSFER_WINDOW))
        while not self.aborted and self._expected_sha256 is None and self._sink.error is None:
            await self._sleep()
        if self.aborted:
            await self._abandon(writer)
            return self.service.done(self.request_id)
        await self._sink.finish()
        await self._commit(writer)

    def _grant_back(self, n: int) -> None:
        """`n` more bytes are on disk and hashed: the controller may send as many again
        (until its FILE_END: then no more is coming)."""
        if not self.aborted and self._expected_sha256 is None:
            self.reply(Window(self.request_id, bytes=n))

    async def _commit(self, writer: AtomicWriter) -> None:
        if writer.size != self.msg.size:
            raise FileTransferError(ErrorCode.IO_ERROR, writer.dest,
                                    f"received {writer.size} bytes but PUT_FILE announced {self.msg.size}")
        assert self._expected_sha256 is not None
        await self._io(writer.commit, self._expected_sha256)
        self.service.audit("put_done", self.request_id, path=str(writer.dest), bytes=writer.size)
        self.service.end(self.request_id, FileDone(self.request_id, sha256=writer.hexdigest(), bytes=writer.size,
                                                   path=str(writer.dest)))


def _check_free_space(directory: Path, size: int) -> None:
    """Refuse at once a put that cannot fit, instead of failing after gigabytes."""
    if size <= 0:
        return
    try:
        fs = os.statvfs(directory)
    except OSError:
        return  # no answer is no reason to refuse; the writes will tell
    blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
    free = blocks * fs.f_frsize
    if size > free:
        raise FileTransferError(ErrorCode.NO_SPACE, directory,
                                f"no space left on device ({size} bytes needed, {free} free)")


class GetTransfer(Transfer):
    """GET_FILE: open the reader, describe the file, stream it under the window
    (the channel's output credit: GET_FILE's `window`, topped up by WINDOW)."""

    KIND = RequestKind.GET

    def __init__(self, service: TransferService, msg: GetFile, user: runas.RunAs | None) -> None:
        super().__init__(service, msg, user)
        self.msg = msg
        self.path = Path(msg.path)

    async def run(self) -> None:
        msg = self.msg
        try:
            self.path = await self.service.authorize_in_tree(msg.path, msg.tree, "get", self.request_id, self.files)
            reader: FileReader = await self._io(FileReader.open, self.path, self.files)
        except FileTransferError as err:
            return self.service.fail(self.request_id, err)
        try:
            await self._send(reader)
        except FileTransferError as err:
            self.service.fail(self.request_id, err)
        finally:
            reader.close()

    async def _send(self, reader: FileReader) -> None:
        """Send while a thread reads (and hashes) ahead, never beyond the credit."""
        self.service.audit("get", self.request_id, path=str(self.path), size=reader.size, **self.audit_user())
        self.reply(FileInfo(self.request_id, size=reader.size, mode=reader.mode, mtime=reader.mtime))
        chunks = ReadAhead(reader, min(DATA_CHUNK, self.session.conn.peer_max_frame))
        try:
            while (data := await chunks.next()) and not self.aborted:
                await self._send_chunk(data)
        finally:
            await chunks.close()
        if self.aborted:
            return self.service.done(self.request_id)
        self.service.audit("get_done", self.request_id, path=str(self.path), bytes=reader.bytes_read)
        self.service.end(self.request_id, FileEnd(self.request_id, sha256=reader.hexdigest()))

    async def _send_chunk(self, data: bytes) -> None:
        """Send `data`, split where the credit runs out, waiting for WINDOW frames."""
        offset = 0
        while offset < len(data) and not self.aborted:
            if self.channel.output_credit <= 0:
                await self._sleep()
                continue
            n = min(len(data) - offset, self.channel.output_credit)
            self.channel.send_data(MessageType.FILE_DATA, n)
            piece = data if n == len(data) else data[offset:offset + n]
            self.session.send_data(MessageType.FILE_DATA, self.request_id, piece)
            offset += n
